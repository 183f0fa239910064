"""The one parser and formatter of ``host[:port]`` (and ``[v6]:port``).

Every host that comes from the command line, a config file or another peer is
checked here before anything resolves or connects to it: an IP literal (IPv4 in
dotted quad only, IPv6 with or without brackets) or a DNS name by RFC 1123. A
numeric form that is not an address (``999.1.1.1``, ``1.2.3``) is refused, not
handed to a resolver that would read it its own way. Formatting puts brackets
around IPv6 everywhere a port or URL follows.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)", re.ASCII)


class HostPortError(ValueError):
    """Not a host, or not a port; the message is one line for the user."""


def parse_port(value: object) -> int:
    """A TCP/UDP port, 1..65535 (an int, or decimal digits)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 5:
        value = int(value)
    if type(value) is not int or not 1 <= value <= 65535:
        raise HostPortError(f"not a port (1-65535): {str(value)[:40]!r}")
    return value


def parse_host(value: object) -> str:
    """An IP address (normalised) or a DNS name (lowercased); HostPortError otherwise.

    IPv6 may come bracketed. Nothing is resolved here."""
    if not isinstance(value, str) or not value or len(value) > 255:
        raise HostPortError(f"not a host: {str(value)[:80]!r}")
    text = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    if ":" in text:
        try:
            return str(ipaddress.IPv6Address(text))
        except ValueError:
            raise HostPortError(f"not an IPv6 address: {value[:80]!r}") from None
    if value != text:
        raise HostPortError(f"brackets around a non-IPv6 host: {value[:80]!r}")
    name = text.lower().removesuffix(".")
    labels = name.split(".")
    if all(label.isascii() and label.isdigit() for label in labels):
        try:
            return str(ipaddress.IPv4Address(name))  # dotted quad, each 0..255
        except ValueError:
            raise HostPortError(f"not an IPv4 address: {value[:80]!r}") from None
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise HostPortError(f"not a host name or address: {value[:80]!r}")
    if labels[-1].isdigit():  # a name's last label is never all digits (RFC 3696)
        raise HostPortError(f"not a host name or address: {value[:80]!r}")
    return name


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, order=True)
class HostPort:
    host: str  # as parse_host returns it: no brackets
    port: int

    def __str__(self) -> str:
        return format_hostport(self.host, self.port)

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://{self}"


def format_hostport(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_hostport(value: object, default_port: int) -> HostPort:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 address."""
    if not isinstance(value, str):
        raise HostPortError(f"not a host[:port]: {str(value)[:80]!r}")
    text = value.strip()
    port: object = default_port
    if text.startswith("["):
        inner, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise HostPortError(f"not a host[:port]: {value[:80]!r}")
        host = "[" + inner + "]"
        if rest:
            port = rest[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host = text  # a name, an IPv4 address, or a bare IPv6 address (no port)
    return HostPort(parse_host(host), parse_port(port))


# -- where peer connections leave from -------------------------------------------------

_source_ip: str | None = None


def set_source_ip(ip: str | None) -> None:
    """The address this process's peer connections leave from: the one its daemon is
    bound to (``--host``), so a peer sees the address the DHT names, and fairness per
    address (swarm/choke.py) and per-address caps count machines, not one shared
    loopback source. None (or an unspecified address): the system chooses."""
    global _source_ip
    _source_ip = None if ip is None or ipaddress.ip_address(ip).is_unspecified else ip


def source_addr(dest: str) -> tuple[str, int] | None:
    """``local_addr`` for a connection to ``dest``: the bound address, unless it cannot
    reach ``dest`` (a loopback source towards a non-loopback peer) or the families differ."""
    if _source_ip is None:
        return None
    try:
        src, dst = ipaddress.ip_address(_source_ip), ipaddress.ip_address(dest)
    except ValueError:  # a name: the resolver picks the family; leave it to the system
        return None
    if src.version != dst.version or (src.is_loopback and not dst.is_loopback):
        return None
    return _source_ip, 0
