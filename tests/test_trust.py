"""Manifest voting, bans and the verdict after a round, alone (swarm/trust.py)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.trust import Action, Trust

HONEST = (b"h0", b"h1", b"h2")
LIES = [(b"x0", b"h1", b"h2"), (b"h0", b"y1", b"h2"), (b"z0", b"z1", b"z2")]


def test_majority_wins_and_partial_manifests_never_vote() -> None:
    said = {
        "a": HONEST,
        "b": HONEST,
        "c": LIES[0],
        "d": (None, None, b"q"),
        "e": (None, None, b"q"),
        "f": (None, None, b"q"),
    }
    t = Trust()
    assert t.vote(said) == HONEST
    t.banned |= {"a", "b"}
    assert t.vote(said) == LIES[0]
    t.banned.add("c")
    assert t.vote(said) is None


def test_ties_are_decided_alike_every_time() -> None:
    said = {"a": LIES[2], "b": HONEST}
    assert Trust().vote(said) == Trust().vote(dict(reversed(said.items()))) == HONEST


def test_agrees_and_vouchers() -> None:
    assert Trust.agrees((None, b"h1", None), HONEST)
    assert not Trust.agrees((None, b"y1", None), HONEST)
    assert not Trust.agrees((b"h0",), HONEST)  # a manifest for another cut
    assert Trust.agrees((b"zz",), None)
    assert Trust.vouchers({"a": HONEST, "b": LIES[1], "c": (None,) * 3}, HONEST) == {"a"}


def test_round_verdicts() -> None:
    t = Trust()
    assert t.after_round(restart=True, manifest_suspect=False) is Action.REPLAN
    assert t.after_round(restart=True, manifest_suspect=True) is Action.DISTRUST
    assert t.after_round(restart=False, manifest_suspect=False) is Action.CHECK
    ok = t.after_check(
        True, n_chunks=3, peer_chunks={0: "a"}, vouchers={"a"}, manifest_suspect=False
    )
    assert ok.action is Action.PUBLISH and not t.banned
    bad = t.after_check(
        False, n_chunks=3, peer_chunks={1: "a", 2: "b"}, vouchers={"c"}, manifest_suspect=False
    )
    assert bad.action is Action.DISTRUST
    assert bad.ban == {"a", "b", "c"} == t.banned
    assert bad.drop == (1, 2)  # what upstream gave is kept
    # Nothing came from peers: the whole file is suspect.
    assert Trust().after_check(
        False, n_chunks=3, peer_chunks={}, vouchers=(), manifest_suspect=False
    ).drop == (0, 1, 2)
    assert Trust.uses_peers(0, 4, True) and not Trust.uses_peers(3, 4, True)
    assert Trust.uses_peers(3, 4, False)  # no upstream: peers are all there is


@settings(max_examples=300, deadline=None)
@given(
    honest=st.integers(0, 6),
    liars=st.lists(st.integers(0, 3), min_size=len(LIES), max_size=len(LIES)),
    partial=st.integers(0, 3),
)
def test_rounds_remove_a_lie_each_until_the_truth_or_nothing(
    honest: int, liars: list[int], partial: int
) -> None:
    """Holders: ``honest`` with the true manifest, groups of liars each sending one
    consistent lie, and holders still downloading. Each round the vote wins, the whole
    file is checked (a lie fails), and the verdict bans the vouchers. The truth is
    reached (or nobody is left) within one round per lie, and no honest holder is ever
    banned."""
    said: dict[str, tuple[bytes | None, ...]] = {f"h{i}": HONEST for i in range(honest)}
    for k, n in enumerate(liars):
        said |= {f"l{k}.{i}": LIES[k] for i in range(n)}
    said |= {f"p{i}": (None, b"h1", None) for i in range(partial)}
    trust = Trust()
    for _ in range(len(LIES) + 1):
        trusted = trust.vote(said)
        if trusted is None or trusted == HONEST:
            break
        # Each voter of the winning manifest had at least as many votes as honesty.
        counts = Counter(d for p, d in said.items() if p not in trust.banned and None not in d)
        assert counts[trusted] >= counts[HONEST]
        verdict = trust.after_check(
            False,
            n_chunks=3,
            peer_chunks={0: next(iter(Trust.vouchers(said, trusted)))},
            vouchers=Trust.vouchers(said, trusted),
            manifest_suspect=False,
        )
        assert verdict.action is Action.DISTRUST
    final = trust.vote(said)
    assert final == (HONEST if honest else None)
    assert not any(p.startswith(("h", "p")) for p in trust.banned)
