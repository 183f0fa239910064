"""Whom to believe about one file: manifest voting, bans, and the verdict after a round.

Plain code with no I/O, like the scheduler: the driver (swarm/download.py) feeds it what
holders said and what the checks found, and does what it decides.

Rules
-----
- A holder's manifest is a tuple of per-chunk digests; a holder still downloading has
  ``None`` for chunks it does not hold and never votes for the file's manifest.
- The trusted manifest is the full manifest most unbanned holders sent (ties: the
  smallest digests, so every run decides alike). A liar wins only by outnumbering the
  honest holders, and then only until the whole-file check fails and the vouchers are
  banned, so each round removes at least one lie.
- A holder whose digests contradict the trusted manifest sits out (it is not banned: it
  may be the honest one when liars won the vote).
- After a round: a round that had to restart (a newly trusted manifest dropped chunks)
  plans again; otherwise the whole file is checked, unless upstream contradicted the
  manifest (``manifest_suspect``), which counts as a failed check. A failed check bans
  every peer that gave chunks or vouched for the manifest, drops the chunks peers gave
  (every chunk when none came from a peer and the manifest was not suspect: the lie is
  then upstream's or on disk), and forgets the manifest.
- The last round asks upstream alone, when there is an upstream.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

Digests = tuple[bytes | None, ...]


class Action(Enum):
    REPLAN = "replan"  # plan again without any check (the manifest changed under us)
    CHECK = "check"  # hash the whole file, then call ``after_check``
    PUBLISH = "publish"
    DISTRUST = "distrust"  # ban, drop, forget the manifest, and go again


@dataclass(frozen=True)
class Verdict:
    action: Action
    ban: frozenset[str] = frozenset()
    drop: tuple[int, ...] = ()  # chunk indexes to forget


@dataclass
class Trust:
    """What holders of one file said, across the rounds of its download."""

    banned: set[str] = field(default_factory=set)

    def vote(self, said: Mapping[str, Digests]) -> tuple[bytes, ...] | None:
        """The full manifest most unbanned holders agree on, or None."""
        votes = Counter(d for pid, d in said.items() if pid not in self.banned and None not in d)
        if not votes:
            return None
        best = max(votes.values())
        winner = min(d for d, n in votes.items() if n == best)
        return tuple(b for b in winner if b is not None)

    @staticmethod
    def agrees(mine: Digests, trusted: Iterable[bytes | None] | None) -> bool:
        """Whether a holder's digests never contradict the trusted manifest."""
        if trusted is None:
            return True
        trusted = tuple(trusted)
        if len(mine) != len(trusted):
            return False
        return all(d is None or d == t for d, t in zip(mine, trusted, strict=True))

    @staticmethod
    def vouchers(said: Mapping[str, Digests], trusted: Iterable[bytes | None] | None) -> set[str]:
        """Holders that sent exactly the trusted manifest."""
        if trusted is None:
            return set()
        trusted = tuple(trusted)
        return {pid for pid, d in said.items() if d == trusted}

    @staticmethod
    def uses_peers(attempt: int, max_rounds: int, has_upstream: bool) -> bool:
        """The last attempt trusts upstream alone, when there is one."""
        return not (attempt >= max_rounds - 1 and has_upstream)

    @staticmethod
    def after_round(*, restart: bool, manifest_suspect: bool) -> Action:
        if restart and not manifest_suspect:
            return Action.REPLAN
        return Action.DISTRUST if manifest_suspect else Action.CHECK

    def after_check(
        self,
        whole_ok: bool,
        *,
        n_chunks: int,
        peer_chunks: Mapping[int, str],
        vouchers: Iterable[str],
        manifest_suspect: bool,
    ) -> Verdict:
        """What to do once the whole file was (or, suspect, could not be) checked.
        A DISTRUST verdict's bans are recorded here."""
        if whole_ok and not manifest_suspect:
            return Verdict(Action.PUBLISH)
        liars = frozenset(peer_chunks.values()) | frozenset(vouchers)
        self.banned |= liars
        if peer_chunks or manifest_suspect:
            drop = tuple(sorted(peer_chunks))
        else:
            drop = tuple(range(n_chunks))
        return Verdict(Action.DISTRUST, liars, drop)
