"""Provider records alone: no network, no clock (every call is given ``now``)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.providers import (
    Provider,
    ProviderStore,
    merge,
    normalize_host,
    valid_host,
    valid_key,
    valid_port,
)

K1, K2, K3 = b"\x01" * 20, b"\x02" * 20, b"\x03" * 20


def test_add_get_freshest_first() -> None:
    s = ProviderStore(ttl=100)
    assert s.add(K1, "10.0.0.1", 80, now=0)
    assert s.add(K1, "10.0.0.2", 80, now=5)
    assert s.add(K1, "10.0.0.3", 81, now=3)
    got = s.get(K1, now=6)
    assert [p.host for p in got] == ["10.0.0.2", "10.0.0.3", "10.0.0.1"]
    assert got[0] == Provider("10.0.0.2", 80, 105)
    assert got[0].ttl(6) == 99 and got[0].addr == ("10.0.0.2", 80)
    assert s.get(K2, now=6) == []
    assert len(s.get(K1, now=6, limit=2)) == 2


def test_holders_merge_never_overwrite_and_reannounce_extends() -> None:
    s = ProviderStore(ttl=10)
    for host in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        s.add(K1, host, 9000, now=0)
    assert len(s.get(K1, now=1)) == 3
    s.add(K1, "10.0.0.1", 9000, now=8)  # re-announce
    assert [p.host for p in s.get(K1, now=11)] == ["10.0.0.1"]
    assert s.entries == 3  # expired entries stay until expire()
    assert s.expire(now=11) == 2
    assert s.entries == 1


def test_one_record_per_address_the_last_port_wins() -> None:
    s = ProviderStore()
    s.add(K1, "10.0.0.1", 80, now=0)
    s.add(K1, "10.0.0.1", 81, now=1)
    assert s.get(K1, now=1) == [Provider("10.0.0.1", 81, 1801)]
    assert s.entries == 1 and s.host_records("10.0.0.1") == 1
    assert not s.remove(K1, "10.0.0.1", 80) and s.remove(K1, "10.0.0.1", 81)
    assert s.entries == 0 and s.host_records("10.0.0.1") == 0 and K1 not in s


def test_one_address_on_64_ports_cannot_evict_the_honest_holder() -> None:
    """The eclipse the issue found: 64 announcements from one address, one per port,
    used to fill the key and evict the honest record expiring first."""
    s = ProviderStore(max_per_key=64)
    s.add(K1, "10.0.0.7", 9009, now=0)  # honest, announced first: expires first
    for port in range(20000, 20064):
        s.add(K1, "10.6.6.6", port, now=1)
    assert {p.host for p in s.get(K1, now=2)} == {"10.0.0.7", "10.6.6.6"}


def test_flood_from_one_address_churns_only_its_own_records() -> None:
    s = ProviderStore(max_per_host=1000)
    honest = [bytes([1, i]) + b"\0" * 18 for i in range(200)]
    for i, key in enumerate(honest):
        s.add(key, f"10.0.{i % 3}.1", 9009, now=0)
    for i in range(50_000):
        s.add(i.to_bytes(4, "big") + b"\xee" * 16, "10.6.6.6", 9009, now=1 + i / 1e4)
    assert s.host_records("10.6.6.6") == 1000
    assert all(s.get(key, now=10) for key in honest)
    assert s.entries == 1200 and len(s) == 1200
    # the flooder's newest records are the ones kept
    assert s.get((49_999).to_bytes(4, "big") + b"\xee" * 16, now=10)


def test_expiry_exact_boundary_and_key_removal() -> None:
    s = ProviderStore(ttl=10)
    s.add(K1, "10.0.0.1", 80, now=0)
    assert s.get(K1, now=9.999)
    assert s.get(K1, now=10) == []
    s.expire(now=10)
    assert K1 not in s and len(s) == 0


def test_ttl_is_capped_by_the_store() -> None:
    s = ProviderStore(ttl=10)
    s.add(K1, "10.0.0.1", 80, now=0, ttl=10_000)
    assert s.get(K1, now=0)[0].expires_at == 10
    assert s.add(K1, "10.0.0.2", 80, now=0, ttl=2)
    assert not s.add(K1, "10.0.0.3", 80, now=0, ttl=0)
    assert not s.add(K1, "10.0.0.3", 80, now=0, ttl=math.nan)


def test_per_key_cap_keeps_the_freshest() -> None:
    s = ProviderStore(ttl=100, max_per_key=3)
    for i in range(3):
        s.add(K1, f"10.0.0.{i}", 80, now=i)
    assert not s.add(K1, "10.0.0.9", 80, now=0, ttl=50)  # would expire first: refused
    assert s.add(K1, "10.0.0.9", 80, now=10)  # evicts 10.0.0.0 (expires at 100)
    assert {p.host for p in s.get(K1, now=10)} == {"10.0.0.1", "10.0.0.2", "10.0.0.9"}
    assert s.entries == 3


def test_key_cap_evicts_least_recently_announced() -> None:
    s = ProviderStore(max_keys=2)
    s.add(K1, "10.0.0.1", 80, now=0)
    s.add(K2, "10.0.0.1", 80, now=1)
    s.add(K1, "10.0.0.2", 80, now=2)  # K1 is now the most recent
    s.add(K3, "10.0.0.1", 80, now=3)
    assert set(s.keys()) == {K1, K3}
    assert s.entries == 3


def test_entry_cap() -> None:
    s = ProviderStore(max_entries=4, max_per_key=4)
    for i, key in enumerate((K1, K2, K3)):
        s.add(key, "10.0.0.1", 80, now=i)
        s.add(key, "10.0.0.2", 80, now=i)
    assert s.entries <= 4
    assert K3 in s


def test_invalid_input_refused() -> None:
    s = ProviderStore()
    assert not s.add(b"short", "10.0.0.1", 80, now=0)
    assert not s.add(K1, "example.com", 80, now=0)
    assert not s.add(K1, "10.0.0.1", 0, now=0)
    assert not s.add(K1, "10.0.0.1", True, now=0)  # type: ignore[arg-type]
    assert len(s) == 0
    with pytest.raises(ValueError):
        ProviderStore(ttl=0)


def test_remove() -> None:
    s = ProviderStore()
    s.add(K1, "10.0.0.1", 80, now=0)
    assert s.remove(K1, "10.0.0.1", 80)
    assert not s.remove(K1, "10.0.0.1", 80)
    assert len(s) == 0 and s.entries == 0


@pytest.mark.parametrize(
    ("host", "norm"),
    [
        ("127.0.0.2", "127.0.0.2"),
        ("::1", "::1"),
        ("0:0:0:0:0:0:0:1", "::1"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("fe80::1", "fe80::1"),
        ("fe80::1%eth0", None),
        ("0.0.0.0", None),
        ("::", None),
        ("224.0.0.1", None),
        ("255.255.255.255", None),
        ("localhost", None),
        ("10.0.0.1 ", None),
        ("", None),
        (b"10.0.0.1", None),
        (None, None),
        ("1" * 100, None),
    ],
)
def test_normalize_host(host: object, norm: str | None) -> None:
    assert normalize_host(host) == norm
    assert valid_host(host) is (norm is not None)


def test_port_and_key_validation() -> None:
    assert valid_port(1) and valid_port(65535)
    for bad in (0, 65536, -1, True, 80.0, "80", None):
        assert not valid_port(bad)
    assert valid_key(b"\0" * 20)
    for bad in (b"\0" * 19, b"\0" * 21, "a" * 20, bytearray(20), None):
        assert not valid_key(bad)


def test_store_dedupes_host_spellings() -> None:
    s = ProviderStore()
    s.add(K1, "::ffff:10.0.0.1", 80, now=0)
    s.add(K1, "10.0.0.1", 80, now=1)
    assert [p.host for p in s.get(K1, now=1)] == ["10.0.0.1"]


# -- properties ---------------------------------------------------------------

hosts = st.sampled_from([f"10.0.0.{i}" for i in range(1, 12)] + ["::1", "fd00::5"])
ports = st.integers(1, 4)
keys = st.sampled_from([K1, K2, K3, b"\x04" * 20])
times = st.floats(0, 1000, allow_nan=False)
providers = st.builds(Provider, hosts, ports, times)
ops = st.lists(
    st.tuples(keys, hosts, ports, times, st.one_of(st.none(), st.floats(0.1, 500))),
    max_size=120,
)


@settings(max_examples=200, deadline=None)
@given(
    ops=ops,
    now=times,
    per_key=st.integers(1, 6),
    max_keys=st.integers(1, 4),
    per_host=st.integers(1, 5),
)
def test_caps_respected_and_never_expired(ops, now, per_key, max_keys, per_host) -> None:
    s = ProviderStore(
        ttl=300, max_per_key=per_key, max_keys=max_keys, max_entries=10, max_per_host=per_host
    )
    for key, host, port, t, ttl in sorted(ops, key=lambda o: o[3]):
        s.add(key, host, port, now=t, ttl=ttl)
        assert len(s) <= max_keys
        assert s.entries <= 10
        every = [p for k in s for p in s.get(k, -1e9, limit=None)]
        for h in {p.host for p in every}:
            assert s.host_records(h) == sum(p.host == h for p in every) <= per_host
        for k in s:
            got = s.get(k, -1e9, limit=None)
            assert len({p.host for p in got}) == len(got)  # one record per address
        assert s.entries == sum(len(s.get(k, -1e9, limit=None)) for k in s)
        for k in s:
            assert len(s.get(k, -1e9, limit=None)) <= per_key
    for k in s:
        got = s.get(k, now, limit=None)
        assert all(p.expires_at > now for p in got)
        assert [p.expires_at for p in got] == sorted((p.expires_at for p in got), reverse=True)
        assert len({p.addr for p in got}) == len(got)
        assert s.get(k, now, limit=2) == got[:2]
    s.expire(now)
    assert all(p.expires_at > now for k in s for p in s.get(k, -1e9, limit=None))


@given(st.lists(providers, max_size=15), st.lists(providers, max_size=15))
def test_merge_commutative(a, b) -> None:
    assert merge(a, b) == merge(b, a)


@given(st.lists(providers, max_size=15), st.lists(providers, max_size=15))
def test_merge_idempotent_and_keeps_latest(a, b) -> None:
    m = merge(a, b)
    assert merge(m, m) == m == merge(m) == merge(a, b, a, b)
    assert len({p.addr for p in m}) == len(m)
    for p in a + b:
        assert any(q.addr == p.addr and q.expires_at >= p.expires_at for q in m)


@given(st.lists(providers, max_size=10), st.lists(providers, max_size=10), st.lists(providers))
def test_merge_associative(a, b, c) -> None:
    assert merge(merge(a, b), c) == merge(a, merge(b, c))
