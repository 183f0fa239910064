"""The daemon's questions to other peers over their HTTP port, each with a short timeout.

Every answer that does not come back well-formed counts as "no": a peer that is
down, slow or misbehaving must never stall or break the daemon.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from hffs.listing import MAX_LISTING_BYTES, ListingError, parse_listing
from swarm.bounded import Answer, BoundedReadError, fetch_bounded
from swarm.hostport import format_hostport
from swarm.sources import MAX_HAVE_BYTES
from swarm.wire import PeerAuth

PROBE_TIMEOUT = 2.0


def peer_url(host: str, port: int) -> str:
    return f"http://{format_hostport(host, port)}"


def _repo_path(repo_type: str, repo_id: str) -> str:
    return f"{quote(repo_type, safe='')}/" + "/".join(quote(p, safe="") for p in repo_id.split("/"))


class PeerClient:
    """One pooled HTTP client for all peers; use as an async context manager."""

    def __init__(self, secret: str | None, timeout: float = PROBE_TIMEOUT) -> None:
        self._timeout = timeout  # for the whole exchange, body included
        # Every request is signed for the peer it goes to (swarm.peer_auth).
        self._http = httpx.AsyncClient(timeout=timeout, auth=PeerAuth(secret), trust_env=False)

    async def __aenter__(self) -> PeerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def _get(self, host: str, port: int, path: str, limit: int) -> Answer | None:
        """The peer's answer, read within ``limit`` bytes and the timeout; None if it
        could not be had (an endless or dripping body is cut, never accumulated)."""
        try:
            return await fetch_bounded(
                self._http, peer_url(host, port) + path, limit=limit, timeout=self._timeout
            )
        except BoundedReadError:
            return None

    async def ping(self, host: str, port: int) -> bool:
        r = await self._get(host, port, "/v1/ping", 4096)
        return r is not None and r.status == 200

    async def has_file(self, host: str, port: int, file_id: str) -> bool:
        """True when the peer holds at least one verified chunk of the file."""
        r = await self._get(host, port, f"/v1/blobs/{file_id}/have", MAX_HAVE_BYTES)
        return r is not None and r.status == 200 and any(r.body)

    async def revision(
        self, host: str, port: int, repo_type: str, repo_id: str, revision: str
    ) -> dict[str, Any] | None:
        """``{"commit", "fetched_at", "files"}`` the peer holds of a revision, else None."""
        path = f"/v1/repos/{_repo_path(repo_type, repo_id)}/{quote(revision, safe='')}"
        r = await self._get(host, port, path, MAX_LISTING_BYTES)
        if r is None or r.status != 200:
            return None
        try:
            return parse_listing(r.body).as_dict()
        except ListingError:
            return None
