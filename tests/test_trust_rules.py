"""The trust rules alone (hffs.trust): plain code, no I/O."""

from __future__ import annotations

import hashlib
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from hffs.config import Config
from hffs.daemon.hub_api import hub_error
from hffs.daemon.hub_headers import BadRange, Span, span_for
from hffs.hub import RemoteFile
from hffs.trust import (
    RELEARN_AFTER,
    Claim,
    Vouched,
    is_shared,
    may_send_token,
    may_stream_unchecked,
    pick_commit,
    redirect_allowed,
    upstream_verdict,
    visibility_from_info,
    visibility_of_listing,
    visibility_stale,
    vouch,
)

C1, C2 = "1" * 40, "2" * 40


def fid(n: int) -> str:
    return hashlib.sha256(b"%d" % n).hexdigest()


TRUTH = {f"f{i}.txt": (fid(i), i + 1) for i in range(6)}
PATHS = [*TRUTH, "modeling_evil.py", "config.json"]


def honest(host: str, paths: list[str]) -> Claim:
    return Claim(host, C1, {p: TRUTH[p] for p in paths})


@settings(max_examples=300, deadline=None)
@given(
    holdings=st.lists(st.lists(st.sampled_from(list(TRUTH)), unique=True), min_size=1, max_size=4),
    lies=st.dictionaries(
        st.sampled_from(PATHS), st.tuples(st.integers(100, 200).map(fid), st.integers(1, 9))
    ),
    liar_commit=st.sampled_from([C1, C2]),
    fetched_at=st.floats(allow_nan=False),
    ref=st.booleans(),
)
def test_one_liar_among_honest_peers_never_swaps_a_file(
    holdings: list[list[str]],
    lies: dict[str, tuple[str, int]],
    liar_commit: str,
    fetched_at: float,
    ref: bool,
) -> None:
    """Whatever one address claims, with at least two honest addresses answering, every
    file accepted is the true one (or the revision is refused as a whole)."""
    claims = [honest(f"10.0.0.{i}", paths) for i, paths in enumerate(holdings)]
    claims.append(honest("10.0.0.99", list(TRUTH)))  # honest peers: at least two
    claims.append(Claim("10.6.6.6", liar_commit, lies, fetched_at))
    v = vouch("main" if ref else C1, claims, private_swarm=False)
    if isinstance(v, Vouched):
        assert v.commit == C1
        for path, entry in v.files.items():
            assert TRUTH[path] == entry, path


def test_agreement_rules() -> None:
    a = honest("10.0.0.1", ["f0.txt", "f1.txt"])
    b = honest("10.0.0.2", ["f0.txt"])
    # f1.txt: one address of two: not vouched for; f0.txt: both agree
    v = vouch(C1, [a, b], private_swarm=False)
    assert isinstance(v, Vouched) and set(v.files) == {"f0.txt"} and v.refused == {"f1.txt"}
    assert v.basis == "peers" and v.hosts == ("10.0.0.1", "10.0.0.2")
    assert "at least 2 of 2 addresses" in v.describe()
    # ... unless the swarm is private (its members hold the secret)
    v = vouch(C1, [a, b], private_swarm=True)
    assert isinstance(v, Vouched) and set(v.files) == {"f0.txt", "f1.txt"}
    # the only holder: taken, and said so
    v = vouch(C1, [a], private_swarm=False)
    assert isinstance(v, Vouched) and v.basis == "one peer" and "ONE peer" in v.describe()
    # two daemons on one address are one voice
    a2 = Claim("10.0.0.1", C1, {"f1.txt": TRUTH["f1.txt"]})
    v = vouch(C1, [a, a2, b], private_swarm=False)
    assert isinstance(v, Vouched) and "f1.txt" in v.refused
    # an address that contradicts itself is dropped altogether
    liar = Claim("10.0.0.1", C1, {"f0.txt": (fid(50), 1)})
    v = vouch(C1, [a, liar, b], private_swarm=False)
    assert isinstance(v, Vouched) and v.basis == "one peer" and v.hosts == ("10.0.0.2",)
    # two ids for one path: the one more addresses list, if at least two do
    c = Claim("10.0.0.3", C1, {"f0.txt": (fid(51), 1)})
    v = vouch(C1, [a, b, c], private_swarm=False)
    assert isinstance(v, Vouched) and v.files == {"f0.txt": TRUTH["f0.txt"]}
    d = Claim("10.0.0.4", C1, {"f0.txt": (fid(51), 1)})
    assert isinstance(vouch(C1, [a, b, c, d], private_swarm=False), str)  # a tie: neither
    # this machine's own cache is never overruled, and its ids are not "from peers"
    mine = Claim(None, C1, {"f0.txt": TRUTH["f0.txt"], "f5.txt": TRUTH["f5.txt"]})
    v = vouch(C1, [mine, c], private_swarm=False)
    assert isinstance(v, Vouched) and v.files["f0.txt"] == TRUTH["f0.txt"]
    assert TRUTH["f5.txt"][0] not in v.peer_ids


def test_a_ref_is_never_decided_by_a_claimed_date() -> None:
    a, b = Claim("10.0.0.1", C1, {"x": TRUTH["f0.txt"]}), Claim("10.0.0.2", C1, {})
    late = Claim("10.6.6.6", C2, {"x": TRUTH["f1.txt"]}, fetched_at=1e300)
    assert pick_commit("main", [a, b, late], private_swarm=False)[0] == C1
    commit, why = pick_commit("main", [a, late], private_swarm=False)
    assert commit is None and "disagree" in why  # one against one: refused
    assert pick_commit("main", [a, late], private_swarm=True)[0] == C2  # members: newest
    mine = Claim(None, C2, {})
    assert pick_commit("main", [a, b, mine], private_swarm=False)[0] == C2  # our own ref
    assert pick_commit(C2, [a, b], private_swarm=False)[0] == C2  # a commit is itself


def test_visibility_and_sharing() -> None:
    assert visibility_from_info(200, {"id": "a/b", "private": False, "gated": False}) == "public"
    assert visibility_from_info(200, {"id": "a/b", "gated": "manual"}) == "private"
    assert visibility_from_info(401, None) == visibility_from_info(404, None) == "private"
    for status in (429, 500, 502, 508):
        assert visibility_from_info(status, None) is None
    assert visibility_from_info(200, ["not", "info"]) is None
    assert visibility_of_listing(False, {"private": False}) is None  # a token saw it
    assert visibility_of_listing(True, {"private": False}) == "public"
    assert visibility_of_listing(False, {"private": True}) == "private"
    assert is_shared("public", False) and not is_shared(None, False)
    assert not is_shared("private", False) and is_shared(None, True)


def test_what_is_known_public_is_asked_again_once_old() -> None:
    now = 1_000_000.0
    assert visibility_stale("public", None, now)
    assert visibility_stale("public", now - RELEARN_AFTER, now)
    assert not visibility_stale("public", now - RELEARN_AFTER + 1, now)
    for vis in ("private", None):  # unknown is asked anyway; private stays unshared
        assert not visibility_stale(vis, now - 10 * RELEARN_AFTER, now)


def test_tokens_go_to_the_hub_and_named_endpoints_only(monkeypatch: object) -> None:
    import os

    named = Config(home=__import__("pathlib").Path("/nonexistent")).named_endpoints()
    if not os.environ.get("HFFS_ENDPOINTS") and not os.environ.get("HF_ENDPOINT"):
        assert named == []
    assert may_send_token("https://huggingface.co", [])
    assert not may_send_token("https://hf-mirror.com", [])  # the built-in default mirror
    assert may_send_token("https://hf-mirror.com/", ["https://hf-mirror.com"])
    assert not may_send_token("http://huggingface.co", [])  # not in clear
    assert not may_send_token("https://huggingface.co.evil.com", [])


def test_upstream_verdicts() -> None:
    assert upstream_verdict(200) == upstream_verdict(404) == "answer"
    assert upstream_verdict(429) == upstream_verdict(508) == "answer"  # a client can cause them
    assert upstream_verdict(500) == upstream_verdict(503) == "unreachable"
    # a timeout after connecting (504) or a refused redirect (502) stands for an answer
    assert upstream_verdict(504, final=True) == upstream_verdict(502, final=True) == "answer"


def test_redirects() -> None:
    up = ["https://mirror.example", "http://127.0.0.1:8000"]
    ok = [
        ("https://mirror.example/a", "https://mirror.example/b"),
        ("https://mirror.example/a", "https://cdn-lfs.huggingface.co/x"),
        ("https://mirror.example/a", "https://cas-bridge.xethub.hf.co/x"),
        ("https://cdn-lfs.huggingface.co/x", "https://cdn-lfs-us-1.hf.co/y"),
        ("http://127.0.0.1:8000/a", "http://127.0.0.1:8001/cdn"),  # a local upstream's own CDN
    ]
    refused = [
        ("https://mirror.example/a", "http://mirror.example/b"),  # downgraded
        ("https://mirror.example/a", "https://evil.example/x"),
        ("https://mirror.example/a", "http://127.0.0.1:6379/"),  # into the local network
        ("https://mirror.example/a", "https://10.0.0.1/x"),
        ("https://mirror.example/a", "https://localhost/x"),
        ("https://mirror.example/a", "http://cdn-lfs.huggingface.co/x"),  # not https
        ("http://127.0.0.1:8000/a", "http://127.0.0.2:80/"),  # another local host
        ("http://127.0.0.5:9009/v1/blobs/x", "http://127.0.0.5:9009/y"),  # a peer: never
        ("https://mirror.example/a", "https://user:pw@mirror.example/b"),
        ("https://mirror.example/a", "file:///etc/passwd"),
    ]
    for cur, tgt in ok:
        assert redirect_allowed(cur, tgt, up), (cur, tgt)
    for cur, tgt in refused:
        assert not redirect_allowed(cur, tgt, up), (cur, tgt)


def test_a_huge_range_and_a_non_latin1_name_are_4xx_not_500() -> None:
    f = RemoteFile("a.bin", 100, fid(1), True)
    for header in ("bytes=" + "9" * 5000 + "-", "bytes=0-" + "9" * 5000, "bytes=-" + "9" * 5000):
        got = span_for(header, f, {})
        assert isinstance(got, BadRange) and got.headers["Content-Range"] == "bytes */100"
    got = span_for("bytes=10-19", f, {})
    assert isinstance(got, Span) and (got.status, got.start, got.end) == (206, 10, 20)
    resp = hub_error(404, None, "no peer holds 模型/données.bin")
    resp.raw_headers  # noqa: B018  (encodes the headers: raised UnicodeEncodeError before)
    assert "模型" in json.loads(bytes(resp.body))["error"]


@given(st.booleans(), st.integers(0, 10), st.booleans(), st.booleans())
def test_peer_bytes_stream_unchecked_only_when_peers_may_vouch(
    from_upstream: bool, hosts: int, has_upstream: bool, private: bool
) -> None:
    """A chunk checked against ONE address's manifest waits for the whole-file check (or
    upstream's word) while upstream can vouch; upstream's bytes, a quorum's manifest, a
    private swarm, or a revision only peers listed stream at once."""
    ok = may_stream_unchecked(from_upstream, hosts, has_upstream, private)
    assert ok == (from_upstream or private or not has_upstream or hosts >= 2)
    assert not may_stream_unchecked(False, 1, True, False)  # the lone-forger case
