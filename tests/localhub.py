"""A local stand-in for the Hugging Face hub, for tests and benchmarks.

`LocalHub` is a real HTTP server (Starlette app on uvicorn, in a background thread, on loopback and
ephemeral ports) that answers the endpoints huggingface_hub uses, with the hub's JSON shapes,
headers and error codes, so that huggingface_hub's own `hf_hub_download`/`snapshot_download` work
against it unchanged (see tests/test_localhub.py). On top of that it can throttle its total
bandwidth, inject faults (dropped connections, 5xx, corrupted bytes) and records every request, so
tests can assert exactly what was transferred and which credentials were sent where.

    with LocalHub() as hub:
        sha = hub.add_repo("org/name", {"config.json": b"{}", "model.safetensors": path})
        hf_hub_download("org/name", "config.json", endpoint=hub.url, cache_dir=tmp_path)

Served endpoints (`{t}` is models|datasets|spaces, `{p}` is ""|datasets/|spaces/):
  GET  /api/{t}/{repo}[/revision/{rev}]       repo info (siblings; sizes/oids with ?blobs=true)
  GET  /api/{t}/{repo}/tree/{rev}[/{path}]     tree listing (?recursive, ?expand, paginated)
  POST /api/{t}/{repo}/paths-info/{rev}        paths info (form or JSON `paths`, `expand`)
  GET  /api/{t}/{repo}/refs                    branches and tags
  HEAD/GET /{p}{repo}/resolve/{rev}/{path}     file content, Range, hub headers
Content is never sent with X-Xet-* headers, so huggingface_hub uses plain HTTP. With
`lfs_redirect=True`, LFS files are answered with a 302 to a second port standing in for the CDN
(a different origin, so huggingface_hub drops the Authorization header there, as with the hub).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

__all__ = [
    "DEFAULT_LFS_THRESHOLD",
    "LFS_EXTENSIONS",
    "Commit",
    "Fault",
    "FaultMode",
    "FileSource",
    "HubFile",
    "LocalHub",
    "RequestRecord",
    "git_blob_sha1",
    "make_random_file",
    "patch_hf_endpoint",
]

DEFAULT_LFS_THRESHOLD = 64 * 1024
LFS_EXTENSIONS = frozenset({".safetensors", ".bin", ".gguf", ".pt", ".h5", ".onnx", ".msgpack"})
REPO_TYPES = ("model", "dataset", "space")
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_API_ACTIONS = frozenset({"revision", "tree", "paths-info", "refs"})

# Body pieces: small when throttled so the rate is smooth, larger otherwise for benchmark speed.
_PIECE_UNTHROTTLED = 1024 * 1024
_PIECE_MAX_THROTTLED = 64 * 1024
_PIECE_MIN_THROTTLED = 4 * 1024
_HASH_BLOCK = 1024 * 1024
_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0

FaultMode = Literal["drop", "5xx", "corrupt"]
# bytes are content; str / PathLike are paths of files on disk (streamed, never loaded whole).
FileSource = bytes | str | os.PathLike[str]

log = logging.getLogger(__name__)


def git_blob_sha1(data: bytes) -> str:
    """Git's blob id of `data`: how the hub identifies non-LFS files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file git stores in place of an LFS file."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def make_random_file(path: str | os.PathLike[str], size: int, seed: int = 0) -> Path:
    """Write `size` deterministic pseudo-random bytes to `path`; returns the path.

    Each 1 MiB block is one random block xor a per-block random 8-byte pattern: ~1 GB/s instead of
    randbytes' ~150 MB/s, and still no two blocks (or sub-block chunks) alike, so chunk-level
    dedup cannot hide bugs."""
    rng = random.Random(seed)
    base = int.from_bytes(rng.randbytes(_HASH_BLOCK), "little")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as f:
        for offset in range(0, size, _HASH_BLOCK):
            mask = int.from_bytes(rng.randbytes(8) * (_HASH_BLOCK // 8), "little")
            block = (base ^ mask).to_bytes(_HASH_BLOCK, "little")
            f.write(block[: min(_HASH_BLOCK, size - offset)])
    return out


@contextlib.contextmanager
def patch_hf_endpoint(url: str) -> Iterator[None]:
    """Point huggingface_hub (and anything reading HF_ENDPOINT) at `url` for the block, for code
    that can't take `endpoint=`. huggingface_hub reads HF_ENDPOINT once at import, so its
    constants and its module-level HfApi are patched too. Not thread-safe (process globals)."""
    from huggingface_hub import constants, hf_api

    url = url.rstrip("/")
    saved_env = os.environ.get("HF_ENDPOINT")
    saved = (constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, hf_api.api.endpoint)
    os.environ["HF_ENDPOINT"] = url
    constants.ENDPOINT = url
    constants.HUGGINGFACE_CO_URL_TEMPLATE = url + "/{repo_id}/resolve/{revision}/{filename}"
    hf_api.api.endpoint = url
    try:
        yield
    finally:
        constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, hf_api.api.endpoint = saved
        if saved_env is None:
            os.environ.pop("HF_ENDPOINT", None)
        else:
            os.environ["HF_ENDPOINT"] = saved_env


@dataclass(frozen=True)
class HubFile:
    """One file of a commit, with its identities computed once when it was added."""

    path: str
    size: int
    blob_id: str  # git blob sha1 of what git stores: the content, or the LFS pointer for LFS files
    sha256: str | None  # set iff the file is LFS
    pointer_size: int | None
    source: bytes | Path

    @property
    def is_lfs(self) -> bool:
        return self.sha256 is not None

    @property
    def etag(self) -> str:
        """What the hub sends as ETag: sha256 for LFS files, the git blob sha1 otherwise."""
        return self.sha256 or self.blob_id

    def read(self) -> bytes:
        return self.source if isinstance(self.source, bytes) else self.source.read_bytes()


@dataclass(frozen=True)
class Commit:
    sha: str
    parent: str | None
    files: Mapping[str, HubFile]
    dirs: Mapping[str, str]  # directory path ("" is the root) -> git tree sha1
    title: str
    date: datetime


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: datetime
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit | None:
        for prefix in ("refs/heads/", "refs/tags/"):
            if rev.startswith(prefix) and rev[len(prefix) :] in {**self.branches, **self.tags}:
                rev = rev[len(prefix) :]
        sha = self.branches.get(rev) or self.tags.get(rev) or rev
        return self.commits.get(sha)


@dataclass
class Fault:
    """An injected fault. `count` None means unlimited; `hits` counts requests it affected."""

    mode: FaultMode
    count: int | None
    after_bytes: int
    path: str | None
    status: int
    api: bool
    hits: int = 0


@dataclass
class RequestRecord:
    """One request the hub received. `bytes_sent` counts file-content body bytes only."""

    method: str
    path: str
    query: str
    range: str | None
    authorization: str | None
    cdn: bool
    status: int = 0
    bytes_sent: int = 0
    fault: FaultMode | None = None


_HASH_CACHE: dict[tuple[str, int, int, int, bool], tuple[str, str | None, int | None]] = {}
_HASH_CACHE_LOCK = threading.Lock()


def _hash_path(path: Path, size: int, lfs: bool) -> tuple[str, str | None, int | None]:
    """(blob_id, sha256, pointer_size) of a file on disk, streamed and cached by identity so that
    benchmarks restarting a hub over the same 1 GiB file hash it once per process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, lfs)
    with _HASH_CACHE_LOCK:
        hit = _HASH_CACHE.get(key)
    if hit is not None:
        return hit
    h = hashlib.sha256() if lfs else hashlib.sha1(b"blob %d\0" % size)
    with path.open("rb") as f:
        for _ in range(size // _HASH_BLOCK + 2):  # bounded: the file may not grow under us
            block = f.read(_HASH_BLOCK)
            if not block:
                break
            h.update(block)
    if lfs:
        sha256 = h.hexdigest()
        pointer = lfs_pointer(sha256, size)
        result: tuple[str, str | None, int | None] = (git_blob_sha1(pointer), sha256, len(pointer))
    else:
        result = (h.hexdigest(), None, None)
    with _HASH_CACHE_LOCK:
        _HASH_CACHE[key] = result
    return result


def _tree_oids(files: Mapping[str, HubFile]) -> dict[str, str]:
    """Git tree sha1 of every directory (the root is ""), as git would compute them."""
    children: dict[str, list[tuple[str, str, str]]] = {"": []}  # dir -> (sort key, mode+name, oid)
    for path in files:
        parts = path.split("/")
        for i in range(1, len(parts)):
            children.setdefault("/".join(parts[:i]), [])
    oids: dict[str, str] = {}
    for path, f in files.items():
        parent, _, name = path.rpartition("/")
        children[parent].append((name, f"100644 {name}", f.blob_id))
    # Deepest directories first, so each parent sees its children's tree oids.
    for d in sorted(children, key=lambda p: -1 if p == "" else p.count("/"), reverse=True):
        entries = sorted(children[d])
        body = b"".join(
            mode_name.encode() + b"\0" + bytes.fromhex(oid) for _, mode_name, oid in entries
        )
        oids[d] = hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()
        if d:
            parent, _, name = d.rpartition("/")
            children[parent].append(
                (name + "/", f"40000 {name}", oids[d])
            )  # git sorts dirs as "name/"
    return oids


def _check_path(path: str) -> None:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid path in repo: {path!r}")


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _parse_range(header: str, size: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """(start, end-exclusive) of a single `bytes=` range; None means ignore the header (RFC 9110:
    invalid or multi-range may be answered with the whole content)."""
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, sep, last = spec.strip().partition("-")
    if not sep:
        return None
    try:
        if first.strip() == "":  # suffix range: the last N bytes
            n = int(last)
            if n <= 0 or size == 0:
                return "unsatisfiable"
            return max(0, size - n), size
        start = int(first)
        end = size - 1 if last.strip() == "" else int(last)
    except ValueError:
        return None
    if start >= size:
        return "unsatisfiable"
    if start < 0 or end < start:
        return None
    return start, min(end, size - 1) + 1


def _error(
    status: int, code: str | None, message: str, extra: Mapping[str, str] | None = None
) -> Response:
    """An error the way the hub sends it: X-Error-Code/X-Error-Message headers and a JSON body,
    which is what huggingface_hub's hf_raise_for_status maps to its exception types."""
    headers = {"X-Error-Message": message, **(extra or {})}
    if code is not None:
        headers["X-Error-Code"] = code
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _DropFilter(logging.Filter):
    """Injected drops end a response early on purpose; uvicorn logs that as an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "returned without completing response" not in record.getMessage()


_DROP_FILTER = _DropFilter()


class _BodyResponse(Response):
    """Streams a byte range of a file in pieces, through the hub's throttle and faults."""

    def __init__(
        self,
        hub: LocalHub,
        status_code: int,
        headers: Mapping[str, str],
        source: bytes | Path,
        start: int,
        length: int,
        fault: Fault | None,
        record: RequestRecord,
        send_body: bool,
    ) -> None:
        # Response.__init__ is skipped on purpose: it would buffer a body and set Content-Length.
        self.status_code = status_code
        self.background = None
        self.raw_headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
        ]
        self._hub = hub
        self._source = source
        self._start = start
        self._length = length
        self._fault = fault
        self._record = record
        self._send_body = send_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._record.status = self.status_code
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        if not self._send_body or self._length == 0:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        gone = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(receive, gone))
        try:
            if await self._pump(send, gone):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            # else: return with the body incomplete, so uvicorn closes the connection mid-body.
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _pump(self, send: Send, gone: asyncio.Event) -> bool:
        """Send the body; False when it was cut short (drop fault, client gone, hub stopping)."""
        hub, fault, length = self._hub, self._fault, self._length
        # A drop always truncates (at most length-1 bytes); corruption always lands in the body.
        drop_at = min(fault.after_bytes, length - 1) if fault and fault.mode == "drop" else None
        flip_at = min(fault.after_bytes, length - 1) if fault and fault.mode == "corrupt" else None
        fh = self._source.open("rb") if isinstance(self._source, Path) else None
        try:
            sent = 0
            while sent < length:  # bounded: every pass sends >= 1 byte or returns
                if hub._closing or gone.is_set():
                    return False
                n = min(hub._piece_size(), length - sent)
                if drop_at is not None:
                    if sent >= drop_at:
                        return False
                    n = min(n, drop_at - sent)
                pos = self._start + sent
                if fh is not None:
                    fh.seek(pos)
                    data = fh.read(n)
                    if len(data) != n:  # the file changed on disk under the hub
                        return False
                else:
                    assert isinstance(self._source, bytes)
                    data = self._source[pos : pos + n]
                if flip_at is not None and sent <= flip_at < sent + n:
                    flipped = bytearray(data)
                    flipped[flip_at - sent] ^= 0xFF
                    data = bytes(flipped)
                await hub._throttle(n, gone)
                await send({"type": "http.response.body", "body": data, "more_body": True})
                sent += n
                hub._count(self._record, n)
            return True
        finally:
            if fh is not None:
                fh.close()


async def _watch_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    # uvicorn silently discards writes after a disconnect; notice it so we stop reading the file.
    for _ in range(1000):  # bounded; GET bodies are empty so this is one or two messages
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            return


class LocalHub:
    """A local Hugging Face hub. See the module docstring; use as a context manager or
    call start()/stop(). Repos can be added before or after start()."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        lfs_threshold: int = DEFAULT_LFS_THRESHOLD,
        throttle_bps: float | None = None,
        lfs_redirect: bool = False,
        tree_page_size: int = 1000,
        tokens: Iterable[str] = (),
    ) -> None:
        self.host = host
        self._port = port
        self.lfs_threshold = lfs_threshold
        # Total body bytes/second across all connections; None = unlimited. Settable at runtime.
        self.throttle_bps: float | None = throttle_bps
        # Answer LFS resolves with a 302 to the CDN port instead of serving them directly.
        self.lfs_redirect = lfs_redirect
        self.tree_page_size = tree_page_size
        # Valid tokens. Private repos need one; when non-empty, any other Bearer token gets 401.
        self.tokens: set[str] = set(tokens)

        self._lock = threading.Lock()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._faults: list[Fault] = []
        self._records: list[RequestRecord] = []
        self._bytes_served = 0
        self._tb_next = 0.0  # token bucket: when the next reserved send slot starts (monotonic)
        # Link time booked by throttled sends: what the throttle imposed, whatever the load.
        self.throttled_seconds = 0.0
        self._closing = False
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sockets: list[socket.socket] = []
        self._hub_port = 0
        self._cdn_port = 0
        self.app = Starlette(
            routes=[Route("/{path:path}", self._handle, methods=["GET", "HEAD", "POST"])]
        )

    # ---------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        """The endpoint, e.g. http://127.0.0.1:PORT (what HF_ENDPOINT / endpoint= take)."""
        if not self._hub_port:
            raise RuntimeError("LocalHub is not started")
        return f"http://{self.host}:{self._hub_port}"

    @property
    def port(self) -> int:
        return self._hub_port

    @property
    def cdn_url(self) -> str:
        """The stand-in CDN origin that LFS resolves redirect to when lfs_redirect is set."""
        if not self._cdn_port:
            raise RuntimeError("LocalHub is not started")
        return f"http://{self.host}:{self._cdn_port}"

    def start(self) -> LocalHub:
        if self._thread is not None:
            raise RuntimeError("LocalHub already started")
        # Bind here rather than in uvicorn so the ports are known before the thread runs.
        socks = [self._bind(self._port), self._bind(0)]
        self._sockets = socks
        self._hub_port = socks[0].getsockname()[1]
        self._cdn_port = socks[1].getsockname()[1]
        logging.getLogger("uvicorn.error").addFilter(_DROP_FILTER)
        config = uvicorn.Config(
            self.app,
            log_config=None,  # don't reconfigure the process's logging
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": socks},
            name=f"localhub-{self._hub_port}",
            daemon=True,
        )
        self._closing = False
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("LocalHub failed to start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._closing = True  # streaming bodies abandon at their next piece
        server.should_exit = True
        thread.join(timeout=_STOP_TIMEOUT_S)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=_STOP_TIMEOUT_S)
        for s in self._sockets:
            s.close()
        self._sockets = []
        self._server = self._thread = None
        self._hub_port = self._cdn_port = 0
        if thread.is_alive():
            raise RuntimeError("LocalHub server thread did not stop")

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _bind(self, port: int) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, port))
        return s

    # ---------------------------------------------------------------- content

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, FileSource],
        *,
        repo_type: str = "model",
        branch: str = "main",
        private: bool = False,
        message: str = "Upload files",
    ) -> str:
        """Create the repo if needed and add a commit whose tree is exactly `files`, on `branch`
        (its parent is the branch's previous head). Returns the 40-hex commit sha."""
        if repo_type not in REPO_TYPES:
            raise ValueError(f"repo_type must be one of {REPO_TYPES}")
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            if repo is None:
                repo = _Repo(repo_type, repo_id, private, datetime.now(UTC))
                self._repos[(repo_type, repo_id)] = repo
            repo.private = private
        hub_files = {p: self._make_file(p, src) for p, src in files.items()}
        return self._commit(repo, hub_files, branch, message)

    def add_commit(
        self,
        repo_id: str,
        files: Mapping[str, FileSource],
        *,
        repo_type: str = "model",
        branch: str = "main",
        delete: Iterable[str] = (),
        message: str = "Update files",
    ) -> str:
        """Add a commit on top of `branch` (which must exist) that adds/replaces `files` and
        removes `delete`. Returns the commit sha."""
        repo = self._get_repo(repo_id, repo_type)
        with self._lock:
            head = repo.resolve(branch)
        if head is None:
            raise KeyError(f"no branch {branch!r} in {repo_type} {repo_id}")
        new = dict(head.files)
        for p in delete:
            new.pop(p, None)
        new.update({p: self._make_file(p, src) for p, src in files.items()})
        return self._commit(repo, new, branch, message)

    def set_ref(
        self, repo_id: str, ref: str, commit: str, *, repo_type: str = "model", tag: bool = False
    ) -> None:
        """Point branch (or tag) `ref` at `commit` (a sha or another ref)."""
        repo = self._get_repo(repo_id, repo_type)
        with self._lock:
            target = repo.resolve(commit)
            if target is None:
                raise KeyError(f"unknown commit {commit!r}")
            (repo.tags if tag else repo.branches)[ref] = target.sha

    def delete_ref(self, repo_id: str, ref: str, *, repo_type: str = "model") -> None:
        repo = self._get_repo(repo_id, repo_type)
        with self._lock:
            repo.branches.pop(ref, None)
            repo.tags.pop(ref, None)

    def delete_repo(self, repo_id: str, *, repo_type: str = "model") -> None:
        with self._lock:
            self._repos.pop((repo_type, repo_id), None)

    def resolve_revision(
        self, repo_id: str, revision: str = "main", *, repo_type: str = "model"
    ) -> str:
        """The commit sha a branch, tag or sha names (KeyError if none)."""
        repo = self._get_repo(repo_id, repo_type)
        with self._lock:
            commit = repo.resolve(revision)
        if commit is None:
            raise KeyError(f"unknown revision {revision!r}")
        return commit.sha

    def get_file(
        self, repo_id: str, path: str, revision: str = "main", *, repo_type: str = "model"
    ) -> HubFile:
        """A file's metadata (size, blob_id, sha256, etag, source) at a revision."""
        repo = self._get_repo(repo_id, repo_type)
        with self._lock:
            commit = repo.resolve(revision)
        if commit is None:
            raise KeyError(f"unknown revision {revision!r}")
        return commit.files[path]

    def file_url(
        self, repo_id: str, path: str, revision: str = "main", *, repo_type: str = "model"
    ) -> str:
        """The resolve URL of a file, as hf_hub_url builds it."""
        rev = quote(revision, safe="")
        return f"{self.url}/{_URL_PREFIX[repo_type]}{repo_id}/resolve/{rev}/{quote(path)}"

    def _get_repo(self, repo_id: str, repo_type: str) -> _Repo:
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise KeyError(f"no {repo_type} repo {repo_id!r}")
        return repo

    def _make_file(self, path: str, src: FileSource) -> HubFile:
        _check_path(path)
        if isinstance(src, bytes | bytearray | memoryview):
            data = bytes(src)
            lfs = self._is_lfs(path, len(data))
            if lfs:
                sha256 = hashlib.sha256(data).hexdigest()
                pointer = lfs_pointer(sha256, len(data))
                return HubFile(path, len(data), git_blob_sha1(pointer), sha256, len(pointer), data)
            return HubFile(path, len(data), git_blob_sha1(data), None, None, data)
        p = Path(src)
        size = p.stat().st_size
        blob_id, sha256, pointer_size = _hash_path(p, size, self._is_lfs(path, size))
        return HubFile(path, size, blob_id, sha256, pointer_size, p)

    def _is_lfs(self, path: str, size: int) -> bool:
        return size >= self.lfs_threshold or Path(path).suffix.lower() in LFS_EXTENSIONS

    def _commit(self, repo: _Repo, files: dict[str, HubFile], branch: str, message: str) -> str:
        paths = set(files)
        for p in paths:  # a path can't be both a file and a directory
            parts = p.split("/")
            for i in range(1, len(parts)):
                if "/".join(parts[:i]) in paths:
                    raise ValueError(f"{p!r} is under file {'/'.join(parts[:i])!r}")
        dirs = _tree_oids(files)
        with self._lock:
            parent = repo.branches.get(branch)
            seed = "\n".join(
                (
                    f"{repo.repo_type}/{repo.repo_id}",
                    str(parent),
                    str(len(repo.commits)),
                    dirs[""],
                    message,
                )
            )
            sha = hashlib.sha1(seed.encode()).hexdigest()
            repo.commits[sha] = Commit(sha, parent, files, dirs, message, datetime.now(UTC))
            repo.branches[branch] = sha
        return sha

    # ---------------------------------------------------------------- faults, throttle, stats

    def inject(
        self,
        mode: FaultMode,
        *,
        count: int | None = None,
        after_bytes: int = 0,
        path: str | None = None,
        status: int = 500,
        api: bool = False,
    ) -> Fault:
        """Inject a fault into file-content GETs (resolve and CDN; not HEAD).

        - "drop": send `after_bytes` bytes of the body (at most length-1), then close the
          connection.
        - "5xx": answer `status` (e.g. 500, 503) instead of the content.
        - "corrupt": flip (xor 0xFF) the body byte at offset `after_bytes` (clamped to the last).
        `count`: how many requests it affects (None = all). `path`: only requests for that repo
        file path, URL path, or content id (sha256/blob id). `api`: a "5xx" also hits /api/.
        The first matching fault (in injection order) applies to a request.
        """
        if mode not in ("drop", "5xx", "corrupt"):
            raise ValueError(f"unknown fault mode {mode!r}")
        fault = Fault(mode, count, after_bytes, path, status, api)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def bytes_served(self) -> int:
        """File-content body bytes sent, over all requests since the last reset_stats()."""
        with self._lock:
            return self._bytes_served

    @property
    def records(self) -> list[RequestRecord]:
        """Every request since the last reset_stats() (copies), in arrival order."""
        with self._lock:
            return [RequestRecord(**vars(r)) for r in self._records]

    @property
    def request_log(self) -> list[tuple[str, str, str | None]]:
        """(method, URL path, Range header) of every request."""
        with self._lock:
            return [(r.method, r.path, r.range) for r in self._records]

    @property
    def auth_log(self) -> list[tuple[str, str | None]]:
        """(URL path, Authorization header or None) of every request."""
        with self._lock:
            return [(r.path, r.authorization) for r in self._records]

    def reset_stats(self) -> None:
        with self._lock:
            self._records.clear()
            self._bytes_served = 0

    def _take_fault(self, keys: set[str], api: bool) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.count is not None and fault.count <= 0:
                    continue
                if api and not (fault.api and fault.mode == "5xx"):
                    continue
                if fault.path is not None and fault.path not in keys:
                    continue
                if fault.count is not None:
                    fault.count -= 1
                fault.hits += 1
                return fault
        return None

    def _count(self, record: RequestRecord, n: int) -> None:
        with self._lock:
            record.bytes_sent += n
            self._bytes_served += n

    def _piece_size(self) -> int:
        rate = self.throttle_bps
        if not rate:
            return _PIECE_UNTHROTTLED
        return max(_PIECE_MIN_THROTTLED, min(_PIECE_MAX_THROTTLED, int(rate / 20)))

    async def _throttle(self, n: int, gone: asyncio.Event) -> None:
        """Shared token bucket: reserve the next n/rate seconds of the link and wait for the
        slot's start. Runs on the server loop only, so no lock is needed."""
        rate = self.throttle_bps
        if not rate or rate <= 0:
            return
        now = time.monotonic()
        slot = max(now, self._tb_next)
        self._tb_next = slot + n / rate
        self.throttled_seconds += n / rate
        while now < slot:  # bounded in time by the slot; wakes often to notice changes
            if self._closing or gone.is_set():
                return
            if self.throttle_bps != rate:  # rate changed at runtime: restart the schedule
                self._tb_next = now
                return
            await asyncio.sleep(min(slot - now, 0.05))
            now = time.monotonic()

    # ---------------------------------------------------------------- HTTP

    async def _handle(self, request: Request) -> Response:
        scope = request.scope
        raw = scope.get("raw_path") or scope["path"].encode()
        raw_path = raw.decode("latin-1").split("?", 1)[0]
        # Split the raw path so %2F inside a segment (quoted revisions) stays inside it.
        parts = [unquote(p) for p in raw_path.split("/")[1:]]
        cdn = scope.get("server", (None, None))[1] == self._cdn_port
        record = RequestRecord(
            method=request.method,
            path=unquote(raw_path),
            query=scope.get("query_string", b"").decode("latin-1"),
            range=request.headers.get("range"),
            authorization=request.headers.get("authorization"),
            cdn=cdn,
        )
        with self._lock:
            self._records.append(record)
        try:
            if cdn:
                response = self._cdn(request, parts, record)
            else:
                response = await self._dispatch(request, parts, record)
        except Exception as e:  # a hub bug must surface as a 500, not a hung client
            log.exception("local hub failed on %s %s", request.method, raw_path)
            response = _error(500, None, f"local hub error: {e!r}")
        if not isinstance(response, _BodyResponse):
            record.status = response.status_code
        return response

    async def _dispatch(
        self, request: Request, parts: list[str], record: RequestRecord
    ) -> Response:
        auth = request.headers.get("authorization")
        token = auth[7:].strip() if auth and auth.lower().startswith("bearer ") else None
        if token is not None and self.tokens and token not in self.tokens:
            return _error(401, None, "Invalid credentials in Authorization header")

        if len(parts) >= 3 and parts[0] == "api" and parts[1] in ("models", "datasets", "spaces"):
            fault = self._take_fault({record.path}, api=True)
            if fault is not None:
                record.fault = fault.mode
                return _error(fault.status, None, "Internal Error (injected)")
            repo_type = parts[1][:-1]
            repo, rest = self._find_repo(repo_type, parts[2:], _API_ACTIONS, token)
            if repo is None:
                return self._repo_not_found(token)
            return await self._api(request, repo, rest)

        repo_type = "model"
        rest = parts
        if parts and parts[0] in ("datasets", "spaces"):
            repo_type, rest = parts[0][:-1], parts[1:]
        if len(rest) >= 3 and "resolve" in rest[1:3]:
            repo, rest = self._find_repo(repo_type, rest, {"resolve"}, token)
            if repo is None:
                return self._repo_not_found(token)
            if not rest or rest[0] != "resolve" or len(rest) < 3:
                return _error(404, None, "Not Found")
            rev, path_parts = self._split_rev(repo, rest[1:])
            commit = self._resolve_commit(repo, rev)
            if commit is None:
                return _error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return self._resolve(request, repo, commit, "/".join(path_parts), record)
        return _error(404, None, "Not Found")

    def _find_repo(
        self, repo_type: str, parts: list[str], keywords: Iterable[str], token: str | None
    ) -> tuple[_Repo | None, list[str]]:
        """Split `org/name/...` or legacy `name/...` (told apart by the keyword that follows the
        id) into the repo, if it exists and the token may see it, and the rest of the path."""
        n = 1 if len(parts) < 2 or parts[1] in keywords else 2
        with self._lock:
            if n == 1 and len(parts) >= 2 and (repo_type, "/".join(parts[:2])) in self._repos:
                n = 2  # an existing org/name wins over a legacy name followed by a keyword
            repo = self._repos.get((repo_type, "/".join(parts[:n])))
        if repo is None or (repo.private and (token is None or token not in self.tokens)):
            return None, parts[n:]
        return repo, parts[n:]

    def _repo_not_found(self, token: str | None) -> Response:
        # The hub answers 401 without credentials and 404 with them, both with RepoNotFound.
        if token is None:
            return _error(401, "RepoNotFound", "Invalid username or password.")
        return _error(404, "RepoNotFound", "Repository not found")

    def _split_rev(self, repo: _Repo, parts: list[str]) -> tuple[str, list[str]]:
        """Revision and remaining path from path segments; a revision with unencoded slashes
        (refs/pr/1) is recognised by being a known ref."""
        with self._lock:
            if repo.resolve(parts[0]) is None:
                for k in range(2, min(len(parts), 6) + 1):  # bounded: refs are a few levels deep
                    candidate = "/".join(parts[:k])
                    if repo.resolve(candidate) is not None:
                        return candidate, parts[k:]
        return parts[0], parts[1:]

    def _resolve_commit(self, repo: _Repo, rev: str) -> Commit | None:
        with self._lock:
            return repo.resolve(rev)

    # -- /api

    async def _api(self, request: Request, repo: _Repo, rest: list[str]) -> Response:
        action = rest[0] if rest else "info"
        if action == "refs" and len(rest) == 1 and request.method in ("GET", "HEAD"):
            return JSONResponse(
                self._refs_json(repo, bool(request.query_params.get("include_prs")))
            )
        if action == "info" or (action == "revision" and len(rest) >= 2):
            if request.method not in ("GET", "HEAD"):
                return _error(405, None, "Method Not Allowed")
            rev = "/".join(rest[1:]) if action == "revision" else "main"
            commit = self._resolve_commit(repo, rev)
            if commit is None:
                return _error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            blobs = _truthy(request.query_params.get("blobs"))
            return JSONResponse(self._info_json(repo, commit, blobs))
        if action == "tree" and len(rest) >= 2 and request.method in ("GET", "HEAD"):
            rev, path_parts = self._split_rev(repo, rest[1:])
            commit = self._resolve_commit(repo, rev)
            if commit is None:
                return _error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return self._tree(request, repo, commit, "/".join(path_parts))
        if action == "paths-info" and len(rest) >= 2 and request.method == "POST":
            rev = "/".join(rest[1:])
            commit = self._resolve_commit(repo, rev)
            if commit is None:
                return _error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            paths, expand = await _read_paths_body(request)
            out: list[dict[str, Any]] = []
            for p in dict.fromkeys(x.strip("/") for x in paths):  # hub ignores missing paths
                if p in commit.files:
                    out.append(self._file_entry(repo, commit, commit.files[p], expand))
                elif p and p in commit.dirs:
                    out.append(self._dir_entry(repo, commit, p, expand))
            return JSONResponse(out)
        return _error(404, None, "Not Found")

    def _info_json(self, repo: _Repo, commit: Commit, blobs: bool) -> dict[str, Any]:
        siblings: list[dict[str, Any]] = []
        for f in sorted(commit.files.values(), key=lambda f: f.path):
            sib: dict[str, Any] = {"rfilename": f.path}
            if blobs:
                sib["blobId"] = f.blob_id
                sib["size"] = f.size
                if f.is_lfs:
                    sib["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
            siblings.append(sib)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
            "sha": commit.sha,
            "lastModified": _iso(commit.date),
            "createdAt": _iso(repo.created_at),
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(f.size for f in commit.files.values()),
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
            info["spaces"] = []
        return info

    def _refs_json(self, repo: _Repo, include_prs: bool) -> dict[str, Any]:
        with self._lock:
            branches = dict(repo.branches)
            tags = dict(repo.tags)
        prs = {k: v for k, v in branches.items() if k.startswith("refs/pr/")}
        out: dict[str, Any] = {
            "branches": [
                {"name": k, "ref": f"refs/heads/{k}", "targetCommit": v}
                for k, v in sorted(branches.items())
                if k not in prs
            ],
            "converts": [],
            "tags": [
                {"name": k, "ref": f"refs/tags/{k}", "targetCommit": v}
                for k, v in sorted(tags.items())
            ],
        }
        if include_prs:
            out["pullRequests"] = [
                {"name": k, "ref": k, "targetCommit": v} for k, v in sorted(prs.items())
            ]
        return out

    def _tree(self, request: Request, repo: _Repo, commit: Commit, base: str) -> Response:
        base = base.strip("/")
        if base not in commit.dirs:
            return _error(404, "EntryNotFound", f'{base} does not exist on "{commit.sha}"')
        recursive = _truthy(request.query_params.get("recursive"))
        expand = _truthy(request.query_params.get("expand"))
        prefix = f"{base}/" if base else ""

        def wanted(p: str) -> bool:
            return p.startswith(prefix) and (recursive or "/" not in p[len(prefix) :])

        paths = sorted(
            [(p, True) for p in commit.dirs if p and wanted(p)]
            + [(p, False) for p in commit.files if wanted(p)]
        )
        # Cursor pagination with a Link header, as the hub (1000 per page, 50 with expand).
        page_size = max(1, self.tree_page_size if not expand else min(self.tree_page_size, 50))
        try:
            offset = max(0, int(request.query_params.get("cursor", "0")))
        except ValueError:
            return _error(400, None, "invalid cursor")
        page = paths[offset : offset + page_size]
        out = [
            self._dir_entry(repo, commit, p, expand)
            if is_dir
            else self._file_entry(repo, commit, commit.files[p], expand)
            for p, is_dir in page
        ]
        headers: dict[str, str] = {}
        if offset + page_size < len(paths):
            params = {k: v for k, v in request.query_params.items() if k != "cursor"}
            params["cursor"] = str(offset + page_size)
            query = "&".join(f"{quote(k)}={quote(v)}" for k, v in params.items())
            headers["Link"] = f'<{request.url.replace(query=query)}>; rel="next"'
        return JSONResponse(out, headers=headers)

    def _file_entry(self, repo: _Repo, commit: Commit, f: HubFile, expand: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": f.blob_id, "size": f.size, "path": f.path}
        if f.is_lfs:
            entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
        if expand:
            entry["lastCommit"] = self._last_commit_json(repo, commit, f.path)
            entry["securityFileStatus"] = {
                "status": "safe",
                "avScan": {"virusFound": False, "virusNames": None},
                "pickleImportScan": None,
            }
        return entry

    def _dir_entry(self, repo: _Repo, commit: Commit, path: str, expand: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "type": "directory",
            "oid": commit.dirs[path],
            "size": 0,
            "path": path,
        }
        if expand:
            entry["lastCommit"] = self._last_commit_json(repo, commit, path)
        return entry

    def _last_commit_json(self, repo: _Repo, commit: Commit, path: str) -> dict[str, str]:
        """The oldest commit on the first-parent chain since which `path` is unchanged."""

        def oid(c: Commit) -> str | None:
            f = c.files.get(path)
            return f.blob_id if f is not None else c.dirs.get(path)

        want, cur = oid(commit), commit
        with self._lock:
            for _ in range(len(repo.commits)):  # bounded by the history length
                parent = repo.commits.get(cur.parent) if cur.parent else None
                if parent is None or oid(parent) != want:
                    break
                cur = parent
        return {"id": cur.sha, "title": cur.title, "date": _iso(cur.date)}

    # -- resolve and CDN

    def _resolve(
        self, request: Request, repo: _Repo, commit: Commit, path: str, record: RequestRecord
    ) -> Response:
        f = commit.files.get(path)
        if f is None:
            # X-Repo-Commit lets huggingface_hub cache the absence (.no_exist) as with the hub.
            return _error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit.sha})
        name = quote(path.rsplit("/", 1)[-1])
        headers = {
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{f.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f"inline; filename*=UTF-8''{name}; filename=\"{name}\";",
        }
        if f.is_lfs:
            headers["X-Linked-Etag"] = f'"{f.sha256}"'
            headers["X-Linked-Size"] = str(f.size)
            if self.lfs_redirect:
                # Like the hub's signed CDN URLs: content-addressed, on another origin.
                location = f"{self.cdn_url}/lfs/{f.sha256}?x-path={quote(path, safe='')}"
                body = f"Found. Redirecting to {location}"
                return Response(body, status_code=302, headers={**headers, "Location": location})
        keys = {path, record.path, f.blob_id, f.sha256 or f.blob_id}
        return self._content(request, f, headers, record, keys)

    def _cdn(self, request: Request, parts: list[str], record: RequestRecord) -> Response:
        if request.method not in ("GET", "HEAD") or len(parts) != 2 or parts[0] != "lfs":
            return _error(404, None, "Not Found")
        sha256 = parts[1]
        with self._lock:
            found = next(
                (
                    f
                    for repo in self._repos.values()
                    for commit in repo.commits.values()
                    for f in commit.files.values()
                    if f.sha256 == sha256
                ),
                None,
            )
        if found is None:
            return Response("NoSuchKey", status_code=404)  # what a CDN says; not a hub error
        headers = {
            "ETag": f'"{sha256}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        keys = {record.path, sha256, request.query_params.get("x-path", "")}
        return self._content(request, found, headers, record, keys)

    def _content(
        self,
        request: Request,
        f: HubFile,
        headers: dict[str, str],
        record: RequestRecord,
        fault_keys: set[str],
    ) -> Response:
        status, start, end = 200, 0, f.size
        rng = request.headers.get("range")
        if rng is not None:
            parsed = _parse_range(rng, f.size)
            if parsed == "unsatisfiable":
                return Response(
                    b"", status_code=416, headers={**headers, "Content-Range": f"bytes */{f.size}"}
                )
            if parsed is not None:
                start, end = parsed
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{f.size}"
        headers["Content-Length"] = str(end - start)
        fault = self._take_fault(fault_keys, api=False) if request.method == "GET" else None
        if fault is not None:
            record.fault = fault.mode
            if fault.mode == "5xx":
                return _error(fault.status, None, "Internal Error (injected)")
        return _BodyResponse(
            self,
            status,
            headers,
            f.source,
            start,
            end - start,
            fault,
            record,
            request.method == "GET",
        )


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


async def _read_paths_body(request: Request) -> tuple[list[str], bool]:
    """`paths`/`expand` from a paths-info body: form-encoded (huggingface_hub) or JSON."""
    body = await request.body()
    if request.headers.get("content-type", "").startswith("application/json"):
        data = json.loads(body or b"{}")
        paths = data.get("paths", [])
        return ([paths] if isinstance(paths, str) else list(paths)), bool(data.get("expand"))
    form = parse_qs(body.decode(), keep_blank_values=True)
    return form.get("paths", []), _truthy((form.get("expand") or ["false"])[0])
