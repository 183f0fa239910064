"""How a DHT lookup proceeds and when it gives up on a contact: plain rules, no I/O.

- :class:`RttEstimator`: per-address smoothed RTT (RFC 6298), and a timeout from it;
  an address never measured gets one from every RTT this node measured. A dead
  contact then costs about that timeout instead of a fixed 5 s.
- :class:`LookupState`: Kademlia's iterative lookup without rounds: up to alpha
  requests in flight, the next one sent as soon as any answers or fails, or outlives
  its soft timeout (twice its RTT), so a slow or dead contact holds a slot briefly,
  never the whole lookup. It ends when the k closest
  contacts that did not fail have all answered. A contact that failed is never taken
  back, whoever names it later.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass

from kademlia.node import Node

MIN_TIMEOUT = 0.5  # seconds: below this, event-loop stalls of a busy host look like deaths
MIN_SOFT = 0.05  # seconds before a slow request gives its lookup slot to the next contact
MAX_TRACKED = 8192


class RttEstimator:
    """Smoothed round-trip times, per address and overall."""

    def __init__(
        self, max_timeout: float, min_timeout: float = MIN_TIMEOUT, limit: int = MAX_TRACKED
    ) -> None:
        if not 0 < min_timeout <= max_timeout:
            raise ValueError("need 0 < min_timeout <= max_timeout")
        self.max_timeout = max_timeout
        self.min_timeout = min(min_timeout, max_timeout)
        self.limit = limit
        self._per: OrderedDict[tuple[str, int], tuple[float, float]] = OrderedDict()
        self._all: tuple[float, float] | None = None

    @staticmethod
    def _update(old: tuple[float, float] | None, rtt: float) -> tuple[float, float]:
        if old is None:
            return (rtt, rtt / 2)
        srtt, var = old
        var = 0.75 * var + 0.25 * abs(srtt - rtt)
        return (0.875 * srtt + 0.125 * rtt, var)

    def observe(self, addr: tuple[str, int], rtt: float) -> None:
        if not rtt >= 0:
            return
        self._per[addr] = self._update(self._per.get(addr), rtt)
        self._per.move_to_end(addr)
        while len(self._per) > self.limit:
            self._per.popitem(last=False)
        self._all = self._update(self._all, rtt)

    def _rto(self, est: tuple[float, float]) -> float:
        srtt, var = est
        return min(self.max_timeout, max(self.min_timeout, srtt + 4 * var))

    def timeout(self, addr: tuple[str, int]) -> float:
        """How long to wait for addr: its own estimate, else twice the overall one
        (a stranger may be farther), else the configured maximum."""
        est = self._per.get(addr)
        if est is not None:
            return self._rto(est)
        if self._all is not None:
            return min(self.max_timeout, 2 * self._rto(self._all))
        return self.max_timeout

    def soft_timeout(self, addr: tuple[str, int]) -> float:
        """After this long a request is presumed lost for the lookup's ranking (its
        slot goes to the next contact), though its reply is still taken until
        :meth:`timeout`: twice the smoothed RTT, at least MIN_SOFT."""
        est = self._per.get(addr) or self._all
        if est is None:
            return self.timeout(addr)
        return min(self.timeout(addr), max(MIN_SOFT, 2 * est[0]))

    def forget(self, addr: tuple[str, int]) -> None:
        self._per.pop(addr, None)


@dataclass
class _Candidate:
    node: Node
    depth: int  # hops from our own table: 1 for our contacts
    state: str = "new"  # new -> asked (-> slow) -> answered | failed


class LookupState:
    """The bookkeeping of one lookup for ``target`` (a Node)."""

    def __init__(self, target: Node, seeds: list[Node], ksize: int, alpha: int) -> None:
        self.target = target
        self.ksize = ksize
        self.alpha = alpha
        self._cands: dict[bytes, _Candidate] = {}
        self.failed: set[bytes] = set()
        self.queried = 0
        self.max_depth = 0
        self.in_flight = 0
        self.slow_pending = 0  # requests past their soft timeout, not yet settled
        self.learn(seeds, 1)

    def learn(self, nodes: list[Node], depth: int) -> None:
        for node in nodes:
            if node.id in self.failed:
                continue
            known = self._cands.get(node.id)
            if known is None:
                self._cands[node.id] = _Candidate(node, depth)
            elif known.state == "new" and depth < known.depth:
                known.depth = depth

    def _closest_live(self) -> list[_Candidate]:
        # slow ones rank as if gone (a lookup does not wait on them) until they answer
        live = (c for c in self._cands.values() if c.state not in ("failed", "slow"))
        return heapq.nsmallest(self.ksize, live, key=lambda c: self.target.distance_to(c.node))

    def next(self) -> Node | None:
        """The next contact to ask, or None (wait for replies, or done)."""
        if self.in_flight >= self.alpha:
            return None
        for cand in self._closest_live():
            if cand.state == "new":
                cand.state = "asked"
                self.in_flight += 1
                self.queried += 1
                self.max_depth = max(self.max_depth, cand.depth)
                return cand.node
        return None

    def depth_of(self, node: Node) -> int:
        cand = self._cands.get(node.id)
        return cand.depth if cand is not None else 0

    def _settle(self, cand: _Candidate, state: str) -> None:
        if cand.state == "asked":
            self.in_flight -= 1
        elif cand.state == "slow":
            self.slow_pending -= 1
        cand.state = state
        if state == "slow":
            self.slow_pending += 1

    def slow(self, node: Node) -> None:
        """node's request outlived its soft timeout: free its slot; a late reply
        still counts."""
        cand = self._cands.get(node.id)
        if cand is not None and cand.state == "asked":
            self._settle(cand, "slow")

    def answered(self, node: Node, learnt: list[Node]) -> None:
        cand = self._cands[node.id]
        self._settle(cand, "answered")
        self.learn(learnt, cand.depth + 1)

    def failed_to_answer(self, node: Node) -> None:
        cand = self._cands.get(node.id)
        if cand is not None:
            self._settle(cand, "failed")
        self.failed.add(node.id)

    def done(self) -> bool:
        """True once the k closest live contacts have all answered; with fewer than
        k of them, only once no slow request may still bring more."""
        live = self._closest_live()
        if not all(c.state == "answered" for c in live):
            return False
        return len(live) >= self.ksize or self.slow_pending == 0

    def result(self) -> list[Node]:
        """The closest contacts that answered (at most k), nearest first."""
        return [c.node for c in self._closest_live() if c.state == "answered"]
