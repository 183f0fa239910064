"""The hub's API as huggingface_hub speaks it: URL parsing, Xet stripping, listings in the
hub's JSON shapes. Plain code without I/O, used by the daemon's HF endpoint (hub_proxy)."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hffs.cache import CacheError, check_repo_path, is_commit
from hffs.hub import RemoteFile
from hffs.trust import Claim, Vouched, claim_from_listing, vouch
from swarm.ids import git_blob_hasher, is_file_id

# Daemons may be each other's upstream (a gateway daemon with internet access); a
# misconfigured cycle stops after this many hops instead of looping forever.
HOPS_HEADER = "x-hffs-hops"
MAX_HOPS = 4

REPO_PREFIXES = {"datasets": "dataset", "spaces": "space"}
_API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_API_ACTIONS = frozenset({"revision", "tree", "paths-info", "refs", "commits"})
_REVISION = re.compile(r"[A-Za-z0-9._/-]{1,256}")
FORWARD_HEADERS = ("authorization", "accept", "content-type", "user-agent", "x-hf-bill-to")
RELAY_HEADERS = (
    "content-type",
    "x-error-code",
    "x-error-message",
    "x-repo-commit",
    "x-request-id",
    "x-total-count",
    "retry-after",
)
_LINK = re.compile(r"<([^>]*)>([^,]*)")


def hub_error(
    status: int, code: str | None, message: str, extra: dict[str, str] | None = None
) -> Response:
    """An error as the hub sends it: huggingface_hub maps X-Error-Code to its exceptions.

    Header values must be Latin-1: a file name in any other script is escaped there (the
    JSON body keeps it as is)."""
    header = message.encode("ascii", "backslashreplace").decode("ascii")[:1000]
    headers = {"X-Error-Message": header, **(extra or {})}
    if code is not None:
        headers["X-Error-Code"] = code
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def valid_revision(rev: str) -> bool:
    """A commit or a ref, slashes allowed (``refs/pr/1``), nothing that walks a path."""
    return (
        _REVISION.fullmatch(rev) is not None
        and ".." not in rev
        and not rev.startswith("/")
        and not rev.endswith("/")
        and "//" not in rev
    )


def strip_xet(obj: Any) -> Any:
    """JSON without any ``xet*`` field, so no client is pointed at Xet storage."""
    if isinstance(obj, dict):
        return {k: strip_xet(v) for k, v in obj.items() if not k.lower().startswith("xet")}
    if isinstance(obj, list):
        return [strip_xet(v) for v in obj]
    return obj


def rewrite_link(value: str, base: str) -> str | None:
    """A Link header with upstream's origin replaced by ours (pagination must come back
    here) and Xet links dropped."""
    out = []
    for url, params in _LINK.findall(value):
        if "xet" in params.lower():
            continue
        parts = urlsplit(url)
        local = base + parts.path + (f"?{parts.query}" if parts.query else "")
        out.append(f"<{local}>{params}")
    return ", ".join(out) or None


def parse_resolve(parts: list[str]) -> tuple[str, str, str, str] | None:
    """(repo type, repo id, revision, path) of ``[datasets/]{repo}/resolve/{rev}/{path}``."""
    repo_type = "model"
    if parts and parts[0] in REPO_PREFIXES:
        repo_type, parts = REPO_PREFIXES[parts[0]], parts[1:]
    if len(parts) >= 5 and parts[2] == "resolve":
        repo, rest = "/".join(parts[:2]), parts[3:]
    elif len(parts) >= 4 and parts[1] == "resolve":
        repo, rest = parts[0], parts[2:]
    else:
        return None
    return repo_type, repo, rest[0], "/".join(rest[1:])


@dataclass(frozen=True)
class ApiCall:
    repo_type: str
    repo_id: str
    action: str  # "info", "revision", "tree", "paths-info", or another the hub knows
    revision: str
    path: str  # inside the repo, for "tree"


def parse_api(parts: list[str]) -> ApiCall | None:
    """``api/{models|datasets|spaces}/{repo}[/{action}/{rev}[/{path}]]``."""
    if len(parts) < 3 or parts[1] not in _API_TYPES:
        return None
    rest = parts[2:]
    n = 1 if len(rest) < 2 or rest[1] in _API_ACTIONS else 2
    repo, tail = "/".join(rest[:n]), rest[n:]
    if not tail:
        return ApiCall(_API_TYPES[parts[1]], repo, "info", "main", "")
    if len(tail) < 2:
        return ApiCall(_API_TYPES[parts[1]], repo, tail[0], "", "")
    if tail[0] == "tree":
        return ApiCall(_API_TYPES[parts[1]], repo, "tree", tail[1], "/".join(tail[2:]))
    return ApiCall(_API_TYPES[parts[1]], repo, tail[0], "/".join(tail[1:]), "")


def truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


def _git_blob_sha1(data: bytes) -> str:
    hasher = git_blob_hasher(len(data))
    hasher.update(data)
    return hasher.hexdigest()


def _pointer(f: RemoteFile) -> bytes:
    """The git-lfs pointer git stores for an LFS file: its blob id is the hub's ``oid``."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{f.file_id}\nsize {f.size}\n"
    ).encode()


def hop_count(request: Request) -> int:
    try:
        return max(0, int(request.headers.get(HOPS_HEADER, "0")))
    except ValueError:
        return 0


def upstream_headers(auth: str | None, hops: int) -> dict[str, str]:
    """What goes upstream with a caller's request: its credentials, one more hop."""
    return {HOPS_HEADER: str(hops + 1), **({"authorization": auth} if auth else {})}


def is_loopback(client: Any) -> bool:
    try:
        return ipaddress.ip_address(client[0]).is_loopback
    except (TypeError, ValueError, IndexError):
        return False


def same_machine(client: Any, server: Any) -> bool:
    """Whether an ASGI ``client`` (host, port) is on this machine: a loopback address,
    or the very address it reached (``server``): a machine calling itself by its own IP."""
    if is_loopback(client):
        return True
    try:
        mine, theirs = ipaddress.ip_address(server[0]), ipaddress.ip_address(client[0])
    except (TypeError, ValueError, IndexError):
        return False
    return not mine.is_unspecified and mine == theirs


def head_fetches(whole: bool, hops: int, client: Any, server: Any) -> bool:
    """Whether a HEAD starts the file's download and waits for it before the answer.

    huggingface_hub HEADs a file, then GETs it only if its cache lacks the blob: a client
    sharing this daemon's cache then finds the blob there and copies nothing. Only a
    client on this machine can share the cache; for one elsewhere (or with its own cache
    that holds the file, checking it is current) the fetch would be wasted, and a GET
    starts it soon enough. Another daemon's HEAD (with hops) only checks access to a
    gated repo; a HEAD of a range is no sign a GET of the file follows."""
    return whole and hops == 0 and same_machine(client, server)


# -- revision listings -----------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """A revision's files as upstream (``endpoint``) or the swarm (``endpoint`` None) gave them."""

    commit: str
    files: dict[str, RemoteFile]
    endpoint: str | None
    gated: bool = False
    unknown: frozenset[str] = frozenset()  # listed without a usable size or content id
    # Swarm listings only: on what basis peers vouch for it, and what they listed but
    # do not vouch for (hffs.trust).
    vouched: Vouched | None = None

    def dirs(self) -> set[str]:
        return {p.rsplit("/", i)[0] for p in self.files for i in range(1, p.count("/") + 1)}

    def file_entry(self, f: RemoteFile) -> dict[str, Any]:
        if not f.lfs:
            return {"type": "file", "oid": f.file_id, "size": f.size, "path": f.path}
        pointer = _pointer(f)
        return {
            "type": "file",
            "oid": _git_blob_sha1(pointer),
            "size": f.size,
            "path": f.path,
            "lfs": {"oid": f.file_id, "size": f.size, "pointerSize": len(pointer)},
        }

    def dir_entry(self, path: str) -> dict[str, Any]:
        # Not git's tree id (the swarm may hold only part of the tree): a stable stand-in.
        oid = hashlib.sha1(f"{self.commit}:{path}".encode()).hexdigest()
        return {"type": "directory", "oid": oid, "size": 0, "path": path}

    def info(self, repo_type: str, repo_id: str) -> dict[str, Any]:
        siblings = []
        for f in sorted(self.files.values(), key=lambda f: f.path):
            entry = self.file_entry(f)
            sib: dict[str, Any] = {"rfilename": f.path, "blobId": entry["oid"], "size": f.size}
            if f.lfs:
                sib["lfs"] = {"sha256": f.file_id, "size": f.size, "pointerSize": len(_pointer(f))}
            siblings.append(sib)
        info: dict[str, Any] = {"id": repo_id, "sha": self.commit, "siblings": siblings}
        if repo_type == "model":
            info["modelId"] = repo_id
        return info

    def tree(self, base: str, recursive: bool) -> list[dict[str, Any]] | None:
        dirs = self.dirs()
        if base and base not in dirs:
            return None
        prefix = f"{base}/" if base else ""

        def wanted(p: str) -> bool:
            return p.startswith(prefix) and (recursive or "/" not in p[len(prefix) :])

        entries = [(p, self.dir_entry(p)) for p in dirs if wanted(p)]
        entries += [(p, self.file_entry(f)) for p, f in self.files.items() if wanted(p)]
        return [e for _, e in sorted(entries, key=lambda pe: pe[0])]

    def paths_info(self, paths: list[str]) -> list[dict[str, Any]]:
        dirs, out = self.dirs(), []
        for p in dict.fromkeys(p.strip("/") for p in paths):
            if p in self.files:
                out.append(self.file_entry(self.files[p]))
            elif p in dirs:
                out.append(self.dir_entry(p))
        return out


def listing_from_info(body: Any, endpoint: str) -> Listing | None:
    """Upstream's repo info (``?blobs=true``) as a Listing; None if it is not one."""
    if not isinstance(body, dict) or not isinstance(body.get("sha"), str):
        return None
    if not is_commit(body["sha"]):
        return None
    files: dict[str, RemoteFile] = {}
    unknown: set[str] = set()
    for s in body.get("siblings") or []:
        if not isinstance(s, dict) or not isinstance(s.get("rfilename"), str):
            continue
        name, lfs, size, blob_id = s["rfilename"], s.get("lfs"), s.get("size"), s.get("blobId")
        try:
            check_repo_path(name)
        except CacheError:
            continue
        if isinstance(lfs, dict):
            sha256, size = lfs.get("sha256"), lfs.get("size")
            if isinstance(sha256, str) and is_file_id(sha256) and type(size) is int:
                files[name] = RemoteFile(name, size, sha256, True)
        elif isinstance(blob_id, str) and is_file_id(blob_id) and type(size) is int:
            files[name] = RemoteFile(name, size, blob_id, False)
        if name not in files:
            unknown.add(name)
    gated = bool(body.get("gated"))
    return Listing(body["sha"], files, endpoint, gated, frozenset(unknown))


def listing_from_holders(
    answers: list[dict[str, Any]],
    revision: str,
    *,
    local: dict[str, Any] | None = None,
    private_swarm: bool = False,
) -> Listing | str:
    """The swarm's view of a revision (upstream unreachable), by the rules of
    ``hffs.trust.vouch``: ``answers`` are peers' listings with their ``host``; ``local`` is
    this machine's own (trusted). A string says why nothing can be vouched for."""
    claims: list[Claim] = []
    if local is not None and (c := claim_from_listing(None, local)) is not None:
        claims.append(c)
    for a in answers:
        host = a.get("host")
        if isinstance(host, str) and (c := claim_from_listing(host, a)) is not None:
            claims.append(c)
    v = vouch(revision, claims, private_swarm)
    if isinstance(v, str):
        return v
    files = {p: RemoteFile(p, size, fid, len(fid) == 64) for p, (fid, size) in v.files.items()}
    return Listing(v.commit, files, None, vouched=v)


# -- upstream ------------------------------------------------------------------------


def is_hub_path(path: str) -> bool:
    """Whether a request is for the HF endpoint rather than the peer protocol (``/v1/``).

    An org named ``v1`` still works: its resolve URLs have ``resolve`` in third place."""
    if not path.startswith("/v1/"):
        return True
    parts = path.split("/")
    return len(parts) > 3 and (parts[2] == "resolve" or parts[3] == "resolve")
