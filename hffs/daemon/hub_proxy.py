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

The hub's URL and JSON shapes are in ``hub_api`` (plain code), the upstream
endpoints in ``upstream``, the per-file downloads in ``downloads``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import anyio
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from hffs.cache import CacheError, HubCache, check_repo_path, is_commit
from hffs.daemon.app import valid_repo_id
from hffs.daemon.hub_access import Access
from hffs.daemon.hub_api import (
    FORWARD_HEADERS,
    HOPS_HEADER,
    MAX_HOPS,
    ApiCall,
    head_fetches,
    hop_count,
    hub_error,
    is_hub_path,
    is_loopback,
    parse_api,
    parse_resolve,
    truthy,
    valid_revision,
)
from hffs.daemon.hub_headers import BadRange, file_headers, span_for
from hffs.daemon.upstream import Answer, Upstream, relay
from hffs.downloads import DownloadManager, FileJob, SpanReader, SwarmView, TransferFailed
from hffs.trust import redirect_guard
from hffs.visibility import VisibilityStore
from swarm.peer_server import cancel_on_disconnect
from swarm.wire import PeerAuth

log = logging.getLogger(__name__)

FIRST_BLOCK_WAIT = 8.0  # a body that fails before its first byte gets a clean 502
# A HEAD of a whole file starts its download and answers once it is complete, or after
# this long (huggingface_hub gives a HEAD 10 s: HF_HUB_ETAG_TIMEOUT).
HEAD_WAIT = 5.0
MAX_REQUEST_BYTES = 1 << 20
UPSTREAM_TIMEOUT = httpx.Timeout(20.0, connect=3.0)


class HubView(SwarmView, Protocol):
    """What the endpoint needs of the daemon (``service.Daemon`` provides it)."""

    async def search(self, repo_type: str, repo_id: str, revision: str) -> list[dict[str, Any]]: ...
    def is_self(self, host: str, port: int) -> bool: ...


# -- the endpoint -------------------------------------------------------------------


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
                tg.start_soon(cancel_on_disconnect, receive, tg.cancel_scope)
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
    """The routes; access policy in ``hub_access``, headers in ``hub_headers``, the
    upstream endpoints in ``upstream``, the downloads in ``downloads``."""

    def __init__(
        self,
        view: HubView,
        endpoints: list[str],
        cache: HubCache,
        partial_dir: Path,
        peer_auth: PeerAuth,
        client: httpx.AsyncClient | None = None,
        *,
        named: list[str] | None = None,
        sharing: VisibilityStore | None = None,
    ) -> None:
        self.view = view
        self.endpoints = [e for e in endpoints if not self._is_us(e)]
        self.cache = cache
        self.client = client or httpx.AsyncClient(
            timeout=UPSTREAM_TIMEOUT,
            limits=httpx.Limits(max_connections=128, max_keepalive_connections=64),
            follow_redirects=True,  # as far as redirect_guard allows, and never for peers
            event_hooks={"response": [redirect_guard(self.endpoints)]},
        )
        self.upstream = Upstream(self.endpoints, self.client, named)
        self.access = Access(view, self.upstream, cache, sharing)
        self.downloads = DownloadManager(cache, partial_dir, view, self.client, peer_auth)

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
            elif loopback_only and not is_loopback(scope.get("client")):
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
        hops = hop_count(request)
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

    # -- resolve ---------------------------------------------------------------------

    async def _resolve(
        self, request: Request, repo_type: str, repo_id: str, rev: str, path: str, hops: int
    ) -> Response:
        auth = request.headers.get("authorization")
        found = await self.access.listing(auth, repo_type, repo_id, rev, hops)
        if isinstance(found, Answer):
            return relay(found, str(request.base_url).rstrip("/"))
        if isinstance(found, str):
            return hub_error(502, None, found)
        f = found.files.get(path)
        if f is None:
            if path in found.unknown:
                return hub_error(502, None, f"upstream gave no size or content id for {path}")
            v = found.vouched
            if v is not None and path in v.refused:  # listed by peers, not vouched for
                msg = f"peers do not agree on {path} ({v.describe()}); ask again with the hub up"
                return hub_error(409, None, msg, {"X-Repo-Commit": found.commit})
            # Absent from upstream's listing, or from everything the swarm vouches for:
            # 404 lets HF tools move on (a 5xx makes them retry for minutes).
            commit = {"X-Repo-Commit": found.commit}
            return hub_error(404, "EntryNotFound", "Entry not found", commit)
        if found.gated and (
            refusal := await self.access.gate(
                self.client, auth, found, repo_type, repo_id, path, hops
            )
        ):
            return refusal

        span = span_for(request.headers.get("range"), f, file_headers(found, f))
        if isinstance(span, BadRange):
            return hub_error(416, None, span.detail, span.headers)
        job = FileJob(
            repo_type,
            repo_id,
            found.commit,
            path,
            f.file_id,
            f.size,
            self.access.sources(found, auth, repo_type, repo_id, path, hops),
            ref=rev if found.endpoint is not None and not is_commit(rev) else None,
            hub_listed=found.endpoint is not None,
        )
        if request.method == "HEAD":
            whole = span.start == 0 and span.end == f.size
            if head_fetches(whole, hops, request.scope.get("client"), request.scope.get("server")):
                with contextlib.suppress(TransferFailed):  # the GET will say what failed
                    await self.downloads.prefetch(job, HEAD_WAIT)
            return Response(status_code=span.status, headers=span.headers)
        try:
            reader = await self.downloads.reader(job, span.start, span.end)
        except TransferFailed as exc:
            return hub_error(502, None, str(exc))
        return FileResponse(span.status, span.headers, reader)

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
        headers = {k: v for k in FORWARD_HEADERS if (v := request.headers.get(k)) is not None}
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
        listing = await self.access.swarm_listing(call.repo_type, call.repo_id, call.revision)
        if isinstance(listing, str):
            return hub_error(502, None, listing)
        if call.action in ("info", "revision"):
            return JSONResponse(listing.info(call.repo_type, call.repo_id))
        if call.action == "tree":
            recursive = truthy(request.query_params.get("recursive"))
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
