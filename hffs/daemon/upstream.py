"""The upstream endpoints behind the daemon's HF endpoint: each asked in order, answers
cached per token for a short while, an endpoint that cannot be reached skipped for a while.

Only a failed connection or a 5xx (but 508) is an outage; 429, 508 and a timeout after
connecting are the upstream's answer (``hffs.trust.upstream_verdict``). A caller's token
goes only to endpoints that may have it (``hffs.trust.may_send_token``); redirects are
followed only where ``hffs.trust.redirect_allowed`` says."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from starlette.responses import Response

from hffs.daemon.hub_api import RELAY_HEADERS, rewrite_link, strip_xet
from hffs.trust import RedirectRefused, may_send_token, upstream_verdict
from swarm.bounded import IDENTITY, BoundedReadError, TooLarge, TooSlow, read_bounded

log = logging.getLogger(__name__)

DOWN_FOR = 15.0  # an endpoint we could not connect to is skipped this long (a blocked hub
# would otherwise cost every request its connect timeout)
MAX_API_BYTES = 64 << 20
API_DEADLINE = 30.0  # seconds for one whole API exchange: a dripping answer is cut


@dataclass(frozen=True)
class Answer:
    """One upstream response, read whole (API answers only: JSON, bounded)."""

    endpoint: str
    status: int
    headers: httpx.Headers
    body: bytes
    final: bool = False  # made here for a timeout or refused redirect: an answer all the same


class TTLCache:
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


def auth_key(auth: str | None) -> str:
    return hashlib.sha256(auth.encode()).hexdigest() if auth else ""


def timed_out(
    endpoint: str, status: int = 504, message: str = "upstream did not answer in time"
) -> Answer:
    """An upstream that answered nothing usable (too slow, a refused redirect): an answer
    all the same, never a reason to override the access check with the swarm."""
    headers = httpx.Headers({"content-type": "application/json", "x-error-message": message})
    return Answer(endpoint, status, headers, json.dumps({"error": message}).encode(), final=True)


class Upstream:
    """The upstream endpoints, in order, asked with the caller's credentials where allowed."""

    def __init__(
        self,
        endpoints: list[str],
        client: httpx.AsyncClient,
        named: list[str] | None = None,
        deadline: float = API_DEADLINE,
    ) -> None:
        self.endpoints = endpoints
        self.client = client
        self.deadline = deadline
        # endpoints the user configured: they (and the hub) may get a caller's token
        self.named = list(endpoints if named is None else named)
        self._down_until: dict[str, float] = {}

    def headers_for(self, endpoint: str, headers: dict[str, str]) -> dict[str, str]:
        """``headers`` without Authorization for an endpoint that may not have it."""
        if may_send_token(endpoint, self.named):
            return headers
        return {k: v for k, v in headers.items() if k.lower() != "authorization"}

    async def _send(
        self, endpoint: str, method: str, path_qs: str, headers: dict[str, str], body: bytes
    ) -> Answer | None:
        # identity: a compressed body's size is not bounded by what arrives (swarm.bounded)
        headers = {**self.headers_for(endpoint, headers), **IDENTITY}
        try:
            with anyio.fail_after(self.deadline):  # the whole exchange, body included
                async with self.client.stream(
                    method, endpoint + path_qs, headers=headers, content=body or None
                ) as resp:
                    data = await read_bounded(resp, MAX_API_BYTES)
                    return Answer(endpoint, resp.status_code, resp.headers, data)
        except TooLarge:
            log.warning("%s%s: answer too large", endpoint, path_qs[:100])
            return None
        except (TimeoutError, TooSlow):
            return timed_out(endpoint)  # it is there, just slow: not a reason to bypass it
        except BoundedReadError as exc:  # cut mid-body, or a compressed body
            log.debug("%s%s: %s", endpoint, path_qs[:100], exc)
            return None
        except (httpx.ConnectError, httpx.ConnectTimeout, OSError) as exc:
            log.info(
                "upstream %s unreachable (%s); skipping it for %.0f s", endpoint, exc, DOWN_FOR
            )
            self._down_until[endpoint] = time.monotonic() + DOWN_FOR
            return None
        except httpx.TimeoutException:
            return timed_out(endpoint)  # it is there, just slow: not a reason to bypass it
        except RedirectRefused as exc:  # it answered: somewhere we do not go
            return timed_out(endpoint, status=502, message=str(exc))
        except httpx.HTTPError as exc:
            log.debug("%s%s: %s", endpoint, path_qs[:100], exc)
            return None

    async def ask(
        self, method: str, path_qs: str, headers: dict[str, str], body: bytes = b""
    ) -> Answer | None:
        """The first success in endpoint order, else the first refusal (4xx, 429, 508, a
        timeout), else None: nobody reachable (connection failures, other 5xx)."""
        refusal: Answer | None = None
        for endpoint in self.endpoints:
            if self._down_until.get(endpoint, 0.0) > time.monotonic():
                continue
            ans = await self._send(endpoint, method, path_qs, headers, body)
            if ans is None or upstream_verdict(ans.status, ans.final) == "unreachable":
                continue
            if ans.status < 400:
                return ans
            refusal = refusal or ans
        return refusal


def relay(ans: Answer, base: str) -> Response:
    """An upstream answer passed on: only the headers clients need, no Xet anywhere."""
    headers = {k: v for k, v in ans.headers.items() if k.lower() in RELAY_HEADERS}
    link = ans.headers.get("link")
    if link and (rewritten := rewrite_link(link, base)):
        headers["Link"] = rewritten
    body = ans.body
    if "json" in ans.headers.get("content-type", ""):
        with contextlib.suppress(ValueError):
            body = json.dumps(strip_xet(json.loads(body))).encode()
    return Response(body, status_code=ans.status, headers=headers)


# -- responses -------------------------------------------------------------------------
