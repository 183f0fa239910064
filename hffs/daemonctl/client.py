"""The CLI's client of the daemon's control API (blocking; wrap in a thread from async code).

Plain ``http.client`` over loopback: every ``hffs`` command that talks to a daemon starts
with this, and an HTTP library with its own connection pools, TLS and async stack cost
more to import than the whole request (bench/cli_start.py)."""

from __future__ import annotations

import http.client
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from hffs.config import home_dir
from hffs.errors import HffsError
from hffs.runfiles import TOKEN_HEADER, DaemonInfo, is_running, read_info

if TYPE_CHECKING:
    from hffs.jobs import JobListener, JobResult, JobSpec

RepoSpec = str | tuple[str, str, str]  # "type/org/name/revision" or (type, repo id, revision)


class DaemonNotRunning(HffsError):
    """No daemon answers for this home; the message says what to do."""


class DaemonError(HffsError):
    """The daemon refused a request or did not answer in time."""


def _repo_params(repo: RepoSpec) -> dict[str, str]:
    if isinstance(repo, str):
        repo_type, _, rest = repo.partition("/")
        repo_id, _, revision = rest.rpartition("/")
    else:
        repo_type, repo_id, revision = repo
    return {"repo_type": repo_type, "repo_id": repo_id, "revision": revision}


def _repo_body(repo: RepoSpec | Mapping[str, str]) -> dict[str, str]:
    if isinstance(repo, Mapping):
        return {k: repo[k] for k in ("repo_type", "repo_id", "commit")}
    p = _repo_params(repo)
    return {"repo_type": p["repo_type"], "repo_id": p["repo_id"], "commit": p["revision"]}


class DaemonClient:
    def __init__(self, info: DaemonInfo, timeout: float = 30.0) -> None:
        self.info = info
        self.timeout = timeout

    @classmethod
    def from_home(cls, home: Path | None = None, timeout: float = 30.0) -> DaemonClient:
        home = home or home_dir()
        info = read_info(home)
        if info is None or not is_running(home):
            raise DaemonNotRunning(
                "the hffs daemon is not running; start it with `hffs daemon start`"
            )
        return cls(info, timeout)

    def _not_answering(self) -> DaemonNotRunning:
        return DaemonNotRunning(
            f"the hffs daemon (pid {self.info.pid}) does not answer; "
            "restart it with `hffs daemon stop` and `hffs daemon start`"
        )

    def _connect(self, timeout: float, path: str) -> http.client.HTTPConnection:
        """A connection to the control API (refused: the daemon is gone)."""
        conn = http.client.HTTPConnection(
            self.info.control_host, self.info.control_port, timeout=timeout
        )
        try:
            conn.connect()
        except TimeoutError:
            conn.close()
            raise DaemonError(f"the daemon did not answer {path} in time") from None
        except OSError:
            conn.close()
            raise self._not_answering() from None
        return conn

    def _send(self, conn: http.client.HTTPConnection, method: str, path: str, body: Any) -> None:
        headers = {TOKEN_HEADER: self.info.token}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        timeout: float | None = None,
    ) -> Any:
        target = f"{path}?{urlencode(params)}" if params else path
        conn = self._connect(timeout or self.timeout, path)
        try:
            self._send(conn, method, target, body)
            r = conn.getresponse()
            raw = r.read()
        except TimeoutError:
            raise DaemonError(f"the daemon did not answer {path} in time") from None
        except (OSError, http.client.HTTPException) as exc:
            raise DaemonError(f"the daemon connection failed: {_why(exc)}") from None
        finally:
            conn.close()
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if r.status != 200:
            detail = data.get("error") if isinstance(data, dict) else _text(raw)
            raise DaemonError(f"the daemon refused {path}: {detail}")
        return data

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/v1/status")

    def find_providers(
        self, file_id: str | None = None, *, repo: RepoSpec | None = None
    ) -> list[tuple[str, int]]:
        """(host, port) of peers holding a file, or a repo revision (a commit), or any
        revision of a repo (a ref); from the DHT and the probed saved peers."""
        if (file_id is None) == (repo is None):
            raise ValueError("give exactly one of file_id and repo")
        params = {"file_id": file_id} if file_id is not None else _repo_params(repo)  # type: ignore[arg-type]
        found = self._call("GET", "/v1/providers", params=params)["providers"]
        return [(p["host"], p["port"]) for p in found]

    def search(self, repo_type: str, repo_id: str, revision: str) -> list[dict[str, Any]]:
        """Holders of a revision with what each holds:
        ``[{"host", "port", "commit", "fetched_at", "files": [{"path", "file_id", "size"}]}]``."""
        params = {"repo_type": repo_type, "repo_id": repo_id, "revision": revision}
        return self._call("GET", "/v1/search", params=params)["holders"]

    def announce(
        self,
        file_ids: Iterable[str] = (),
        repos: Iterable[RepoSpec | Mapping[str, str]] = (),
        *,
        wait: bool = False,
    ) -> dict[str, Any]:
        """Tell the swarm we hold these now (a file's first verified chunk, a finished
        file, a finished revision: commits only). Returns at once unless ``wait``."""
        body = {
            "file_ids": list(file_ids),
            "repos": [_repo_body(r) for r in repos],
            "wait": wait,
        }
        return self._call("POST", "/v1/announce", body=body)

    def rescan(self) -> dict[str, int]:
        return self._call("POST", "/v1/rescan")

    def report_transfer(self, from_peers: int = 0, from_upstream: int = 0) -> None:
        self._call(
            "POST", "/v1/transfer", body={"from_peers": from_peers, "from_upstream": from_upstream}
        )

    def refresh_peers(self) -> None:
        self._call("POST", "/v1/peers/refresh")

    def stop(self) -> None:
        self._call("POST", "/v1/stop")

    def run_job(self, spec: JobSpec, listener: JobListener) -> JobResult:
        """Have the daemon run a download job, hearing its progress as it goes.

        Leaving early (Ctrl-C) closes the stream: the daemon cancels the job, and
        stops each file's download unless another client still wants it."""
        from hffs.jobs import replay

        conn = self._connect(self.timeout, "/v1/jobs")
        try:
            try:
                self._send(conn, "POST", "/v1/jobs", spec.to_json())
                # No read timeout: a job may go quiet for long (a slow hub); a dead
                # daemon closes the connection, which ends the stream.
                if conn.sock is not None:
                    conn.sock.settimeout(None)
                r = conn.getresponse()
                if r.status != 200:
                    raw = r.read()
                    try:
                        detail = json.loads(raw).get("error")
                    except (ValueError, AttributeError):
                        detail = _text(raw)
                    raise DaemonError(f"the daemon refused the job: {detail}")
                for line in _lines(r):
                    if not line.strip():
                        continue
                    try:
                        event = json.loads(line)
                        result = replay(event, listener)
                    except ValueError as exc:
                        raise DaemonError(f"the daemon sent a bad progress line: {exc}") from None
                    if result is not None:
                        return result
            except (OSError, http.client.HTTPException) as exc:
                raise DaemonError(
                    f"the daemon stopped answering during the job ({_why(exc)})"
                ) from None
        finally:
            conn.close()
        raise DaemonError("the daemon ended the job without a result (did it stop?)")


def _why(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _text(raw: bytes) -> str:
    return raw.decode(errors="replace")[:200]


def _lines(r: io.BufferedIOBase, block: int = 1 << 16) -> Iterator[bytes]:
    """The lines of a streamed body as they arrive (chunked or not), without the ends.
    Linear in the body's size however long a line is (a plan of 100k files is one line)."""
    parts: list[bytes] = []
    while chunk := r.read1(block):
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            parts.append(chunk[start:end])
            yield b"".join(parts)
            parts.clear()
            start = end + 1
        if start < len(chunk):
            parts.append(chunk[start:])
    if parts:
        yield b"".join(parts)
