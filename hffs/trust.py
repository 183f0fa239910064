"""Whom hffs trusts with what: plain rules without I/O (the README's "Security" section).

- **Sharing.** A repo's content is shared with peers only when it is known public (fetched
  anonymously, or upstream answered an anonymous question about it) or the swarm is private
  (a secret is set). Private, gated and unknown content stays on this machine.
- **Peer listings** (the hub unreachable). A ref resolves to the commit most peer addresses
  agree on (this machine's own ref wins); a path's content id is taken from this machine's
  cache, else only when at least ``QUORUM`` distinct addresses list the same id and more
  addresses list it than any other id, or every holder of the commit is one address (said
  to the user), or the swarm is private (then: more addresses than any other id). A claimed
  ``fetched_at`` never decides anything in a public swarm.
- **Tokens** go to huggingface.co and to endpoints the user named, never to a built-in mirror.
- **Upstream answers**: only a failure to connect (or a 5xx but 508) means "unreachable";
  429, 508, timeouts and every 4xx are the upstream's answer, relayed and final.
- **Redirects** from upstream stay on its host or go to the hub's CDN over https; never to a
  loopback or private address unless the upstream itself is one; never from a peer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import httpx

from hffs.cache import is_commit

Visibility = Literal["public", "private"]
PUBLIC: Final[Visibility] = "public"
PRIVATE: Final[Visibility] = "private"  # private or gated: what an anonymous caller may not fetch

QUORUM = 2  # distinct peer addresses that must agree on a path's content id

HUB_HOSTS = ("huggingface.co", "hf.co")  # the hub and, as subdomains, its CDNs
NO_FOLLOW = "hffs.no_follow"  # request extension: a redirect is read, not followed


# -- sharing ---------------------------------------------------------------------------


def visibility_from_info(status: int, body: Any) -> Visibility | None:
    """What an ANONYMOUS repo-info answer says of a repo; None when it says nothing
    (an outage, a rate limit, a body that is not repo info)."""
    if status in (401, 403, 404):
        return PRIVATE  # the hub hides private repos behind 401/404 for anonymous callers
    if status != 200 or not isinstance(body, dict) or not isinstance(body.get("id"), str):
        return None
    if body.get("private") is True or body.get("gated") not in (None, False):
        return PRIVATE
    return PUBLIC


def visibility_of_listing(anonymous: bool, body: Any) -> Visibility | None:
    """What a successful repo-info answer (200) tells: asked anonymously, the repo is
    public unless it says private or gated; asked with a token, nothing for sure."""
    if not isinstance(body, dict):
        return None
    if body.get("private") is True or body.get("gated") not in (None, False):
        return PRIVATE
    return PUBLIC if anonymous else None


RELEARN_AFTER = 6 * 3600.0  # seconds a repo known public stays so before it is asked again


def visibility_stale(
    visibility: str | None, learnt_at: float | None, now: float, after: float = RELEARN_AFTER
) -> bool:
    """Whether to ask upstream (anonymously) again about a repo's visibility: what is
    known public is checked again once the answer is ``after`` seconds old, since an
    owner can make a repo private or gated later; what is known private is not (sharing
    less is safe, and asking costs)."""
    return visibility == PUBLIC and (learnt_at is None or now - learnt_at >= after)


def is_shared(visibility: str | None, private_swarm: bool) -> bool:
    """Whether content of a repo with this visibility may be announced and served."""
    return private_swarm or visibility == PUBLIC


# -- peer listings -----------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """One revision listing from one peer address (or this machine, ``host`` None)."""

    host: str | None
    commit: str
    files: Mapping[str, tuple[str, int]]  # path -> (content id, size)
    fetched_at: float = 0.0


@dataclass(frozen=True)
class Vouched:
    """What peers vouch for of a revision, and on what basis (said to the user)."""

    commit: str
    files: dict[str, tuple[str, int]]
    basis: Literal["this machine", "peers", "one peer", "private swarm"]
    hosts: tuple[str, ...]  # peer addresses that vouched for the commit
    refused: frozenset[str] = field(default_factory=frozenset)  # listed, but not vouched for
    # content ids some peer serves for this revision: out in the swarm already
    peer_ids: frozenset[str] = field(default_factory=frozenset)

    def describe(self) -> str:
        if self.basis == "this machine":
            return "from this machine's cache (the hub could not be reached)"
        names = ", ".join(self.hosts[:4]) + (", ..." if len(self.hosts) > 4 else "")
        if self.basis == "one peer":
            return f"vouched for by ONE peer only ({names}); the hub could not be reached"
        if self.basis == "private swarm":
            return f"vouched for by private-swarm peers ({names}); the hub could not be reached"
        return (
            f"vouched for by peers only: each file by at least {QUORUM} of {len(self.hosts)} "
            f"addresses ({names}), the most of any content; the hub could not be reached"
        )


def claim_from_listing(host: str | None, listing: Mapping[str, Any]) -> Claim | None:
    """A Claim from a listing dict already validated by ``hffs.listing`` (or this machine's
    own ``read_revision``); None for anything else."""
    commit, files = listing.get("commit"), listing.get("files")
    if not isinstance(commit, str) or not is_commit(commit) or not isinstance(files, list):
        return None
    out: dict[str, tuple[str, int]] = {}
    for f in files:
        if not isinstance(f, Mapping):
            return None
        path, fid, size = f.get("path"), f.get("file_id"), f.get("size")
        if not isinstance(path, str) or not isinstance(fid, str) or type(size) is not int:
            return None
        if out.get(path, (fid, size)) != (fid, size):
            return None  # one listing naming two ids for a path contradicts itself
        out[path] = (fid, size)
    fetched = listing.get("fetched_at", 0.0)
    fetched_at = float(fetched) if type(fetched) in (int, float) else 0.0
    return Claim(host, commit, out, fetched_at)


def _by_host(claims: Iterable[Claim]) -> dict[str, dict[str, dict[str, tuple[str, int]]]]:
    """host -> commit -> path -> (id, size); a host that contradicts itself is dropped
    (several daemons on one address count as one voice)."""
    out: dict[str, dict[str, dict[str, tuple[str, int]]]] = {}
    liars: set[str] = set()
    for c in claims:
        if c.host is None:
            continue
        files = out.setdefault(c.host, {}).setdefault(c.commit, {})
        for path, entry in c.files.items():
            if files.setdefault(path, entry) != entry:
                liars.add(c.host)
    return {h: v for h, v in out.items() if h not in liars}


def pick_commit(
    revision: str, claims: Sequence[Claim], private_swarm: bool
) -> tuple[str | None, str]:
    """The commit a revision means when only peers answer, and why (or why none).

    A commit hash is itself. A ref: this machine's own ref wins; else the commit the most
    distinct addresses hold; a tie is refused in a public swarm (one hostile address
    can always tie one honest one) and broken by the newest report in a private one."""
    if is_commit(revision):
        return revision, ""
    local = [c for c in claims if c.host is None]
    if local:
        return local[0].commit, ""
    votes: dict[str, set[str]] = {}
    newest: dict[str, float] = {}
    for host, commits in _by_host(claims).items():
        for commit in commits:
            votes.setdefault(commit, set()).add(host)
    for c in claims:
        if c.host is not None and c.commit in votes:
            newest[c.commit] = max(newest.get(c.commit, 0.0), c.fetched_at)
    if not votes:
        return None, f"no peer holds {revision!r}"
    ranked = sorted(votes, key=lambda k: len(votes[k]), reverse=True)
    top = [k for k in ranked if len(votes[k]) == len(votes[ranked[0]])]
    if len(top) == 1:
        return top[0], ""
    if private_swarm:
        return max(top, key=lambda k: (newest.get(k, 0.0), k)), ""
    return None, (
        f"peers disagree on which commit {revision!r} is ({len(top)} commits, "
        f"{len(votes[top[0]])} address(es) each); ask for a commit hash"
    )


def vouch(revision: str, claims: Sequence[Claim], private_swarm: bool) -> Vouched | str:
    """What may be used of a revision that only peers (and this machine) list, else why not.

    ``claims`` holds at most one Claim with ``host`` None: this machine's own cache."""
    commit, why = pick_commit(revision, claims, private_swarm)
    if commit is None:
        return why
    local: dict[str, tuple[str, int]] = {}
    for c in claims:
        if c.host is None and c.commit == commit:
            local.update(c.files)
    said: dict[str, dict[tuple[str, int], set[str]]] = {}  # path -> entry -> hosts
    holders: set[str] = set()
    for host, commits in _by_host(claims).items():
        for path, entry in commits.get(commit, {}).items():
            said.setdefault(path, {}).setdefault(entry, set()).add(host)
            holders.add(host)
    files = dict(local)  # what this machine holds is never overruled
    refused: set[str] = set()
    peer_ids: set[str] = set()
    for path, entries in said.items():
        if path in files:
            if files[path] in entries:
                peer_ids.add(files[path][0])
            continue
        ranked = sorted(entries.items(), key=lambda kv: len(kv[1]), reverse=True)
        (entry, hosts), rest = ranked[0], ranked[1:]
        if rest and len(rest[0][1]) >= len(hosts):
            refused.add(path)  # as many addresses say otherwise: take neither
        elif private_swarm or len(hosts) >= QUORUM or len(holders) == 1:
            files[path] = entry
            peer_ids.add(entry[0])
        else:
            refused.add(path)
    if not files:
        return f"no file of {revision!r} is vouched for by enough peers"
    basis: Literal["this machine", "peers", "one peer", "private swarm"]
    if not holders or set(files) <= set(local):
        basis = "this machine"
    elif private_swarm:
        basis = "private swarm"
    elif len(holders) == 1:
        basis = "one peer"
    else:
        basis = "peers"
    return Vouched(
        commit, files, basis, tuple(sorted(holders)), frozenset(refused), frozenset(peer_ids)
    )


# -- tokens ------------------------------------------------------------------------------


def may_stream_unchecked(
    from_upstream: bool, vouching_hosts: int, has_upstream: bool, private_swarm: bool
) -> bool:
    """Whether an HF client may get a chunk's bytes before the whole file passed its
    hash check (or upstream vouched for them). A peer chunk is checked only against a
    peer's manifest, and a client that resumes after a cut keeps what it got (no HF
    tool re-hashes a download): so only a manifest QUORUM addresses agree on, a private
    swarm's, or, with no upstream to ask, the peers' (the listing was vouched for by
    peers too) lets peer bytes stream unchecked. Upstream's own bytes always may."""
    return from_upstream or private_swarm or not has_upstream or vouching_hosts >= QUORUM


def is_hub(url: str) -> bool:
    """huggingface.co itself over https (its subdomains are its CDNs)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return parts.scheme == "https" and (host in HUB_HOSTS or host.endswith(".huggingface.co"))


def may_send_token(endpoint: str, named: Iterable[str]) -> bool:
    """The user's HF token goes to the hub and to endpoints the user named, only."""
    return is_hub(endpoint) or endpoint.rstrip("/") in {e.rstrip("/") for e in named}


# -- upstream answers --------------------------------------------------------------------

Verdict = Literal["answer", "unreachable"]


def upstream_verdict(status: int, final: bool = False) -> Verdict:
    """Whether an upstream HTTP status is its answer (relayed, final) or an outage (the
    swarm may answer instead). A client can provoke 429 (quota) and 508 (hop header), so
    they are answers: otherwise a client could switch the access check off at will.
    ``final``: the status stands for something the upstream did after connecting (it
    timed out, or redirected where hffs does not go): an answer too, whatever the code."""
    if status >= 500 and status != 508 and not final:
        return "unreachable"
    return "answer"


# -- redirects -----------------------------------------------------------------------------


def _private_host(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(
        ".localhost"
    ):
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return not ip.is_global


def is_cdn(host: str) -> bool:
    host = host.lower()
    return any(host == h or host.endswith("." + h) for h in HUB_HOSTS)


def redirect_allowed(current: str, target: str, upstreams: Iterable[str]) -> bool:
    """Whether a redirect from ``current`` (an upstream or a CDN it sent us to) to
    ``target`` may be followed. Redirects from anywhere else (a peer) never are."""
    cur, tgt = urlsplit(current), urlsplit(target)
    cur_host, tgt_host = (cur.hostname or "").lower(), (tgt.hostname or "").lower()
    if not tgt_host or tgt.scheme not in ("http", "https") or tgt.username or tgt.password:
        return False
    upstream_hosts = {(urlsplit(u).hostname or "").lower() for u in upstreams}
    if cur_host not in upstream_hosts and not (cur.scheme == "https" and is_cdn(cur_host)):
        return False  # not an upstream: a peer, or somewhere a redirect already led
    if _private_host(tgt_host) and not _private_host(cur_host):
        return False  # a public upstream never sends us into the local network
    if tgt_host == cur_host:
        return tgt.scheme == cur.scheme or tgt.scheme == "https"
    return tgt.scheme == "https" and is_cdn(tgt_host)


class RedirectRefused(httpx.RequestError):
    """An upstream redirect hffs does not follow (another host, the local network, a peer)."""


def redirect_guard(upstreams: list[str]) -> Callable[[httpx.Response], Awaitable[None]]:
    """An httpx response hook: a redirect is followed only where the trust rules allow."""

    async def check(resp: httpx.Response) -> None:
        if not resp.has_redirect_location or resp.request.extensions.get(NO_FOLLOW):
            return
        target = resp.url.join(resp.headers["location"])
        if not redirect_allowed(str(resp.url), str(target), upstreams):
            raise RedirectRefused(f"redirect to {target.host} refused", request=resp.request)

    return check
