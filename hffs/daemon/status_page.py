"""The daemon's local surface on its public port: ``/metrics`` (Prometheus), the status
page ``/ui`` (one static HTML file that polls ``/ui/state.json``), and ``/`` redirecting
there; plus a count of every response by route and status for the metrics.

Local callers only: a loopback address, or the very address the daemon was reached on
(a browser on this machine using its LAN address; a remote peer cannot complete a TCP
handshake from our address), under a ``Host`` that names this machine by a loopback
name or that address literally (a web page rebinding its DNS name to us sends its own
name, and gets 403). For others ``/`` goes on to the HF endpoint as before.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from importlib.resources import files
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hffs.activity import Activity
from hffs.daemon.hub_api import is_hub_path, same_machine
from hffs.daemon.metrics import CONTENT_TYPE, render

LOCAL_PATHS = frozenset({"/metrics", "/ui", "/ui/", "/ui/state.json"})


def loopback_host(host_header: str | None, server_ip: str | None = None) -> bool:
    """Whether a Host header names this machine: a loopback name or address, or the
    address it was reached on (``server_ip``), written as an IP literal."""
    if not host_header:
        return False
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or (server_ip is not None and ip == _ip(server_ip))


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def local_caller(scope: Scope) -> bool:
    """A caller on this machine, under a Host that names this machine (see above)."""
    client, server = scope.get("client"), scope.get("server")
    server_ip = str(server[0]) if server else None
    return same_machine(client, server) and loopback_host(
        Headers(scope=scope).get("host"), server_ip
    )


def route_kind(path: str) -> str:
    if path in LOCAL_PATHS:
        return "local"
    if path.startswith("/v1/"):
        return "peer"
    return "hf" if is_hub_path(path) else "other"


def page_html() -> bytes:
    return files("hffs.daemon").joinpath("static/status.html").read_bytes()


class LocalSurface:
    """ASGI middleware in front of the daemon's port (peer protocol + HF endpoint)."""

    def __init__(
        self,
        app: ASGIApp,
        activity: Activity,
        registry: CollectorRegistry,
        state: Callable[[], dict[str, Any]],
    ) -> None:
        self.app = app
        self.activity = activity
        self.registry = registry
        self.state = state
        self._page: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        local = local_caller(scope)
        if path in LOCAL_PATHS:
            response = self._local(path) if local else _forbidden()
            await self._counted("local", response, scope, receive, send)
        elif path == "/" and local and scope["method"] in ("GET", "HEAD"):
            await self._counted("local", RedirectResponse("/ui"), scope, receive, send)
        else:
            await self._counted(route_kind(path), self.app, scope, receive, send)

    def _local(self, path: str) -> Response:
        if path == "/metrics":
            return Response(render(self.registry), media_type=CONTENT_TYPE)
        if path == "/ui/state.json":
            return JSONResponse(self.state(), headers={"cache-control": "no-store"})
        if self._page is None:
            self._page = page_html()
        return Response(
            self._page,
            media_type="text/html; charset=utf-8",
            headers={
                "content-security-policy": "default-src 'self'; style-src 'unsafe-inline'"
                "; script-src 'unsafe-inline' 'self'; img-src 'self' data:"
            },
        )

    async def _counted(
        self, route: str, app: ASGIApp, scope: Scope, receive: Receive, send: Send
    ) -> None:
        status, sent = 0, 0

        async def counting(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await app(scope, receive, counting)
        finally:
            if status:
                self.activity.http_response(route, status, sent)


def _forbidden() -> Response:
    return Response(
        json.dumps({"error": "the status page and metrics answer local clients only"}),
        status_code=403,
        media_type="application/json",
    )
