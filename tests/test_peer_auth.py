"""The swarm's request signatures (swarm.peer_auth), rule by rule, without I/O."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.peer_auth import (
    WINDOW,
    ReplayGuard,
    Signer,
    Verifier,
    derive_key,
    dest_of,
    parse_authorization,
    sign,
)

SECRET = "correct horse battery staple"
DEST = ("10.0.0.7", 9009)
T0 = 1_800_000_000.0


_COUNTER = itertools.count()  # distinct nonces across signers, as random ones are


def signer(secret: str = SECRET, at: float = T0) -> Signer:
    counter = _COUNTER
    return Signer(secret, clock=lambda: at, nonce=lambda n: next(counter).to_bytes(n, "big"))


def test_a_signed_request_is_accepted_once() -> None:
    v = Verifier(SECRET)
    header = signer().authorization("GET", b"/v1/blobs/ab?x=1", DEST)
    assert header is not None and SECRET not in header
    assert v.check(header, "GET", b"/v1/blobs/ab?x=1", DEST, T0)
    assert not v.check(header, "GET", b"/v1/blobs/ab?x=1", DEST, T0)  # the replay
    assert not v.check(header, "GET", b"/v1/blobs/ab?x=1", DEST, T0 + 1)


@pytest.mark.parametrize(
    ("method", "target", "dest"),
    [
        ("HEAD", b"/v1/blobs/ab?x=1", DEST),  # another method
        ("GET", b"/v1/blobs/ab?x=2", DEST),  # another query
        ("GET", b"/v1/blobs/cd?x=1", DEST),  # another path
        ("GET", b"/v1/blobs/ab?x=1", ("10.0.0.8", 9009)),  # another server
        ("GET", b"/v1/blobs/ab?x=1", ("10.0.0.7", 9010)),  # another port of it
        ("GET", b"/v1/blobs/ab?x=1", None),  # a listener that is not on an IP
    ],
)
def test_a_signature_is_bound_to_what_it_signed(
    method: str, target: bytes, dest: tuple[str, int] | None
) -> None:
    header = signer().authorization("GET", b"/v1/blobs/ab?x=1", DEST)
    v = Verifier(SECRET)
    assert not v.check(header, method, target, dest, T0)
    assert v.check(header, "GET", b"/v1/blobs/ab?x=1", DEST, T0)  # not spent by the refusals


def test_ipv4_and_its_mapped_ipv6_are_one_address() -> None:
    # A dual-stack listener names an IPv4 client's destination ::ffff:a.b.c.d.
    header = signer().authorization("GET", b"/v1/ping", DEST)
    assert Verifier(SECRET).check(header, "GET", b"/v1/ping", ("::ffff:10.0.0.7", 9009), T0)


def test_the_wrong_secret_and_forged_headers_prove_nothing() -> None:
    v = Verifier(SECRET)
    assert not v.check(signer("guess").authorization("GET", b"/", DEST), "GET", b"/", DEST, T0)
    for header in (None, "", f"Bearer {SECRET}", SECRET, "HFFS-HMAC-SHA256 t=1,n=00,m=00"):
        assert not v.check(header, "GET", b"/", DEST, T0)
    good = signer().authorization("GET", b"/", DEST)
    assert good is not None
    stamp, nonce, _mac = parse_authorization(good)  # type: ignore[misc]
    flipped = good[:-1] + ("0" if good[-1] != "0" else "1")
    assert not v.check(flipped, "GET", b"/", DEST, T0)
    later = sign(derive_key(SECRET), "GET", b"/", DEST, stamp, nonce).replace(
        f"t={stamp}", f"t={stamp + 1}"
    )
    assert not v.check(later, "GET", b"/", DEST, T0)  # the stamp is under the MAC


def test_stale_and_future_stamps_are_refused() -> None:
    v = Verifier(SECRET)
    for skew in (-WINDOW - 1, WINDOW + 1):
        header = signer(at=T0 + skew).authorization("GET", b"/", DEST)
        assert not v.check(header, "GET", b"/", DEST, T0)
    for skew in (-WINDOW + 1, WINDOW - 1):
        header = signer(at=T0 + skew).authorization("GET", b"/", DEST)
        assert v.check(header, "GET", b"/", DEST, T0)


def test_a_replay_after_the_window_is_refused_though_its_nonce_is_forgotten() -> None:
    v = Verifier(SECRET)
    header = signer().authorization("GET", b"/", DEST)
    assert v.check(header, "GET", b"/", DEST, T0)
    # a fresh request, later, makes the guard forget the first nonce
    later = signer(at=T0 + WINDOW + 5).authorization("GET", b"/x", DEST)
    assert v.check(later, "GET", b"/x", DEST, T0 + WINDOW + 5)
    assert len(v.replays) == 1
    assert not v.check(header, "GET", b"/", DEST, T0 + WINDOW + 5)


def test_no_secret_signs_nothing_and_an_empty_one_is_refused() -> None:
    assert Signer(None).authorization("GET", b"/", DEST) is None
    assert not Signer("").enabled
    with pytest.raises(ValueError):
        Verifier("")


def test_dest_of_socket_names() -> None:
    assert dest_of(("127.0.0.1", 9009)) == ("127.0.0.1", 9009)
    assert dest_of(("::1", 9009, 0, 0)) == ("::1", 9009)
    assert dest_of(("fe80::1%lo", 9009, 0, 1)) == ("fe80::1", 9009)
    for bad in (None, "/tmp/sock", ("name", 1), ("127.0.0.1", "1"), ()):
        assert dest_of(bad) is None


# -- the nonce memory ---------------------------------------------------------------------


def test_the_nonce_memory_is_bounded_and_still_refuses_what_it_forgot() -> None:
    guard = ReplayGuard(window=WINDOW, limit=100)
    now = T0
    for i in range(1000):
        assert guard.admit(int(now * 1000) + i, i.to_bytes(16, "big"), now)
        assert len(guard) <= 100
    # the first ones are forgotten, yet refused: their stamps are under the floor
    assert not guard.admit(int(now * 1000), (0).to_bytes(16, "big"), now)
    assert guard.admit(int(now * 1000) + 5000, b"n" * 16, now)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 300_000),  # the request's stamp, ms after T0
            st.integers(0, 40),  # its nonce (few values: many repeats)
            st.integers(0, 300_000),  # when it arrives, ms after T0
        ),
        max_size=120,
    ),
    st.integers(1, 16),
)
def test_no_nonce_is_ever_admitted_twice_and_memory_stays_bounded(
    offers: list[tuple[int, int, int]], limit: int
) -> None:
    guard = ReplayGuard(window=60.0, limit=limit)
    base = int(T0 * 1000)
    admitted: set[tuple[int, bytes]] = set()
    clock = 0
    for stamp, n, arrives in offers:
        clock = max(clock, arrives)  # the server's clock moves forward
        nonce = n.to_bytes(16, "big")
        ok = guard.admit(base + stamp, nonce, (base + clock) / 1000)
        if ok:
            assert abs(stamp - clock) <= 60_000  # only inside the window
            # a replay is the same header: the same stamp and nonce (the MAC covers both)
            assert (stamp, nonce) not in admitted
            admitted.add((stamp, nonce))
        assert len(guard) <= limit
