"""The control API the local CLI talks to: loopback only, token protected.

Every request needs the header ``X-HFFS-Token: <token from daemon.json>`` (else 403);
bad parameters get 400 ``{"error": ...}``.

- ``GET  /v1/status`` -> see ``Daemon.status`` in service.py
- ``GET  /v1/providers?file_id=ID`` or ``?repo_type=T&repo_id=R&revision=REV``
  -> ``{"providers": [{"host", "port", "source": "dht"|"peer"}]}``; a commit REV asks
  for holders of that revision, a ref for holders of any revision of the repo
- ``GET  /v1/search?repo_type=T&repo_id=R&revision=REV``
  -> ``{"holders": [{"host", "port", "commit", "fetched_at", "files": [FILE...]}]}``
  with FILE ``{"path", "file_id", "size"}``
- ``POST /v1/announce`` ``{"file_ids": [...], "repos": [{"repo_type", "repo_id", "commit"}],
  "wait": false}`` -> ``{"keys": n, "reached": n | null}`` (null: queued, not awaited)
- ``POST /v1/rescan`` -> ``{"files", "partials", "repos"}``
- ``POST /v1/transfer`` ``{"from_peers": bytes, "from_upstream": bytes}``: download totals
- ``POST /v1/peers/refresh``: re-read and probe the saved peers now
- ``POST /v1/stop``
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from hffs.cache import REPO_TYPES, is_commit
from hffs.daemon.app import RepoRev, valid_repo_id, valid_revision
from hffs.daemon.runfiles import TOKEN_HEADER
from swarm.ids import is_file_id

MAX_ANNOUNCE = 10_000  # items per announce request

# What a lookup asks for: ("file", id) or ("repo", type, repo id, revision).
Query = tuple[str, ...]


class DaemonOps(Protocol):
    """What the control API asks of the daemon (implemented in service.py)."""

    def status(self) -> dict[str, Any]: ...
    async def find_providers(self, query: Query) -> list[dict[str, Any]]: ...
    async def search(self, repo_type: str, repo_id: str, revision: str) -> list[dict[str, Any]]: ...
    async def announce(
        self, file_ids: list[str], repos: list[RepoRev], wait: bool
    ) -> int | None: ...
    async def rescan(self) -> dict[str, int]: ...
    def report_transfer(self, from_peers: int, from_upstream: int) -> None: ...
    def refresh_peers(self) -> None: ...
    def request_stop(self) -> None: ...


class BadRequest(ValueError):
    pass


def parse_repo(obj: Mapping[str, Any], rev_field: str = "revision") -> tuple[str, str, str]:
    """(repo type, repo id, revision) from query params or a JSON object."""
    repo_type, repo_id, rev = obj.get("repo_type", "model"), obj.get("repo_id"), obj.get(rev_field)
    if repo_type not in REPO_TYPES:
        raise BadRequest("repo_type must be model, dataset or space")
    if not isinstance(repo_id, str) or not valid_repo_id(repo_id):
        raise BadRequest(f"bad repo_id {str(repo_id)[:100]!r}")
    if not isinstance(rev, str) or not valid_revision(rev):
        raise BadRequest(f"bad {rev_field} {str(rev)[:100]!r}")
    return repo_type, repo_id, rev


def parse_query(params: Mapping[str, Any]) -> Query:
    file_id = params.get("file_id")
    if file_id is not None:
        if not is_file_id(file_id):
            raise BadRequest("file_id must be 40 or 64 lowercase hex")
        return ("file", file_id)
    return ("repo", *parse_repo(params))


def parse_announce(body: Any) -> tuple[list[str], list[RepoRev], bool]:
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    file_ids, repos = body.get("file_ids", []), body.get("repos", [])
    if not isinstance(file_ids, list) or not isinstance(repos, list):
        raise BadRequest("file_ids and repos must be lists")
    if len(file_ids) + len(repos) > MAX_ANNOUNCE:
        raise BadRequest(f"at most {MAX_ANNOUNCE} items per announce")
    for f in file_ids:
        if not isinstance(f, str) or not is_file_id(f):
            raise BadRequest(f"bad file id {str(f)[:80]!r}")
    revs: list[RepoRev] = []
    for r in repos:
        if not isinstance(r, dict):
            raise BadRequest("each repo must be an object")
        repo_type, repo_id, commit = parse_repo(r, "commit")
        if not is_commit(commit):
            raise BadRequest("announced revisions must be commits")
        revs.append((repo_type, repo_id, commit))
    return file_ids, revs, body.get("wait") is True


def _count(body: Mapping[str, Any], name: str) -> int:
    value = body.get(name, 0)
    if type(value) is not int or value < 0:
        raise BadRequest(f"{name} must be a non-negative integer")
    return value


class _TokenGuard:
    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            got = Headers(scope=scope).get(TOKEN_HEADER, "").encode()
            if not hmac.compare_digest(got, self._token):
                await JSONResponse({"error": "bad control token"}, 403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_control_app(ops: DaemonOps, token: str) -> ASGIApp:
    async def json_object(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (ValueError, RecursionError) as exc:  # "[[[[..." raises RecursionError
            raise BadRequest("body must be JSON") from exc
        if not isinstance(body, dict):
            raise BadRequest("body must be a JSON object")
        return body

    async def status(request: Request) -> Response:
        return JSONResponse(ops.status())

    async def providers(request: Request) -> Response:
        query = parse_query(request.query_params)
        return JSONResponse({"providers": await ops.find_providers(query)})

    async def search(request: Request) -> Response:
        holders = await ops.search(*parse_repo(request.query_params))
        return JSONResponse({"holders": holders})

    async def announce(request: Request) -> Response:
        file_ids, repos, wait = parse_announce(await json_object(request))
        reached = await ops.announce(file_ids, repos, wait)
        return JSONResponse({"keys": len(file_ids) + len(repos), "reached": reached})

    async def rescan(request: Request) -> Response:
        return JSONResponse(await ops.rescan())

    async def transfer(request: Request) -> Response:
        body = await json_object(request)
        ops.report_transfer(_count(body, "from_peers"), _count(body, "from_upstream"))
        return JSONResponse({})

    async def refresh_peers(request: Request) -> Response:
        ops.refresh_peers()
        return JSONResponse({})

    async def stop(request: Request) -> Response:
        ops.request_stop()
        return JSONResponse({"stopping": True})

    async def bad_request(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": str(exc)}, status_code=400)

    app = Starlette(
        routes=[
            Route("/v1/status", status, methods=["GET"]),
            Route("/v1/providers", providers, methods=["GET"]),
            Route("/v1/search", search, methods=["GET"]),
            Route("/v1/announce", announce, methods=["POST"]),
            Route("/v1/rescan", rescan, methods=["POST"]),
            Route("/v1/transfer", transfer, methods=["POST"]),
            Route("/v1/peers/refresh", refresh_peers, methods=["POST"]),
            Route("/v1/stop", stop, methods=["POST"]),
        ],
        exception_handlers={BadRequest: bad_request},
    )
    return _TokenGuard(app, token)
