"""Upload fairness at a holder: which blob request gets the next send slot, and which
is choked (refused for now, without blame, so the downloader asks someone else).

Plain code without I/O or clock: every event passes ``now`` and returns the decisions it
makes, like swarm/scheduler.py. The sendfile front (swarm/transport_server.py) asks it
before each blob body and carries the decisions out; a downloader treats a choke as
"busy, not this chunk for a moment" (swarm/scheduler.py ``on_busy``).

BitTorrent's ideas, for a protocol where downloaders choose chunks and a holder answers:

1. Send slots (unchoke slots). At most ``slots`` bodies leave at once; other requests
   wait. One chunk sent at the whole upload rate is done, verified and traded on sooner
   than eight chunks sent at an eighth of it each.
2. Super-seeding. While every slot is taken, a request for a chunk this holder gave
   another address less than ``spread_window`` seconds ago is choked: that address
   trades it on, and the holder's bytes go to chunks nobody has yet, so a seed sends each
   chunk to one downloader first. An idle holder serves anything. After the window the
   chunk is fresh again, so a receiver that never shares (gone, hostile) delays the
   others by at most the window; it never starves them. Only requests for exactly one
   chunk are judged so; other ranges (curl, a whole file) just take their turn.
3. Round robin. A free slot goes to the waiting request whose address has the fewest
   bodies leaving now, then the fewest bytes sent lately (halving every
   ``fair_halflife`` seconds), then the earliest: each address gets its share, whatever
   its number of connections or requests. Fresh chunks go before duplicates; a
   duplicate left waiting while slots are full is choked.
4. Snubbing. A body that stops moving (a reader that does not read) is ``snub``-bed by
   the caller: it keeps its connection until the stall timeout cuts it, but no longer
   holds a slot, so a few never-reading connections cannot lock every slot.
5. Bounded state. At most ``max_waiting`` requests wait (more are choked at once); per
   file the last address and time of each chunk given within the spread window (older
   entries are dropped as new ones come), for ``max_files`` files (least recently used
   forgotten); bytes per address for ``max_hosts`` addresses (least
   recently served forgotten). Nothing grows with what a peer asks or how many ids it
   names.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

__all__ = ["ChokeConfig", "Decision", "UploadChoker"]


class Decision(Enum):
    SEND = "send"  # a slot is this request's: send the body now
    WAIT = "wait"  # queued; a later event decides
    CHOKE = "choke"  # refuse for now (503, Retry-After): ask another holder


@dataclass(frozen=True, slots=True)
class ChokeConfig:
    slots: int = 4
    spread_window: float = 6.0
    fair_halflife: float = 10.0
    max_waiting: int = 256
    max_files: int = 64
    max_hosts: int = 1024

    def __post_init__(self) -> None:
        if self.slots < 1 or self.max_waiting < 0:
            raise ValueError("need slots >= 1 and max_waiting >= 0")
        if self.spread_window < 0 or self.fair_halflife <= 0:
            raise ValueError("need spread_window >= 0 and fair_halflife > 0")
        if self.max_files < 1 or self.max_hosts < 1:
            raise ValueError("need max_files >= 1 and max_hosts >= 1")


@dataclass(frozen=True, slots=True)
class _Ask:
    ticket: int
    host: str
    file_id: str
    chunk: int | None  # the one chunk asked for; None for any other range


class UploadChoker:
    """One holder's upload slots; see the module docstring for the rules."""

    def __init__(self, config: ChokeConfig | None = None) -> None:
        self.config = config if config is not None else ChokeConfig()
        self._tickets = itertools.count()
        self._waiting: dict[int, _Ask] = {}  # in arrival order
        self._sending: dict[int, _Ask] = {}  # holding a slot
        self._snubbed: dict[int, _Ask] = {}  # still sending, slot given back
        self._sending_by_host: dict[str, int] = {}
        # file -> chunk -> (address it was last given to, when)
        self._given: OrderedDict[str, dict[int, tuple[str, float]]] = OrderedDict()
        # address -> (bytes sent, decayed to the time beside it)
        self._sent: OrderedDict[str, tuple[float, float]] = OrderedDict()

    # ---- events ---------------------------------------------------------------------

    def arrive(
        self, host: str, file_id: str, chunk: int | None, now: float
    ) -> tuple[int, dict[int, Decision]]:
        """A request for ``chunk`` of ``file_id`` (None: another range) from ``host``.
        Returns its ticket and the decisions this event made (its own, unless it waits,
        and any for requests waiting before it)."""
        ask = _Ask(next(self._tickets), host, file_id, chunk)
        full = len(self._sending) >= self.config.slots
        if (full and self._taken(ask, now)) or len(self._waiting) >= self.config.max_waiting:
            return ask.ticket, {ask.ticket: Decision.CHOKE}
        if not full and not self._waiting:  # a free slot and no queue: what _fill would do
            self._send(ask, now)
            return ask.ticket, {ask.ticket: Decision.SEND}
        self._waiting[ask.ticket] = ask
        return ask.ticket, self._fill(now)

    def finish(self, ticket: int, nbytes: int, now: float) -> dict[int, Decision]:
        """``ticket`` is done: its body sent (``nbytes`` of it), or it was withdrawn while
        waiting or sending. Returns the decisions for requests waiting."""
        ask = self._sending.pop(ticket, None) or self._snubbed.pop(ticket, None)
        if ask is not None:
            left = self._sending_by_host.pop(ask.host, 1) - 1
            if left:
                self._sending_by_host[ask.host] = left
            if nbytes > 0:
                self._account(ask.host, nbytes, now)
        else:
            self._waiting.pop(ticket, None)
        return self._fill(now)

    def snub(self, ticket: int, now: float) -> dict[int, Decision]:
        """``ticket``'s body made no progress for a while: its slot goes to another."""
        ask = self._sending.pop(ticket, None)
        if ask is None:
            return {}
        self._snubbed[ticket] = ask
        return self._fill(now)

    # ---- observation ----------------------------------------------------------------

    @property
    def sending(self) -> int:
        return len(self._sending)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def state_sizes(self) -> tuple[int, int, int]:
        """(files remembered, chunks remembered, addresses remembered): for tests."""
        return len(self._given), sum(len(g) for g in self._given.values()), len(self._sent)

    def recent_bytes(self, host: str, now: float) -> float:
        entry = self._sent.get(host)
        if entry is None:
            return 0.0
        sent, at = entry
        return sent * 0.5 ** (max(0.0, now - at) / self.config.fair_halflife)

    # ---- internals ------------------------------------------------------------------

    def _taken(self, ask: _Ask, now: float) -> bool:
        """Whether another address got this chunk within the spread window."""
        if ask.chunk is None:
            return False
        given = self._given.get(ask.file_id)
        last = None if given is None else given.get(ask.chunk)
        return (
            last is not None and last[0] != ask.host and now - last[1] < self.config.spread_window
        )

    def _fill(self, now: float) -> dict[int, Decision]:
        out: dict[int, Decision] = {}
        cfg = self.config
        while len(self._sending) < cfg.slots and self._waiting:
            fresh = [a for a in self._waiting.values() if not self._taken(a, now)]
            pool = fresh or list(self._waiting.values())  # only duplicates: idle otherwise
            best = min(
                pool,
                key=lambda a: (
                    self._sending_by_host.get(a.host, 0),
                    self.recent_bytes(a.host, now),
                ),
            )  # min keeps the first of equals: the earliest arrival
            del self._waiting[best.ticket]
            self._send(best, now)
            out[best.ticket] = Decision.SEND
        if len(self._sending) >= cfg.slots:
            for ask in [a for a in self._waiting.values() if self._taken(a, now)]:
                del self._waiting[ask.ticket]
                out[ask.ticket] = Decision.CHOKE
        return out

    def _send(self, ask: _Ask, now: float) -> None:
        self._sending[ask.ticket] = ask
        self._sending_by_host[ask.host] = self._sending_by_host.get(ask.host, 0) + 1
        self._give(ask, now)

    def _give(self, ask: _Ask, now: float) -> None:
        if ask.chunk is None:
            return
        given = self._given.get(ask.file_id)
        if given is None:
            given = self._given[ask.file_id] = {}
            if len(self._given) > self.config.max_files:
                self._given.popitem(last=False)
        else:
            self._given.move_to_end(ask.file_id)
        given.pop(ask.chunk, None)  # kept oldest first: expired entries leave from the front
        given[ask.chunk] = (ask.host, now)
        window = self.config.spread_window
        for chunk, (_, at) in list(itertools.islice(given.items(), 8)):
            if now - at < window:
                break
            del given[chunk]

    def _account(self, host: str, nbytes: int, now: float) -> None:
        self._sent[host] = (self.recent_bytes(host, now) + nbytes, now)
        self._sent.move_to_end(host)
        if len(self._sent) > self.config.max_hosts:
            self._sent.popitem(last=False)
