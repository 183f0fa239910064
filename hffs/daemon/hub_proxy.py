"""The daemon as a Hugging Face endpoint: ``HF_ENDPOINT=http://<daemon>:<port>``.

Every HF tool (huggingface_hub, transformers, vllm, ``hf download``) then downloads
through the swarm without a change. On the daemon's TCP port, beside the peer
protocol (``/v1/...``), it answers:

- ``/api/...`` (GET/HEAD, and POST ``paths-info``): proxied to the upstream
  endpoints in order with the caller's own Authorization (never to a peer). When
  none answers, repo info, ``/revision/{rev}``, ``tree`` and ``paths-info`` are
  answered from what the local cache and the peers hold.
- HEAD/GET ``/{repo}/resolve/{rev}/{path}`` (``/datasets/``, ``/spaces/`` too):
  the hub's headers (X-Repo-Commit, ETag, X-Linked-Etag/-Size, Content-Length,
  Accept-Ranges), Range with 206/416, and the bytes from the swarm download
  (peers first, then upstream for chunks no peer has), streamed as chunks verify.

Access: a file is served only when upstream, asked with the caller's token,
lists the repo revision (200; for a gated repo, upstream also lets that token
resolve the file); an upstream refusal is relayed as is. When every upstream is
unreachable, the daemon serves what the swarm holds, for a commit hash (or a ref
the swarm resolves): content peers share by content id anyway.

No Xet: X-Xet-* headers, ``xet-auth`` links and ``xetHash`` fields are never
passed on, so huggingface_hub uses plain HTTP through the daemon.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, quote, unquote, urlsplit

import anyio
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from hffs.cache import CacheError, HubCache, check_repo_path, is_commit
from hffs.config import hf_token
from hffs.daemon.app import read_revision, valid_repo_id
from hffs.daemon.downloads import DownloadManager, FileJob, SpanReader, SwarmView, TransferFailed
from hffs.hub import RemoteFile, file_url
from swarm.ids import is_file_id
from swarm.peer_server import RangeError, parse_range
from swarm.sources import Source

log = logging.getLogger(__name__)

META_TTL = 30.0  # how long an upstream answer (listing or refusal) for one token is reused
UNREACHABLE_TTL = 5.0  # how long "nobody answered" is reused: a blocked hub costs timeouts
SWARM_TTL = 10.0
META_BUDGET = 7.0  # seconds for upstream metadata behind one HEAD (huggingface_hub waits 10)
SWARM_BUDGET = 3.0  # seconds to ask the DHT and peers for a revision listing
DOWN_FOR = 15.0  # an endpoint we could not connect to is skipped this long (a blocked hub
# would otherwise cost every request its connect timeout)
FIRST_BLOCK_WAIT = 8.0  # a body that fails before its first byte gets a clean 502
MAX_API_BYTES = 64 << 20
MAX_REQUEST_BYTES = 1 << 20
UPSTREAM_TIMEOUT = httpx.Timeout(20.0, connect=3.0)
# Daemons may be each other's upstream (a gateway daemon with internet access); a
# misconfigured cycle stops after this many hops instead of looping forever.
HOPS_HEADER = "x-hffs-hops"
MAX_HOPS = 4

REPO_PREFIXES = {"datasets": "dataset", "spaces": "space"}
_API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_API_ACTIONS = frozenset({"revision", "tree", "paths-info", "refs", "commits"})
_REVISION = re.compile(r"[A-Za-z0-9._/-]{1,256}")
_FORWARD = ("authorization", "accept", "content-type", "user-agent", "x-hf-bill-to")
_RELAY = (
    "content-type",
    "x-error-code",
    "x-error-message",
    "x-repo-commit",
    "x-request-id",
    "x-total-count",
    "retry-after",
)
_LINK = re.compile(r"<([^>]*)>([^,]*)")


class HubView(SwarmView, Protocol):
    """What the endpoint needs of the daemon (``service.Daemon`` provides it)."""

    async def search(self, repo_type: str, repo_id: str, revision: str) -> list[dict[str, Any]]: ...
    def is_self(self, host: str, port: int) -> bool: ...


# -- plain pieces --------------------------------------------------------------------


def hub_error(
    status: int, code: str | None, message: str, extra: dict[str, str] | None = None
) -> Response:
    """An error as the hub sends it: huggingface_hub maps X-Error-Code to its exceptions."""
    headers = {"X-Error-Message": message, **(extra or {})}
    if code is not None:
        headers["X-Error-Code"] = code
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def valid_revision(rev: str) -> bool:
    """A commit or a ref, slashes allowed (``refs/pr/1``), nothing that walks a path."""
    return (
        _REVISION.fullmatch(rev) is not None
        and ".." not in rev
        and not rev.startswith("/")
        and not rev.endswith("/")
        and "//" not in rev
    )


def strip_xet(obj: Any) -> Any:
    """JSON without any ``xet*`` field, so no client is pointed at Xet storage."""
    if isinstance(obj, dict):
        return {k: strip_xet(v) for k, v in obj.items() if not k.lower().startswith("xet")}
    if isinstance(obj, list):
        return [strip_xet(v) for v in obj]
    return obj


def rewrite_link(value: str, base: str) -> str | None:
    """A Link header with upstream's origin replaced by ours (pagination must come back
    here) and Xet links dropped."""
    out = []
    for url, params in _LINK.findall(value):
        if "xet" in params.lower():
            continue
        parts = urlsplit(url)
        local = base + parts.path + (f"?{parts.query}" if parts.query else "")
        out.append(f"<{local}>{params}")
    return ", ".join(out) or None


def parse_resolve(parts: list[str]) -> tuple[str, str, str, str] | None:
    """(repo type, repo id, revision, path) of ``[datasets/]{repo}/resolve/{rev}/{path}``."""
    repo_type = "model"
    if parts and parts[0] in REPO_PREFIXES:
        repo_type, parts = REPO_PREFIXES[parts[0]], parts[1:]
    if len(parts) >= 5 and parts[2] == "resolve":
        repo, rest = "/".join(parts[:2]), parts[3:]
    elif len(parts) >= 4 and parts[1] == "resolve":
        repo, rest = parts[0], parts[2:]
    else:
        return None
    return repo_type, repo, rest[0], "/".join(rest[1:])


@dataclass(frozen=True)
class ApiCall:
    repo_type: str
    repo_id: str
    action: str  # "info", "revision", "tree", "paths-info", or another the hub knows
    revision: str
    path: str  # inside the repo, for "tree"


def parse_api(parts: list[str]) -> ApiCall | None:
    """``api/{models|datasets|spaces}/{repo}[/{action}/{rev}[/{path}]]``."""
    if len(parts) < 3 or parts[1] not in _API_TYPES:
        return None
    rest = parts[2:]
    n = 1 if len(rest) < 2 or rest[1] in _API_ACTIONS else 2
    repo, tail = "/".join(rest[:n]), rest[n:]
    if not tail:
        return ApiCall(_API_TYPES[parts[1]], repo, "info", "main", "")
    if len(tail) < 2:
        return ApiCall(_API_TYPES[parts[1]], repo, tail[0], "", "")
    if tail[0] == "tree":
        return ApiCall(_API_TYPES[parts[1]], repo, "tree", tail[1], "/".join(tail[2:]))
    return ApiCall(_API_TYPES[parts[1]], repo, tail[0], "/".join(tail[1:]), "")


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _pointer(f: RemoteFile) -> bytes:
    """The git-lfs pointer git stores for an LFS file: its blob id is the hub's ``oid``."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{f.file_id}\nsize {f.size}\n"
    ).encode()


def _hops(request: Request) -> int:
    try:
        return max(0, int(request.headers.get(HOPS_HEADER, "0")))
    except ValueError:
        return 0


def _upstream_headers(auth: str | None, hops: int) -> dict[str, str]:
    """What goes upstream with a caller's request: its credentials, one more hop."""
    return {HOPS_HEADER: str(hops + 1), **({"authorization": auth} if auth else {})}


def _is_loopback(client: Any) -> bool:
    try:
        return ipaddress.ip_address(client[0]).is_loopback
    except (TypeError, ValueError, IndexError):
        return False


# -- revision listings -----------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """A revision's files as upstream (``endpoint``) or the swarm (``endpoint`` None) gave them."""

    commit: str
    files: dict[str, RemoteFile]
    endpoint: str | None
    gated: bool = False
    unknown: frozenset[str] = frozenset()  # listed without a usable size or content id

    def dirs(self) -> set[str]:
        return {p.rsplit("/", i)[0] for p in self.files for i in range(1, p.count("/") + 1)}

    def file_entry(self, f: RemoteFile) -> dict[str, Any]:
        if not f.lfs:
            return {"type": "file", "oid": f.file_id, "size": f.size, "path": f.path}
        pointer = _pointer(f)
        return {
            "type": "file",
            "oid": _git_blob_sha1(pointer),
            "size": f.size,
            "path": f.path,
            "lfs": {"oid": f.file_id, "size": f.size, "pointerSize": len(pointer)},
        }

    def dir_entry(self, path: str) -> dict[str, Any]:
        # Not git's tree id (the swarm may hold only part of the tree): a stable stand-in.
        oid = hashlib.sha1(f"{self.commit}:{path}".encode()).hexdigest()
        return {"type": "directory", "oid": oid, "size": 0, "path": path}

    def info(self, repo_type: str, repo_id: str) -> dict[str, Any]:
        siblings = []
        for f in sorted(self.files.values(), key=lambda f: f.path):
            entry = self.file_entry(f)
            sib: dict[str, Any] = {"rfilename": f.path, "blobId": entry["oid"], "size": f.size}
            if f.lfs:
                sib["lfs"] = {"sha256": f.file_id, "size": f.size, "pointerSize": len(_pointer(f))}
            siblings.append(sib)
        info: dict[str, Any] = {"id": repo_id, "sha": self.commit, "siblings": siblings}
        if repo_type == "model":
            info["modelId"] = repo_id
        return info

    def tree(self, base: str, recursive: bool) -> list[dict[str, Any]] | None:
        dirs = self.dirs()
        if base and base not in dirs:
            return None
        prefix = f"{base}/" if base else ""

        def wanted(p: str) -> bool:
            return p.startswith(prefix) and (recursive or "/" not in p[len(prefix) :])

        entries = [(p, self.dir_entry(p)) for p in dirs if wanted(p)]
        entries += [(p, self.file_entry(f)) for p, f in self.files.items() if wanted(p)]
        return [e for _, e in sorted(entries, key=lambda pe: pe[0])]

    def paths_info(self, paths: list[str]) -> list[dict[str, Any]]:
        dirs, out = self.dirs(), []
        for p in dict.fromkeys(p.strip("/") for p in paths):
            if p in self.files:
                out.append(self.file_entry(self.files[p]))
            elif p in dirs:
                out.append(self.dir_entry(p))
        return out


def listing_from_info(body: Any, endpoint: str) -> Listing | None:
    """Upstream's repo info (``?blobs=true``) as a Listing; None if it is not one."""
    if not isinstance(body, dict) or not isinstance(body.get("sha"), str):
        return None
    if not is_commit(body["sha"]):
        return None
    files: dict[str, RemoteFile] = {}
    unknown: set[str] = set()
    for s in body.get("siblings") or []:
        if not isinstance(s, dict) or not isinstance(s.get("rfilename"), str):
            continue
        name, lfs, size, blob_id = s["rfilename"], s.get("lfs"), s.get("size"), s.get("blobId")
        try:
            check_repo_path(name)
        except CacheError:
            continue
        if isinstance(lfs, dict):
            sha256, size = lfs.get("sha256"), lfs.get("size")
            if isinstance(sha256, str) and is_file_id(sha256) and type(size) is int:
                files[name] = RemoteFile(name, size, sha256, True)
        elif isinstance(blob_id, str) and is_file_id(blob_id) and type(size) is int:
            files[name] = RemoteFile(name, size, blob_id, False)
        if name not in files:
            unknown.add(name)
    gated = bool(body.get("gated"))
    return Listing(body["sha"], files, endpoint, gated, frozenset(unknown))


def listing_from_holders(answers: list[dict[str, Any]], revision: str) -> Listing | None:
    """The swarm's view of a revision: for a ref, the newest commit anyone reports; the
    union of what every holder of that commit holds."""
    if not is_commit(revision):
        if not answers:
            return None
        revision = max(answers, key=lambda a: float(a.get("fetched_at") or 0.0))["commit"]
    files: dict[str, RemoteFile] = {}
    for a in answers:
        if a.get("commit") != revision:
            continue
        for f in a.get("files", []):
            if f["path"] not in files:
                fid = f["file_id"]
                files[f["path"]] = RemoteFile(f["path"], f["size"], fid, len(fid) == 64)
    return Listing(revision, files, None) if files else None


# -- upstream ------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One upstream response, read whole (API answers only: JSON, bounded)."""

    endpoint: str
    status: int
    headers: httpx.Headers
    body: bytes


class _TTLCache:
    """Answers by key for a while, with one computation at a time per key."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, ...], tuple[float, Any]] = {}
        self._locks: dict[tuple[str, ...], anyio.Lock] = {}

    def get(self, key: tuple[str, ...]) -> tuple[bool, Any]:
        hit = self._items.get(key)
        if hit is None or hit[0] < time.monotonic():
            return False, None
        return True, hit[1]

    def put(self, key: tuple[str, ...], value: Any, ttl: float) -> None:
        now = time.monotonic()
        if len(self._items) > 4096:
            self._items = {k: v for k, v in self._items.items() if v[0] >= now}
        self._items[key] = (now + ttl, value)

    def lock(self, key: tuple[str, ...]) -> anyio.Lock:
        if len(self._locks) > 4096:
            self._locks = {k: v for k, v in self._locks.items() if v.locked()}
        return self._locks.setdefault(key, anyio.Lock())


def _auth_key(auth: str | None) -> str:
    return hashlib.sha256(auth.encode()).hexdigest() if auth else ""


class Upstream:
    """The upstream endpoints, in order, asked with the caller's credentials."""

    def __init__(self, endpoints: list[str], client: httpx.AsyncClient) -> None:
        self.endpoints = endpoints
        self.client = client
        self._down_until: dict[str, float] = {}

    async def _send(
        self, endpoint: str, method: str, path_qs: str, headers: dict[str, str], body: bytes
    ) -> Answer | None:
        try:
            async with self.client.stream(
                method, endpoint + path_qs, headers=headers, content=body or None
            ) as resp:
                data = bytearray()
                async for block in resp.aiter_bytes():
                    data += block
                    if len(data) > MAX_API_BYTES:
                        log.warning("%s%s: answer too large", endpoint, path_qs[:100])
                        return None
                return Answer(endpoint, resp.status_code, resp.headers, bytes(data))
        except (httpx.ConnectError, httpx.ConnectTimeout, OSError) as exc:
            log.info(
                "upstream %s unreachable (%s); skipping it for %.0f s", endpoint, exc, DOWN_FOR
            )
            self._down_until[endpoint] = time.monotonic() + DOWN_FOR
            return None
        except httpx.HTTPError as exc:
            log.debug("%s%s: %s", endpoint, path_qs[:100], exc)
            return None

    async def ask(
        self, method: str, path_qs: str, headers: dict[str, str], body: bytes = b""
    ) -> Answer | None:
        """The first success in endpoint order, else the first refusal (4xx), else None:
        nobody reachable (transport errors, 5xx, 429)."""
        refusal: Answer | None = None
        for endpoint in self.endpoints:
            if self._down_until.get(endpoint, 0.0) > time.monotonic():
                continue
            ans = await self._send(endpoint, method, path_qs, headers, body)
            if ans is None or ans.status >= 500 or ans.status == 429:
                continue
            if ans.status < 400:
                return ans
            refusal = refusal or ans
        return refusal


def relay(ans: Answer, base: str) -> Response:
    """An upstream answer passed on: only the headers clients need, no Xet anywhere."""
    headers = {k: v for k, v in ans.headers.items() if k.lower() in _RELAY}
    link = ans.headers.get("link")
    if link and (rewritten := rewrite_link(link, base)):
        headers["Link"] = rewritten
    body = ans.body
    if "json" in ans.headers.get("content-type", ""):
        with contextlib.suppress(ValueError):
            body = json.dumps(strip_xet(json.loads(body))).encode()
    return Response(body, status_code=ans.status, headers=headers)


# -- responses -------------------------------------------------------------------------


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


class FileResponse(Response):
    """A file's bytes from a SpanReader; a body that fails midway is cut short (the
    client sees a short read and resumes with a Range request)."""

    def __init__(self, status_code: int, headers: dict[str, str], reader: SpanReader) -> None:
        super().__init__(status_code=status_code, headers=headers)
        self.reader = reader

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reader = self.reader
        try:
            try:
                with anyio.move_on_after(FIRST_BLOCK_WAIT):
                    await reader.ready()
            except TransferFailed as exc:
                await hub_error(502, None, f"hffs could not fetch this file: {exc}")(
                    scope, receive, send
                )
                return
            start = {"type": "http.response.start", "status": self.status_code}
            await send({**start, "headers": self.raw_headers})
            completed = False
            async with anyio.create_task_group() as tg:
                # uvicorn drops sends to a gone client silently: notice, stop reading.
                tg.start_soon(_cancel_on_disconnect, receive, tg.cancel_scope)
                try:
                    while data := await reader.read():
                        await send({"type": "http.response.body", "body": data, "more_body": True})
                    completed = True
                except TransferFailed as exc:
                    log.warning("a download through the HF endpoint failed: %s", exc)
                tg.cancel_scope.cancel()
            if completed:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            reader.close()


# -- the endpoint ----------------------------------------------------------------------


class HubEndpoint:
    """The routes, the upstream client, the caches and the daemon's download manager."""

    def __init__(
        self,
        view: HubView,
        endpoints: list[str],
        cache: HubCache,
        partial_dir: Path,
        peer_headers: dict[str, str],
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.view = view
        self.endpoints = [e for e in endpoints if not self._is_us(e)]
        self.cache = cache
        self.client = client or httpx.AsyncClient(
            timeout=UPSTREAM_TIMEOUT,
            limits=httpx.Limits(max_connections=128, max_keepalive_connections=64),
            follow_redirects=True,  # cross-origin redirects drop Authorization (httpx)
        )
        self.upstream = Upstream(self.endpoints, self.client)
        self.downloads = DownloadManager(cache, partial_dir, view, self.client, peer_headers)
        self._meta = _TTLCache()
        self._own_token: str | None = None
        self._own_token_read = False

    def _is_us(self, endpoint: str) -> bool:
        """An upstream endpoint that is this daemon (HF_ENDPOINT exported for every
        process, the daemon's own included) would send each request back here."""
        url = urlsplit(endpoint)
        host = "127.0.0.1" if url.hostname == "localhost" else url.hostname or ""
        try:
            port = url.port or (443 if url.scheme == "https" else 80)
        except ValueError:
            return False
        if self.view.is_self(host, port):
            log.warning("not using %s as upstream: it is this daemon", endpoint)
            return True
        return False

    async def run(self) -> None:
        """Run the downloads until cancelled; closes the upstream client at the end."""
        async with self.client:
            await self.downloads.run()

    def wrap(self, peer_app: ASGIApp, *, loopback_only: bool) -> ASGIApp:
        """One app for the daemon's port: ``/v1/`` to the peer protocol, the rest here.

        With a swarm secret, remote callers could not prove they belong to the swarm
        (their Authorization carries an HF token), so only loopback clients are served."""
        hub_app = Starlette(
            routes=[Route("/{path:path}", self.handle, methods=["GET", "HEAD", "POST"])]
        )

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or not is_hub_path(scope["path"]):
                await peer_app(scope, receive, send)
            elif loopback_only and not _is_loopback(scope.get("client")):
                msg = "this daemon's HF endpoint serves local clients only (the swarm has a secret)"
                await hub_error(403, None, msg)(scope, receive, send)
            else:
                await hub_app(scope, receive, send)

        return app

    # -- routing ---------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        raw = request.scope.get("raw_path") or request.scope["path"].encode()
        # Split before unquoting, so a %2F inside a segment (refs%2Fpr%2F1) stays in it.
        parts = [unquote(p) for p in raw.decode("latin-1").split("?", 1)[0].split("/")[1:]]
        hops = _hops(request)
        if hops >= MAX_HOPS:
            msg = "hffs daemons are each other's upstream in a loop; fix their endpoints"
            return hub_error(508, None, msg)
        if parts and parts[0] == "api":
            return await self._api(request, parts, hops)
        target = parse_resolve(parts)
        if target is None:
            return hub_error(404, None, "Not Found")
        if request.method not in ("GET", "HEAD"):
            return hub_error(405, None, "Method Not Allowed")
        repo_type, repo_id, rev, path = target
        try:
            check_repo_path(path)
        except CacheError:
            return hub_error(400, None, "bad path in repo")
        if not valid_repo_id(repo_id) or not valid_revision(rev):
            return hub_error(400, None, "bad repo id or revision")
        return await self._resolve(request, repo_type, repo_id, rev, path, hops)

    # -- metadata --------------------------------------------------------------------

    async def listing(
        self, auth: str | None, repo_type: str, repo_id: str, rev: str, hops: int = 0
    ) -> Listing | Answer | None:
        """Upstream's listing for this caller, or upstream's refusal, or (upstream
        unreachable) what the swarm holds, or None."""
        key = (_auth_key(auth), repo_type, repo_id, rev)
        async with self._meta.lock(key):
            hit, value = self._meta.get(key)
            if hit:
                return value
            path = f"/api/{repo_type}s/{repo_id}/revision/{quote(rev, safe='')}?blobs=true"
            ans: Answer | None = None
            with anyio.move_on_after(META_BUDGET):
                ans = await self.upstream.ask("GET", path, _upstream_headers(auth, hops))
            result: Listing | Answer | None = ans
            if ans is not None and ans.status == 200:
                try:
                    result = listing_from_info(json.loads(ans.body), ans.endpoint)
                except ValueError:
                    result = None
            if result is None:
                result = await self.swarm_listing(repo_type, repo_id, rev)
                self._meta.put(key, result, SWARM_TTL if result else UNREACHABLE_TTL)
            else:
                self._meta.put(key, result, META_TTL)
            return result

    async def swarm_listing(self, repo_type: str, repo_id: str, rev: str) -> Listing | None:
        """What the local cache and the peers hold of a revision."""
        answers: list[dict[str, Any]] = []
        local = await anyio.to_thread.run_sync(read_revision, self.cache, repo_type, repo_id, rev)
        if local is not None:
            answers.append(local)
        with anyio.move_on_after(SWARM_BUDGET):
            answers += await self.view.search(repo_type, repo_id, rev)
        return listing_from_holders(answers, rev)

    async def _gate(
        self,
        auth: str | None,
        listing: Listing,
        repo_type: str,
        repo_id: str,
        path: str,
        hops: int,
    ) -> Response | None:
        """For a gated repo, upstream must let this caller resolve a file; None if it does."""
        assert listing.endpoint is not None
        key = ("gate", _auth_key(auth), repo_type, repo_id)
        hit, refusal = self._meta.get(key)
        if hit:
            return refusal
        url = file_url(listing.endpoint, repo_type, repo_id, listing.commit, path)
        try:
            resp = await self.client.head(
                url, headers=_upstream_headers(auth, hops), follow_redirects=False
            )
        except (httpx.HTTPError, OSError):
            return hub_error(502, None, "cannot confirm access to this gated repo upstream")
        refusal = None
        if resp.status_code >= 400:
            ans = Answer(listing.endpoint, resp.status_code, resp.headers, b"")
            refusal = relay(ans, "")
        self._meta.put(key, refusal, META_TTL)
        return refusal

    def _upstream_auth(self, auth: str | None) -> dict[str, str]:
        """The caller's credentials for upstream chunks, else the daemon's own token
        (access is already confirmed for this caller)."""
        if auth:
            return {"authorization": auth}
        if not self._own_token_read:
            self._own_token_read = True
            try:
                self._own_token = hf_token()
            except Exception:  # no token is fine for public repos
                self._own_token = None
        return {"authorization": f"Bearer {self._own_token}"} if self._own_token else {}

    # -- resolve ---------------------------------------------------------------------

    async def _resolve(
        self, request: Request, repo_type: str, repo_id: str, rev: str, path: str, hops: int
    ) -> Response:
        auth = request.headers.get("authorization")
        found = await self.listing(auth, repo_type, repo_id, rev, hops)
        if isinstance(found, Answer):
            return relay(found, str(request.base_url).rstrip("/"))
        if found is None:
            return hub_error(
                502, None, f"no upstream endpoint answered and no peer holds {repo_id}@{rev}"
            )
        f = found.files.get(path)
        if f is None:
            if path in found.unknown:
                return hub_error(502, None, f"upstream gave no size or content id for {path}")
            if found.endpoint is None:  # the swarm may just not hold it: do not say "absent"
                return hub_error(
                    502, None, f"no upstream endpoint answered and no peer holds {path}"
                )
            commit = {"X-Repo-Commit": found.commit}
            return hub_error(404, "EntryNotFound", "Entry not found", commit)
        if found.gated and (
            refusal := await self._gate(auth, found, repo_type, repo_id, path, hops)
        ):
            return refusal

        name = quote(path.rsplit("/", 1)[-1])
        headers = {
            "X-Repo-Commit": found.commit,
            "ETag": f'"{f.file_id}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f"inline; filename*=UTF-8''{name}; filename=\"{name}\";",
        }
        if f.lfs:
            headers["X-Linked-Etag"] = f'"{f.file_id}"'
            headers["X-Linked-Size"] = str(f.size)
        status, start, end = 200, 0, f.size
        try:
            span = parse_range(request.headers.get("range"), f.size)
        except RangeError as exc:
            if exc.status == 416:
                extra = {**headers, "Content-Range": f"bytes */{f.size}"}
                return hub_error(416, None, exc.detail, extra)
            span = None  # as the hub: a malformed Range is ignored
        if span is not None:
            status, (start, end) = 206, span
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{f.size}"
        headers["Content-Length"] = str(end - start)
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers)

        job = FileJob(
            repo_type,
            repo_id,
            found.commit,
            path,
            f.file_id,
            f.size,
            self._sources(found, auth, repo_type, repo_id, path, hops),
            ref=rev if found.endpoint is not None and not is_commit(rev) else None,
        )
        try:
            reader = await self.downloads.reader(job, start, end)
        except TransferFailed as exc:
            return hub_error(502, None, str(exc))
        return FileResponse(status, headers, reader)

    def _sources(
        self,
        listing: Listing,
        auth: str | None,
        repo_type: str,
        repo_id: str,
        path: str,
        hops: int,
    ) -> tuple[Source, ...]:
        order = list(self.endpoints)
        if listing.endpoint in order:  # the endpoint that answered first
            order.remove(listing.endpoint)
            order.insert(0, listing.endpoint)
        headers = {**self._upstream_auth(auth), HOPS_HEADER: str(hops + 1)}
        return tuple(
            Source(e, file_url(e, repo_type, repo_id, listing.commit, path), True, headers)
            for e in order
        )

    # -- api -------------------------------------------------------------------------

    async def _api(self, request: Request, parts: list[str], hops: int) -> Response:
        if any(p.lower().startswith("xet-") for p in parts):
            return hub_error(404, None, "hffs serves files over plain HTTP; there is no Xet here")
        call = parse_api(parts)
        is_paths_info = call is not None and call.action == "paths-info"
        if request.method not in ("GET", "HEAD") and not (
            request.method == "POST" and is_paths_info
        ):
            return hub_error(405, None, "the hffs endpoint serves downloads; write to the hub")
        body = b""
        if request.method == "POST":
            async for block in request.stream():
                body += block
                if len(body) > MAX_REQUEST_BYTES:
                    return hub_error(413, None, "request too large")
        headers = {k: v for k in _FORWARD if (v := request.headers.get(k)) is not None}
        headers[HOPS_HEADER] = str(hops + 1)
        raw_path = request.scope.get("raw_path") or request.scope["path"].encode()
        path_qs = raw_path.decode("latin-1").split("?", 1)[0]
        if request.scope.get("query_string"):
            path_qs += "?" + request.scope["query_string"].decode("latin-1")
        base = str(request.base_url).rstrip("/")
        ans = await self.upstream.ask(request.method, path_qs, headers, body)
        if ans is not None:
            return relay(ans, base)
        return await self._api_from_swarm(request, call, body)

    async def _api_from_swarm(
        self, request: Request, call: ApiCall | None, body: bytes
    ) -> Response:
        """Upstream is unreachable: answer the read-only calls downloads need from what the
        swarm holds (never any repo's privacy or gating: the swarm shares by content id)."""
        unreachable = hub_error(502, None, "no upstream endpoint answered")
        if call is None or call.action not in ("info", "revision", "tree", "paths-info"):
            return unreachable
        if not valid_repo_id(call.repo_id) or not valid_revision(call.revision):
            return hub_error(400, None, "bad repo id or revision")
        listing = await self.swarm_listing(call.repo_type, call.repo_id, call.revision)
        if listing is None:
            return unreachable
        if call.action in ("info", "revision"):
            return JSONResponse(listing.info(call.repo_type, call.repo_id))
        if call.action == "tree":
            recursive = _truthy(request.query_params.get("recursive"))
            entries = listing.tree(call.path.strip("/"), recursive)
            if entries is None:
                return hub_error(404, "EntryNotFound", f"{call.path} is not held by the swarm")
            return JSONResponse(entries)
        return JSONResponse(listing.paths_info(_paths_from_body(request, body)))


def _paths_from_body(request: Request, body: bytes) -> list[str]:
    """``paths`` of a paths-info request: form-encoded (huggingface_hub) or JSON."""
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            return []
        paths = data.get("paths", []) if isinstance(data, dict) else []
        paths = [paths] if isinstance(paths, str) else paths
        return [p for p in paths if isinstance(p, str)]
    return parse_qs(body.decode("latin-1"), keep_blank_values=True).get("paths", [])


def is_hub_path(path: str) -> bool:
    """Whether a request is for the HF endpoint rather than the peer protocol (``/v1/``).

    An org named ``v1`` still works: its resolve URLs have ``resolve`` in third place."""
    if not path.startswith("/v1/"):
        return True
    parts = path.split("/")
    return len(parts) > 3 and (parts[2] == "resolve" or parts[3] == "resolve")
