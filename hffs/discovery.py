"""Who holds what: the daemon's DHT when it runs, and the saved peers always.

The downloader runs in the CLI process; it learns holders from the local daemon
(which asks the DHT) and tells the daemon what it now holds, so the daemon
announces it and serves the verified chunks to others while the download goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

import anyio
import httpx

from hffs import config
from hffs.daemon.client import DaemonClient, DaemonNotRunning
from hffs.hub import RemoteFile, RemoteRevision
from hffs.listing import MAX_LISTING_BYTES, Listing, ListingError, parse_listing
from hffs.trust import claim_from_listing, vouch
from swarm.bounded import BoundedReadError, fetch_bounded
from swarm.sources import PeerAddr
from swarm.wire import auth_headers

log = logging.getLogger(__name__)

LISTING_TIMEOUT = 5.0
MAX_ASKED = 64  # peers asked for a listing when the hub is down


@dataclass
class Discovery:
    cfg: config.Config
    client: httpx.AsyncClient
    daemon: DaemonClient | None
    peer_headers: dict[str, str] = field(default_factory=dict)

    def _saved(self) -> list[PeerAddr]:
        return [PeerAddr(p.host, p.port) for p in self.cfg.peers]

    async def _from_daemon(self, **query: str) -> list[PeerAddr]:
        if self.daemon is None:
            return []
        try:
            found = await anyio.to_thread.run_sync(lambda: self.daemon.find_providers(**query))
        except Exception as exc:  # the daemon went away: saved peers still work
            log.warning("the daemon could not look up holders: %s", exc)
            return []
        return [PeerAddr(h, p) for h, p in found]

    async def holders(self, file_id: str) -> list[PeerAddr]:
        found = await self._from_daemon(file_id=file_id) + self._saved()
        return list(dict.fromkeys(found))

    async def _call(self, action: Callable[[DaemonClient], object]) -> None:
        """Tell the daemon something; the download does not depend on it."""
        daemon = self.daemon
        if daemon is None:
            return
        try:
            await anyio.to_thread.run_sync(lambda: action(daemon))
        except Exception as exc:
            log.warning("the daemon could not be told: %s", exc)

    async def announce_partial(self, file_id: str) -> None:
        """Called as a download starts: the daemon announces the file id from then on and
        serves its chunks as they verify, and then the whole file once it is published."""
        await self._call(lambda d: d.announce(file_ids=[file_id]))

    async def cache_changed(self) -> None:
        """The daemon re-reads the cache: it shares and announces all that is there now."""
        await self._call(lambda d: d.rescan())

    async def report_transfer(self, from_peers: int, from_upstream: int) -> None:
        """Let the daemon count what this download took (shown by `hffs daemon status`)."""
        if self.daemon is not None and (from_peers or from_upstream):
            await self._call(lambda d: d.report_transfer(from_peers, from_upstream))

    async def revision_from_peers(
        self,
        repo_type: str,
        repo_id: str,
        revision: str,
        local: dict[str, object] | None = None,
    ) -> RemoteRevision | str:
        """A revision as peers vouch for it (``hffs.trust.vouch``), for when no endpoint
        answers; ``local`` is what this machine's cache holds of it. A string says why
        peers cannot be trusted with it.

        A commit is asked of its holders in the DHT; a ref of every peer we know."""
        candidates = await self._from_daemon(repo=f"{repo_type}/{repo_id}/{revision}")
        candidates = list(dict.fromkeys(candidates + self._saved()))[:MAX_ASKED]
        claims = [c for c in [claim_from_listing(None, local or {})] if c is not None]
        for peer in candidates:
            got = await self._listing(peer, repo_type, repo_id, revision)
            if got is not None and (c := claim_from_listing(peer.host, got.as_dict())):
                claims.append(c)
        v = vouch(revision, claims, bool(self.cfg.swarm_secret))
        if isinstance(v, str):
            return v
        files = tuple(
            RemoteFile(p, size, fid, len(fid) == 64) for p, (fid, size) in sorted(v.files.items())
        )
        refused = f"; left out, as peers do not vouch for them: {', '.join(sorted(v.refused))}"
        said = v.describe() + (refused if v.refused else "")
        return RemoteRevision(
            repo_type, repo_id, v.commit, files, "peers", vouched=said, peer_ids=v.peer_ids
        )

    async def _listing(
        self, peer: PeerAddr, repo_type: str, repo_id: str, revision: str
    ) -> Listing | None:
        url = f"http://{peer}/v1/repos/{repo_type}/{quote(repo_id)}/{quote(revision, safe='')}"
        try:  # bounded in bytes and time, and never redirected
            answer = await fetch_bounded(
                self.client,
                url,
                limit=MAX_LISTING_BYTES,
                timeout=LISTING_TIMEOUT,
                headers=self.peer_headers,
            )
            if answer.status != 200:
                return None
            return parse_listing(answer.body)
        except (ListingError, BoundedReadError) as exc:
            log.debug("listing from %s: %s", peer, exc)  # a peer's bad answer is its problem
            return None


def discovery_for(cfg: config.Config, client: httpx.AsyncClient) -> Discovery:
    try:
        daemon: DaemonClient | None = DaemonClient.from_home(cfg.home)
    except DaemonNotRunning:
        daemon = None
    return Discovery(cfg, client, daemon, auth_headers(cfg.swarm_secret))
