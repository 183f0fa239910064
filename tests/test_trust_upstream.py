"""Issue 9, the HF endpoint and upstream side, run as attacks against real daemons:
what is shared (item 4), access-check bypasses (item 5), where tokens go (item 9),
upstream redirects (item 10), malformed requests (item 12)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from huggingface_hub import hf_hub_download
from typer.testing import CliRunner

import hffs.config
from hffs.cache import HubCache
from hffs.cli import app
from hffs.visibility import VisibilityStore
from tests.hostile import FakePeer, RawHostile
from tests.localhub import LocalHub
from tests.nodes import Node, wait_for

TOKEN = "hf_owner_token"
PRIVATE, PUBLIC = "org/private-w", "org/public-w"
SECRET = b"PRIVATE-WEIGHTS-" * 5000
OPEN = b"public-weights--" * 5000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def online(node: Node, upstream: str) -> Node:
    node.env["HFFS_ENDPOINTS"] = upstream
    node.env.pop("HF_HUB_OFFLINE", None)
    return node


def hub_with_repos() -> tuple[LocalHub, dict[str, str]]:
    hub = LocalHub(tokens=[TOKEN], lfs_threshold=1000).start()
    commits = {
        PRIVATE: hub.add_repo(PRIVATE, {"w.bin": SECRET, "config.json": b"{}\n"}, private=True),
        PUBLIC: hub.add_repo(PUBLIC, {"p.bin": OPEN}),
    }
    return hub, commits


def hf_tools_fetch(node: Node, hub: LocalHub) -> None:
    """What HF tools did before hffs ran: both repos, with the owner's token."""
    for repo, name in ((PRIVATE, "w.bin"), (PUBLIC, "p.bin")):
        hf_hub_download(repo, name, endpoint=hub.url, cache_dir=node.hub, token=TOKEN)


# -- item 4: what is shared -------------------------------------------------------------


def test_what_hf_tools_fetched_with_a_token_is_shared_only_if_upstream_says_public(
    nodes: Callable[[str], Node],
) -> None:
    hub, commits = hub_with_repos()
    try:
        x = online(nodes("127.0.0.2"), hub.url)
        hf_tools_fetch(x, hub)
        assert x.start().returncode == 0
        y = nodes("127.0.0.3")  # its upstream is down: only peers can help it
        assert y.cli("peer", "add", x.host, "--port", str(x.port)).returncode == 0
        assert y.start("--bootstrap", f"{x.host}:{x.port}").returncode == 0

        with httpx.Client(trust_env=False, timeout=20) as http:
            # X asks upstream anonymously about what it found, then shares the public repo
            wait_for(
                lambda: http.get(f"{x.url}/v1/blobs/{sha(OPEN)}/have").status_code == 200,
                30,
                "X to learn that the public repo is public",
            )
            assert VisibilityStore(x.home).get("model", PRIVATE) == "private"
            for path in (f"/v1/blobs/{sha(SECRET)}", f"/v1/blobs/{sha(SECRET)}/manifest"):
                r = http.get(x.url + path, headers={"Range": "bytes=0-99"})
                assert r.status_code == 404 and SECRET[:16] not in r.content
            listing = http.get(f"{x.url}/v1/repos/model/{PRIVATE}/{commits[PRIVATE]}")
            assert listing.status_code == 404 and sha(SECRET).encode() not in listing.content
        assert (x.host, x.port) not in y.client().find_providers(sha(SECRET))

        r = y.cli("model", "add", PUBLIC, "--revision", commits[PUBLIC])
        assert r.returncode == 0, r.stderr
        assert HubCache(y.hub).find_blob(sha(OPEN)) is not None
        r = y.cli("model", "add", PRIVATE, "--revision", commits[PRIVATE])
        assert r.returncode != 0
        assert HubCache(y.hub).find_blob(sha(SECRET)) is None
        assert not any(SECRET[:16] in p.read_bytes() for p in (y.home / "partial").glob("*"))
    finally:
        hub.stop()


# -- item 5: the access check cannot be switched off by the caller -----------------------


def test_hop_header_and_rate_limit_are_refusals_not_outages(nodes: Callable[[str], Node]) -> None:
    """X holds the private file (HF tools fetched it with a token); its upstream is a
    gateway daemon G in front of the hub. An anonymous caller provokes a 508 (hop header)
    or a 429 (the hub's anonymous quota): neither may make X serve the file unchecked."""
    hub, commits = hub_with_repos()
    try:
        g = online(nodes("127.0.0.2"), hub.url)
        assert g.start().returncode == 0
        x = online(nodes("127.0.0.3"), g.url)
        hf_tools_fetch(x, hub)
        assert x.start().returncode == 0
        url = f"{x.url}/{PRIVATE}/resolve/{{}}/w.bin"
        with httpx.Client(trust_env=False, timeout=30) as http:
            hub.inject("5xx", status=429, api=True)  # the anonymous quota is spent
            r = http.get(url.format("main"))
            assert r.status_code == 429 and SECRET[:16] not in r.content
            r = http.head(url.format("main"))
            assert r.status_code == 429 and "x-repo-commit" not in r.headers
            hub.clear_faults()
            for rev, hops in ((commits[PRIVATE], "3"), ("refs%2Fpr%2F1", "2")):
                r = http.get(url.format(rev), headers={"X-HFFS-Hops": hops})
                assert r.status_code >= 400 and SECRET[:16] not in r.content, r.status_code
            ok = http.get(
                url.format(commits[PRIVATE]), headers={"authorization": f"Bearer {TOKEN}"}
            )
            assert (ok.status_code, ok.content) == (200, SECRET)  # the owner still gets it
    finally:
        hub.stop()


# -- item 9: where tokens go ---------------------------------------------------------------


def test_an_upstream_that_never_answers_is_a_refusal_not_an_outage(
    nodes: Callable[[str], Node],
) -> None:
    """X's upstream accepts connections and never answers. A timeout must not pass for
    "upstream unreachable": X's cache holds a private file (fetched with a token by HF
    tools) and a public one, and neither is served while the upstream is there, silent.
    Only a real outage (nothing listens) lets the cache answer, and then only for what is
    known public."""
    hub, commits = hub_with_repos()
    x = nodes("127.0.0.2")
    try:
        hf_tools_fetch(x, hub)
    finally:
        hub.stop()
    VisibilityStore(x.home).record("model", PUBLIC, "public", [sha(OPEN)])
    private = f"{x.url}/{PRIVATE}/resolve/{commits[PRIVATE]}/w.bin"
    public = f"{x.url}/{PUBLIC}/resolve/{commits[PUBLIC]}/p.bin"
    with RawHostile("127.0.0.9", "silent") as silent:
        assert online(x, silent.url).start().returncode == 0
        with httpx.Client(trust_env=False, timeout=90) as http:
            for url, data in ((private, SECRET), (public, OPEN)):
                r = http.get(url)
                assert r.status_code >= 400 and data[:16] not in r.content, (url, r.status_code)
            r = http.get(f"{x.url}/v1/blobs/{sha(SECRET)}", headers={"Range": "bytes=0-99"})
            assert r.status_code == 404 and SECRET[:16] not in r.content
            # the API proxy too: upstream's silence is relayed, the cache does not answer
            r = http.get(f"{x.url}/api/models/{PUBLIC}/revision/{commits[PUBLIC]}")
            assert r.status_code == 504 and sha(OPEN).encode() not in r.content, r.status_code
        assert silent.requests, "the daemon never asked its upstream"
        assert x.cli("daemon", "stop").returncode == 0
    # Now nothing listens there: an outage. The public file is served from the cache,
    # the private one still is not (its visibility was never learnt: not public).
    assert x.start().returncode == 0
    with httpx.Client(trust_env=False, timeout=60) as http:
        r = http.get(public)
        assert (r.status_code, r.content) == (200, OPEN)
        r = http.get(private)
        assert r.status_code >= 400 and SECRET[:16] not in r.content
    assert VisibilityStore(x.home).get("model", PRIVATE) != "public"


def test_the_token_never_goes_to_the_built_in_mirror(
    hffs_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """HF_ENDPOINT (named by the user) answers metadata but fails every file body; the
    built-in default mirror serves the chunks, anonymously."""
    with LocalHub(tokens=[TOKEN]) as named, LocalHub() as mirror:
        for h in (named, mirror):
            h.add_repo(PUBLIC, {"p.bin": OPEN})
        named.inject("5xx")  # file bodies only
        monkeypatch.setattr(hffs.config, "DEFAULT_ENDPOINTS", (mirror.url,))
        monkeypatch.delenv("HFFS_ENDPOINTS")
        monkeypatch.setenv("HF_ENDPOINT", named.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        result = CliRunner().invoke(app, ["model", "add", PUBLIC])
        assert result.exit_code == 0, result.output
        assert mirror.bytes_served >= len(OPEN)
        assert mirror.auth_log and all(auth is None for _, auth in mirror.auth_log)
        assert any(auth == f"Bearer {TOKEN}" for _, auth in named.auth_log)


def test_the_daemon_spends_no_token_of_its_own_on_anonymous_callers(
    nodes: Callable[[str], Node], tmp_path: Path
) -> None:
    with LocalHub(tokens=[TOKEN]) as hub:
        hub.add_repo(PUBLIC, {"p.bin": OPEN})
        x = online(nodes("127.0.0.2"), hub.url)
        x.env["HF_TOKEN"] = TOKEN  # the daemon's owner is logged in
        assert x.start().returncode == 0
        path = hf_hub_download(
            PUBLIC, "p.bin", endpoint=x.url, cache_dir=tmp_path / "c", token=False
        )
        assert Path(path).read_bytes() == OPEN
        assert hub.bytes_served == len(OPEN)
        assert hub.auth_log and all(auth is None for _, auth in hub.auth_log)


# -- item 10: upstream redirects -------------------------------------------------------------


class Redirector:
    """ASGI middleware for a LocalHub: repo ``org/redirected``'s API and every resolve
    answer with a redirect into another loopback host (an internal service)."""

    def __init__(self, app: Any, target: str) -> None:
        self.app, self.target = app, target

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and ("/resolve/" in path or "org/redirected" in path):
            headers = [(b"location", self.target.encode()), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 302, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)


def test_upstream_redirects_into_the_local_network_are_not_followed(
    nodes: Callable[[str], Node],
) -> None:
    internal = b"INTERNAL-ONLY " * 10
    with FakePeer("127.0.0.6", "0" * 64, internal) as service:
        target = f"http://127.0.0.6:{service.port}/v1/blobs/{'0' * 64}"
        with LocalHub() as hub:
            hub.add_repo(PUBLIC, {"p.bin": OPEN})
            hub.app.add_middleware(Redirector, target=target)
            x = online(nodes("127.0.0.2"), hub.url)
            assert x.start().returncode == 0
            with httpx.Client(trust_env=False, timeout=30) as http:
                api = http.get(f"{x.url}/api/models/org/redirected")
                assert internal not in api.content and api.status_code >= 400
                try:  # the upstream source keeps failing: a clean 502 or a cut body
                    body = http.get(f"{x.url}/{PUBLIC}/resolve/main/p.bin").content
                except httpx.RemoteProtocolError:
                    body = b""
                assert internal not in body and OPEN not in body
        assert service.seen == []  # not one request reached the internal service


def test_the_cli_follows_no_upstream_redirect_the_trust_rules_refuse(
    nodes: Callable[[str], Node],
) -> None:
    """The CLI's own metadata requests (huggingface_hub's session, no daemon running):
    an upstream that redirects them into another loopback host is refused, finally."""
    internal = b"INTERNAL-ONLY " * 10
    with FakePeer("127.0.0.6", "0" * 64, internal) as service:
        target = f"http://127.0.0.6:{service.port}/v1/blobs/{'0' * 64}"
        with LocalHub() as hub:
            hub.add_repo("org/redirected", {"p.bin": OPEN})
            hub.app.add_middleware(Redirector, target=target)
            y = online(nodes("127.0.0.2"), hub.url)
            r = y.cli("model", "add", "org/redirected", timeout=60)
            assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
            assert "refused" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
            assert not (y.hub / "models--org--redirected").exists()
        assert service.seen == []  # not one request reached the internal service


# -- item 12: malformed requests are 4xx ------------------------------------------------------


def test_non_latin1_names_and_huge_ranges_are_4xx(nodes: Callable[[str], Node]) -> None:
    with LocalHub() as hub:
        hub.add_repo(PUBLIC, {"p.bin": OPEN})
        x = online(nodes("127.0.0.2"), hub.url)
        offline = nodes("127.0.0.3")  # upstream down, no peer
        for node in (x, offline):
            assert node.start().returncode == 0
        with httpx.Client(trust_env=False, timeout=30) as http:
            for node in (x, offline):
                for name in ("模型/权重.bin", "données.bin"):
                    r = http.get(f"{node.url}/{PUBLIC}/resolve/main/{name}")
                    assert 400 <= r.status_code < 500 or r.status_code == 502, r.status_code
                    assert json.loads(r.content)["error"]
            digits = "9" * 5000
            for rng in (f"bytes={digits}-", f"bytes=0-{digits}", f"bytes=-{digits}"):
                r = http.get(f"{x.url}/{PUBLIC}/resolve/main/p.bin", headers={"Range": rng})
                assert r.status_code == 416, r.status_code
                assert r.headers["content-range"] == f"bytes */{len(OPEN)}"
