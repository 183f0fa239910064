"""The upstream hub client: metadata from the mirror(s), then huggingface.co.

Metadata goes through huggingface_hub's own API (one ``repo_info`` call gives the
commit a ref points at and every file's size and content id). File bytes are not
fetched here: the swarm downloader takes the URLs this module builds and asks
them for HTTP ranges, so upstream is just one more source of chunks.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import huggingface_hub
from huggingface_hub import HfApi, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from hffs.cache import CacheError, check_repo_path, is_commit
from hffs.errors import HffsError
from hffs.trust import (
    PRIVATE,
    RedirectRefused,
    is_cdn,
    may_send_token,
    redirect_allowed,
    visibility_of_listing,
)
from swarm.ids import is_file_id

METADATA_TIMEOUT = 20.0


class HubError(HffsError):
    """No upstream endpoint could answer; the message says why, for the user."""


class Refused(HubError):
    """An endpoint answered and refused (not found, gated, no access): final, never a
    reason to ask peers instead."""


class NotFound(Refused):
    """Every endpoint that answered said the repo, revision or file does not exist."""


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    file_id: str  # sha256 for LFS files, git blob sha1 otherwise: the cache's blob name
    lfs: bool


@dataclass(frozen=True)
class RemoteRevision:
    repo_type: str
    repo_id: str
    commit: str
    files: tuple[RemoteFile, ...]
    endpoint: str  # which endpoint answered
    # "public" / "private" when known (hffs.trust): decides whether peers may get it
    visibility: str | None = None
    vouched: str = ""  # peers only (the hub unreachable): on what basis, for the user
    peer_ids: frozenset[str] = frozenset()  # content ids peers serve: no secret to keep

    def file(self, path: str) -> RemoteFile:
        for f in self.files:
            if f.path == path:
                return f
        raise NotFound(f"{path} is not in {self.repo_id} at {self.commit[:12]}")


def file_url(endpoint: str, repo_type: str, repo_id: str, commit: str, path: str) -> str:
    return hf_hub_url(repo_id, path, repo_type=repo_type, revision=commit, endpoint=endpoint)


# -- huggingface_hub's own session follows redirects: guard it as ours (hffs.trust) ------

_guard_lock = threading.Lock()
_upstreams: set[str] = set()  # every endpoint a HubClient of this process was given


def _check_redirect(resp: Any) -> None:
    """A response hook on huggingface_hub's session: a redirect is followed only where
    the trust rules allow (same host, or the hub's CDN over https; never inward)."""
    if not resp.has_redirect_location:
        return
    here = resp.url.host.lower()
    ours = here in {(urlsplit(u).hostname or "").lower() for u in _upstreams}
    if not ours and not (resp.url.scheme == "https" and is_cdn(here)):
        return  # a request hffs did not make (huggingface_hub used for something else)
    target = resp.url.join(resp.headers["location"])
    if not redirect_allowed(str(resp.url), str(target), sorted(_upstreams)):
        raise RedirectRefused(f"redirect to {target.host} refused")


def _guarded_session() -> Any:
    client = huggingface_hub.utils._http.default_client_factory()
    hooks = client.event_hooks
    client.event_hooks = {**hooks, "response": [*hooks.get("response", []), _check_redirect]}
    return client


def guard_hub_session(endpoints: list[str]) -> None:
    """Make huggingface_hub's session (metadata requests) refuse redirects hffs refuses."""
    with _guard_lock:
        first = not _upstreams
        _upstreams.update(endpoints)
    if first:
        huggingface_hub.set_client_factory(_guarded_session)


def _describe(exc: Exception) -> str:
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code}"
    return type(exc).__name__ + (f": {exc}" if str(exc) else "")


class HubClient:
    def __init__(
        self, endpoints: list[str], token: str | None = None, named: list[str] | None = None
    ) -> None:
        if not endpoints:
            raise HubError("no upstream endpoint is configured")
        self.endpoints = endpoints
        guard_hub_session(endpoints)
        self.token = token
        # the endpoints the user chose (None: all): only they and the hub get the token
        self.named = list(endpoints if named is None else named)

    def token_for(self, endpoint: str) -> str | None:
        return self.token if self.token and may_send_token(endpoint, self.named) else None

    def auth_headers(self, endpoint: str) -> dict[str, str]:
        """Headers for requests to ``endpoint`` only; never given to a peer."""
        token = self.token_for(endpoint)
        return {"authorization": f"Bearer {token}"} if token else {}

    def _visibility(self, endpoint: str, repo_type: str, repo_id: str, info: object) -> str | None:
        """Whether the repo is public: told by an anonymous answer, else asked anonymously."""
        said = visibility_of_listing(
            self.token_for(endpoint) is None,
            {"private": getattr(info, "private", None), "gated": getattr(info, "gated", None)},
        )
        if said is not None:
            return said
        api = HfApi(endpoint=endpoint, token=False)
        try:
            anon = api.repo_info(repo_id, repo_type=repo_type, timeout=METADATA_TIMEOUT)
        except (RepositoryNotFoundError, GatedRepoError):
            return PRIVATE
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            return PRIVATE if status in (401, 403, 404) else None
        except Exception:  # upstream could not tell: unknown, so not shared
            return None
        return visibility_of_listing(True, {"private": anon.private, "gated": anon.gated})

    def _revision_from(
        self, endpoint: str, repo_type: str, repo_id: str, rev: str
    ) -> RemoteRevision:
        api = HfApi(endpoint=endpoint, token=self.token_for(endpoint) or False)
        info = api.repo_info(
            repo_id,
            repo_type=repo_type,
            revision=rev,
            files_metadata=True,
            timeout=METADATA_TIMEOUT,
        )
        files = []
        for s in getattr(info, "siblings", None) or []:
            if s.lfs is not None:
                f = RemoteFile(s.rfilename, s.lfs.size, s.lfs.sha256, True)
            else:
                f = RemoteFile(s.rfilename, s.size, s.blob_id, False)  # type: ignore[arg-type]
            try:
                check_repo_path(f.path)
                valid = isinstance(f.file_id, str) and is_file_id(f.file_id)
                valid = valid and type(f.size) is int and f.size >= 0
            except CacheError:
                valid = False
            if not valid:  # an upstream that names paths or ids it cannot is no upstream
                raise HubError(f"{endpoint} gave an invalid path, size or id for a file")
            files.append(f)
        if not info.sha or not is_commit(info.sha):
            raise HubError(f"{endpoint} gave no commit for {repo_id}@{rev}")
        visibility = self._visibility(endpoint, repo_type, repo_id, info)
        return RemoteRevision(repo_type, repo_id, info.sha, tuple(files), endpoint, visibility)

    def revision(self, repo_type: str, repo_id: str, revision: str) -> RemoteRevision:
        """Resolve ``revision`` to a commit and list its files, trying each endpoint."""
        failures: list[str] = []
        not_found: list[str] = []
        refused: list[str] = []
        for endpoint in self.endpoints:
            try:
                return self._revision_from(endpoint, repo_type, repo_id, revision)
            except GatedRepoError:
                refused.append(f"{endpoint}: gated repo, set HF_TOKEN to a token with access")
            except RepositoryNotFoundError:
                not_found.append(f"{endpoint}: repo {repo_id!r} not found (or private)")
            except RevisionNotFoundError:
                not_found.append(f"{endpoint}: revision {revision!r} not found")
            except EntryNotFoundError:
                not_found.append(f"{endpoint}: not found")
            except RedirectRefused as exc:  # it answered: somewhere hffs does not go
                refused.append(f"{endpoint}: {exc}")
            except HfHubHTTPError as exc:
                status = exc.response.status_code if exc.response is not None else 0
                if status in (401, 403):
                    refused.append(f"{endpoint}: access refused (HTTP {status})")
                else:  # 429, 5xx, a proxy's error page: this endpoint could not answer
                    failures.append(f"{endpoint}: {_describe(exc)}")
            except Exception as exc:  # any transport or server failure: try the next one
                failures.append(f"{endpoint}: {_describe(exc)}")
        # An endpoint that answered "no" is final: peers are never asked instead.
        if refused:
            raise Refused("; ".join(refused + not_found))
        if not_found:
            raise NotFound("; ".join(not_found))
        raise HubError("no endpoint answered: " + "; ".join(failures))

    async def arevision(self, repo_type: str, repo_id: str, revision: str) -> RemoteRevision:
        return await anyio.to_thread.run_sync(self.revision, repo_type, repo_id, revision)
