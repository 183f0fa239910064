"""LAN discovery: the rules alone, then real daemons in network namespaces on one bridge
that find each other over mDNS with no flag at all and share a file."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hffs.daemon.lan import lan_enabled
from swarm.lan import TAG_PROPERTY, LanDiscovery, parse_peer, swarm_tag
from tests.nodes import COMMIT, REPO, put_model_file

# -- the rules -------------------------------------------------------------------------


def test_swarm_tag_hides_the_secret_and_tells_swarms_apart() -> None:
    assert swarm_tag(None) == swarm_tag(b"") == ""
    a, b = swarm_tag(b"secret one"), swarm_tag(b"secret two")
    assert a != b and len(a) == 16 and "secret" not in a
    assert swarm_tag(b"secret one") == a


def test_parse_peer() -> None:
    tag = swarm_tag(b"s")
    props = {TAG_PROPERTY.encode(): tag.encode()}
    me = "hffs-me._hffs._udp.local."
    other = "hffs-x._hffs._udp.local."

    def parse(name=other, addrs=("10.1.2.3",), port=9009, properties=props, t=tag):
        return parse_peer(name, addrs, port, properties, own_name=me, tag=t)

    peer = parse()
    assert peer is not None and peer.addresses == ("10.1.2.3",) and peer.port == 9009
    assert parse(name=me) is None  # ourselves
    assert parse(properties={}) is None  # not of our swarm
    assert parse(properties={TAG_PROPERTY.encode(): b"0" * 16}) is None
    assert parse(properties={}, t="") is not None  # open swarm, open peer
    assert parse(t="") is None  # an open daemon does not join a private swarm
    assert parse(port=0) is None and parse(port=True) is None and parse(port="9009") is None
    assert parse(addrs=("127.0.0.1", "169.254.1.1", "0.0.0.0", "evil.example")) is None
    many = [f"10.0.0.{i}" for i in range(1, 40)] + ["10.0.0.1"]
    got = parse(addrs=many)
    assert got is not None and len(got.addresses) == 8 and len(set(got.addresses)) == 8


def test_lan_off_on_loopback_and_argument_checks() -> None:
    assert not lan_enabled("127.0.0.2") and lan_enabled("0.0.0.0") and lan_enabled("10.0.0.1")
    with pytest.raises(ValueError):
        LanDiscovery("_x._udp.local.", "n", 9009, [])
    with pytest.raises(ValueError):
        LanDiscovery("bad", "n", 9009, ["10.0.0.1"])


# -- real daemons on one LAN -----------------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


SUBNET = "10.200.7"


@pytest.fixture
def lan() -> Iterator[list[str]]:
    """Two "machines" (namespaces) on one bridge (in a third namespace): 10.200.7.1, .2."""
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command")
    tag = uuid.uuid4().hex[:6]
    hosts = [f"hffs-l{i}-{tag}" for i in range(2)]
    switch = f"hffs-sw-{tag}"
    try:
        _ip("netns", "add", switch)
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"cannot create a network namespace here: {exc}")
    try:
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        for i, ns in enumerate(hosts):
            _ip("netns", "add", ns)
            _ip("link", "add", f"h{i}{tag}", "type", "veth", "peer", "name", f"s{i}{tag}")
            _ip("link", "set", f"h{i}{tag}", "netns", ns)
            _ip("link", "set", f"s{i}{tag}", "netns", switch)
            _ip("-n", ns, "link", "set", f"h{i}{tag}", "name", "eth0")
            _ip("-n", ns, "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", switch, "link", "set", f"s{i}{tag}", "master", "br0")
            _ip("-n", switch, "link", "set", f"s{i}{tag}", "up")
        yield hosts
    finally:
        for ns in [*hosts, switch]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


class Machine:
    def __init__(self, ns: str, root: Path) -> None:
        self.ns = ns
        self.home = root / "home"
        self.hub = root / "hub"
        self.env = {
            **os.environ,
            "HFFS_HOME": str(self.home),
            "HF_HUB_CACHE": str(self.hub),
            "HF_HOME": str(root / "hf-home"),
            "XDG_CONFIG_HOME": str(root / "xdg-config"),
            "HFFS_ENDPOINTS": "http://127.0.0.1:9",  # nothing upstream: peers or nothing
            "HF_HUB_OFFLINE": "1",
        }
        for key in ("HF_TOKEN", "HF_ENDPOINT"):
            self.env.pop(key, None)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, sys.executable, "-m", "hffs.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def contacts(self) -> int:
        m = re.search(r"DHT contacts\s*│?\s*(\d+)", self.cli("daemon", "status").stdout)
        return int(m[1]) if m else -1

    def add_model_file(self, path: str, data: bytes) -> str:
        return put_model_file(self.hub, self.home, path, data)

    def log(self) -> str:
        path = self.home / "daemon.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def _until(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return False


@pytest.mark.timeout(180)
@pytest.mark.parametrize("secret", [None, "lan-members-only"])
def test_two_daemons_on_a_lan_share_a_file_with_no_flags(
    lan: list[str], tmp_path: Path, secret: str | None
) -> None:
    a, b = (Machine(ns, tmp_path / ns) for ns in lan)
    data = os.urandom(300_000)
    a.add_model_file("weights.bin", data)
    extra = ("--swarm-secret", secret) if secret else ()
    try:
        for m in (a, b):
            r = m.cli("daemon", "start", *extra)  # no --host, --port nor --bootstrap
            assert r.returncode == 0, r.stderr + m.log()
        assert _until(lambda: b.contacts() >= 1 and a.contacts() >= 1, 60), a.log() + b.log()
        # B finds A's file through the DHT it joined over mDNS and downloads it from A
        done = None
        for _ in range(20):
            done = b.cli("model", "add", REPO, "--file", "weights.bin", "--revision", COMMIT)
            if done.returncode == 0:
                break
            time.sleep(1)
        assert done is not None and done.returncode == 0, done.stderr + b.log()
        snapshot = b.hub / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
        assert (snapshot / "weights.bin").read_bytes() == data
        status = a.cli("daemon", "status").stdout
        assert "uploaded" in status and "0 B" not in status.split("uploaded")[1].split("\n")[0]
    finally:
        for m in (a, b):
            m.cli("daemon", "stop", timeout=30)


def _udp_ports(ns: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "ss", "-uln"], capture_output=True, text=True, timeout=10
    ).stdout


@pytest.mark.timeout(120)
def test_other_swarms_stay_apart_and_no_mdns_is_silent(lan: list[str], tmp_path: Path) -> None:
    """A daemon of another swarm is seen but not joined; --no-mdns opens no mDNS socket."""
    a, b = (Machine(ns, tmp_path / ns) for ns in lan)
    try:
        assert a.cli("daemon", "start", "--swarm-secret", "one").returncode == 0
        assert b.cli("daemon", "start", "--swarm-secret", "two").returncode == 0
        seen = _until(lambda: "is not of this swarm" in a.log() + b.log(), 60)
        assert seen, a.log() + b.log()
        assert a.contacts() == 0 and b.contacts() == 0
        assert b.cli("daemon", "stop", timeout=30).returncode == 0
        assert b.cli("daemon", "start", "--no-mdns", "--swarm-secret", "one").returncode == 0
        assert ":5353" in _udp_ports(a.ns)
        assert ":5353" not in _udp_ports(b.ns) and ":9009" in _udp_ports(b.ns)
    finally:
        for m in (a, b):
            m.cli("daemon", "stop", timeout=30)
