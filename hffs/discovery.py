"""Who holds what for a job run in the CLI process (no daemon): the saved peers.

The daemon's own view is ``service.Daemon`` (its DHT node and the saved peers);
both pick a revision peers hold with ``newest_revision``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import anyio

from hffs import config
from hffs.hub import RemoteFile, RemoteRevision
from hffs.peers import PeerClient
from swarm.wire import auth_headers


def newest_revision(
    answers: Iterable[dict[str, Any]], repo_type: str, repo_id: str
) -> RemoteRevision | None:
    """The revision peers hold, for when no endpoint answers: the newest commit reported
    (peers say when they fetched it). ``answers`` are ``PeerClient.revision`` listings
    (already validated), each with the peer's ``host`` and ``port``."""
    best: tuple[float, RemoteRevision] | None = None
    for a in answers:
        files = tuple(
            RemoteFile(f["path"], f["size"], f["file_id"], len(f["file_id"]) == 64)
            for f in a["files"]
        )
        peer = f"peer {a.get('host')}:{a.get('port')}"
        rev = RemoteRevision(repo_type, repo_id, a["commit"], files, peer)
        if best is None or a["fetched_at"] > best[0]:
            best = (a["fetched_at"], rev)
    return best[1] if best else None


class SavedPeers:
    """The in-process host's view of the swarm: the saved peers, no DHT, nobody to tell."""

    def __init__(self, cfg: config.Config, peers: PeerClient) -> None:
        self.cfg = cfg
        self.peers = peers
        self.peer_headers = auth_headers(cfg.swarm_secret)

    async def holders(self, file_id: str, *, fresh: bool = False) -> list[dict[str, Any]]:
        # Every saved peer is a candidate: the downloader asks each for its bitmap anyway.
        return [{"host": p.host, "port": p.port, "source": "peer"} for p in self.cfg.peers]

    async def announce(
        self, file_ids: list[str], repos: list[tuple[str, str, str]], wait: bool
    ) -> int | None:
        return None  # no daemon: nobody serves what we hold

    def report_transfer(self, from_peers: int, from_upstream: int) -> None:
        pass

    async def revision_from_peers(
        self, repo_type: str, repo_id: str, revision: str
    ) -> RemoteRevision | None:
        answers: list[dict[str, Any]] = []

        async def ask(host: str, port: int) -> None:
            got = await self.peers.revision(host, port, repo_type, repo_id, revision)
            if got is not None:
                answers.append({**got, "host": host, "port": port})

        async with anyio.create_task_group() as tg:
            for p in self.cfg.peers:
                tg.start_soon(ask, p.host, p.port)
        return newest_revision(answers, repo_type, repo_id)
