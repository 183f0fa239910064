"""Who holds what for a job run in the CLI process (no daemon): the saved peers.

The daemon's own view is ``service.Daemon`` (its DHT node and the saved peers);
both take a revision from peers only as ``vouched_revision`` allows.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import anyio

from hffs import config
from hffs.hub import RemoteFile, RemoteRevision
from hffs.peers import PeerClient
from hffs.trust import claim_from_listing, vouch
from swarm.wire import PeerAuth

MAX_ASKED = 64  # peers asked for a listing when the hub is down


def vouched_revision(
    answers: Iterable[dict[str, Any]],
    local: dict[str, Any] | None,
    repo_type: str,
    repo_id: str,
    revision: str,
    private_swarm: bool,
) -> RemoteRevision | str:
    """A revision as peers vouch for it (``hffs.trust.vouch``), for when no endpoint
    answers. ``answers`` are ``PeerClient.revision`` listings (already validated), each
    with the peer's ``host``; ``local`` what this machine's cache holds. A string says
    why peers cannot be trusted with it."""
    claims = [c for c in [claim_from_listing(None, local or {})] if c is not None]
    for a in list(answers)[:MAX_ASKED]:
        if (c := claim_from_listing(str(a.get("host")), a)) is not None:
            claims.append(c)
    v = vouch(revision, claims, private_swarm)
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


class SavedPeers:
    """The in-process host's view of the swarm: the saved peers, no DHT, nobody to tell."""

    def __init__(self, cfg: config.Config, peers: PeerClient) -> None:
        self.cfg = cfg
        self.peers = peers
        self.peer_auth = PeerAuth(cfg.swarm_secret)

    async def holders(self, file_id: str, *, fresh: bool = False) -> list[dict[str, Any]]:
        # Every saved peer is a candidate: the downloader asks each for its bitmap anyway.
        return [{"host": p.host, "port": p.port, "source": "peer"} for p in self.cfg.peers]

    async def holder_news(self, file_id: str, seen: int) -> int:
        await anyio.sleep_forever()  # no DHT node here: nobody announces to us
        return seen

    async def announce(
        self, file_ids: list[str], repos: list[tuple[str, str, str]], wait: bool
    ) -> int | None:
        return None  # no daemon: nobody serves what we hold

    def report_transfer(self, from_peers: int, from_upstream: int) -> None:
        pass

    async def revision_from_peers(
        self, repo_type: str, repo_id: str, revision: str, local: dict[str, Any] | None = None
    ) -> RemoteRevision | str:
        answers: list[dict[str, Any]] = []

        async def ask(host: str, port: int) -> None:
            got = await self.peers.revision(host, port, repo_type, repo_id, revision)
            if got is not None:
                answers.append({**got, "host": host, "port": port})

        async with anyio.create_task_group() as tg:
            for p in self.cfg.peers[:MAX_ASKED]:
                tg.start_soon(ask, p.host, p.port)
        private = bool(self.cfg.swarm_secret)
        return vouched_revision(answers, local, repo_type, repo_id, revision, private)
