"""Bounded reads of HTTP answers: a running byte cap and one overall deadline.

httpx's timeouts apply to each socket read, so an answer that drips one byte a
second, or never ends, is not stopped by them; and ``Response.content`` holds the
whole body before anyone can look at its size. Every answer read whole from a
peer or an upstream goes through ``fetch_bounded`` (or ``read_bounded`` for a
response already open): it stops at ``limit`` bytes, at ``timeout`` seconds for
the whole exchange, never follows a redirect, and turns every failure into one
exception type, so a bad source is a value to drop, never a crash.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio
import httpx

IDENTITY = {"accept-encoding": "identity"}


class BoundedReadError(Exception):
    """The answer could not be had within its bounds (size, time) or at all."""


class TooLarge(BoundedReadError):
    """The answer is (or announced itself as) larger than the cap."""


class TooSlow(BoundedReadError):
    """The whole exchange did not finish before its deadline."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: httpx.Headers
    body: bytes


def declared_length(resp: httpx.Response) -> int | None:
    """Content-Length if it is a plain decimal number, else None."""
    text = resp.headers.get("content-length", "")
    return int(text) if text.isdigit() and len(text) < 20 else None


async def read_bounded(resp: httpx.Response, limit: int) -> bytes:
    """The body of an open (streamed) response, refused past ``limit`` bytes.

    Bytes are counted as they arrive: an endless body costs ``limit`` bytes of memory,
    not more. A compressed body is refused (ask with ``IDENTITY``): its decoded size is
    not bounded by what arrives."""
    length = declared_length(resp)
    if length is not None and length > limit:
        raise TooLarge(f"answer of {length} bytes (cap {limit})")
    if resp.headers.get("content-encoding", "identity").strip().lower() not in ("identity", ""):
        raise BoundedReadError("compressed answer refused")
    buf = bytearray()
    try:
        async for block in resp.aiter_raw():
            if len(buf) + len(block) > limit:
                raise TooLarge(f"answer over {limit} bytes")
            buf += block
    except httpx.StreamConsumed:  # read whole already (an in-memory response): no new memory
        try:
            body = resp.content
        except httpx.ResponseNotRead:
            raise BoundedReadError("answer streamed elsewhere") from None
        if len(body) > limit:
            raise TooLarge(f"answer over {limit} bytes") from None
        return body
    except httpx.TimeoutException as exc:  # a body that stalls is too slow, as a whole
        raise TooSlow(f"{type(exc).__name__}: {exc}") from None
    except httpx.HTTPError as exc:
        raise BoundedReadError(f"{type(exc).__name__}: {exc}") from None
    return bytes(buf)


async def fetch_bounded(
    client: httpx.AsyncClient,
    url: str,
    *,
    limit: int,
    timeout: float,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    auth: httpx.Auth | None = None,
) -> Answer:
    """Ask ``url`` and read the whole answer within ``limit`` bytes and ``timeout`` seconds.

    Never follows a redirect (a 3xx is returned as is, for the caller to refuse).
    Any status is returned; BoundedReadError for everything else that can go wrong."""
    try:
        with anyio.fail_after(timeout):
            request = client.build_request(method, url, headers={**IDENTITY, **(headers or {})})
            resp = await client.send(
                request, stream=True, follow_redirects=False, auth=auth or httpx.USE_CLIENT_DEFAULT
            )
            try:
                body = await read_bounded(resp, limit) if method != "HEAD" else b""
            finally:
                await resp.aclose()
    except TimeoutError:
        raise TooSlow(f"no full answer within {timeout:g} s") from None
    except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError) as exc:
        raise BoundedReadError(f"{type(exc).__name__}: {exc}") from None
    return Answer(resp.status_code, resp.headers, body)
