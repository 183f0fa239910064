"""A download job as the CLI asks for it and as its host reports it back.

``hffs model add`` builds a ``JobSpec``; whoever runs it (the daemon, or the CLI
itself when no daemon runs: one code path in hffs/fetch.py) reports to a
``JobListener``. Between processes the reports travel as one JSON object per line
(``to_event`` / ``replay``), and ``replay`` is the one parser of them on the CLI side.

Light on imports on purpose: the CLI talking to a daemon loads only this, the
control client and the progress bars.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from hffs.errors import HffsError

REPO_TYPES = ("model", "dataset", "space")
MAX_FILES = 100_000
MAX_TEXT = 4096
MAX_GLOBS = 256
MAX_WORKERS = 64
HOWS = ("downloaded", "cached", "hardlinked")


class JobFailed(HffsError):
    """The job's host reported a failure; the message is for the user."""


def _text(obj: Mapping[str, Any], name: str, *, optional: bool = False) -> str | None:
    value = obj.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT or "\x00" in value:
        raise ValueError(f"{name} must be a non-empty string")
    return value


def _count(obj: Mapping[str, Any], name: str) -> int:
    value = obj.get(name, 0)
    if type(value) is not int or value < 0:
        raise ValueError(f"{name} must be a non-negative integer")
    return value


@dataclass(frozen=True)
class JobSpec:
    """What to fetch: a revision of a repo, all of it or the chosen paths."""

    repo_id: str
    revision: str = "main"
    repo_type: str = "model"
    # hf download's selection (hffs/selection.py): FILENAMES (a trailing / is a folder)
    # and --include/--exclude globs; no names and no globs: every file of the revision
    files: tuple[str, ...] | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    token: str | None = None  # the asker's HF token; None: the host's own, if any
    cache_dir: str | None = None  # the asker's HF cache; None: the host's
    endpoints: tuple[str, ...] | None = None  # the asker's upstreams (() offline); None: host's
    named: tuple[str, ...] | None = None  # of those, the ones the asker chose (get its token)
    force: bool = False  # fetch again even what the cache holds
    dry_run: bool = False  # plan only: say what would be fetched (and from how many holders)
    max_workers: int | None = None  # files fetched at once; None: the host's default
    local_dir: str | None = None  # where the asker copies the files after (its room counts)

    def to_json(self) -> dict[str, Any]:
        return {
            "repo_id": self.repo_id,
            "revision": self.revision,
            "repo_type": self.repo_type,
            "files": list(self.files) if self.files is not None else None,
            "token": self.token,
            "cache_dir": self.cache_dir,
            "endpoints": list(self.endpoints) if self.endpoints is not None else None,
            "named": list(self.named) if self.named is not None else None,
            "force": self.force,
            "dry_run": self.dry_run,
            "include": list(self.include),
            "exclude": list(self.exclude),
            "max_workers": self.max_workers,
            "local_dir": self.local_dir,
        }

    @classmethod
    def from_json(cls, obj: Any) -> JobSpec:
        """The one parser of a job request; ValueError for anything malformed."""
        if not isinstance(obj, dict):
            raise ValueError("a job must be a JSON object")
        repo_type = obj.get("repo_type", "model")
        if repo_type not in REPO_TYPES:
            raise ValueError("repo_type must be model, dataset or space")
        files = obj.get("files")
        if files is not None:
            if not isinstance(files, list) or len(files) > MAX_FILES:
                raise ValueError("files must be a list of paths")
            if not all(isinstance(f, str) and f and len(f) <= MAX_TEXT for f in files):
                raise ValueError("files must be a list of paths")
        endpoints, named = obj.get("endpoints"), obj.get("named")
        for urls in (endpoints, named):
            if urls is None:
                continue
            if not isinstance(urls, list) or len(urls) > 16:
                raise ValueError("endpoints must be a list of URLs")
            for e in urls:
                if not isinstance(e, str) or not e.startswith(("http://", "https://")):
                    raise ValueError("endpoints must be http(s) URLs")
                if len(e) > MAX_TEXT or any(c.isspace() for c in e):
                    raise ValueError("endpoints must be http(s) URLs")
        for flag in ("force", "dry_run"):
            if not isinstance(obj.get(flag, False), bool):
                raise ValueError(f"{flag} must be true or false")
        globs = {}
        for name in ("include", "exclude"):
            value = obj.get(name, [])
            if not isinstance(value, list) or len(value) > MAX_GLOBS:
                raise ValueError(f"{name} must be a list of globs")
            if not all(isinstance(g, str) and g and len(g) <= MAX_TEXT for g in value):
                raise ValueError(f"{name} must be a list of globs")
            globs[name] = tuple(value)
        workers = obj.get("max_workers")
        if workers is not None and (type(workers) is not int or not 1 <= workers <= MAX_WORKERS):
            raise ValueError(f"max_workers must be 1..{MAX_WORKERS}")
        return cls(
            repo_id=str(_text(obj, "repo_id")),
            revision=str(_text(obj, "revision")),
            repo_type=repo_type,
            files=tuple(files) if files is not None else None,
            token=_text(obj, "token", optional=True),
            cache_dir=_text(obj, "cache_dir", optional=True),
            endpoints=tuple(endpoints) if endpoints is not None else None,
            named=tuple(named) if named is not None else None,
            force=obj.get("force", False),
            dry_run=obj.get("dry_run", False),
            include=globs["include"],
            exclude=globs["exclude"],
            max_workers=workers,
            local_dir=_text(obj, "local_dir", optional=True),
        )


@dataclass(frozen=True)
class PlannedFile:
    path: str
    size: int
    file_id: str
    holders: int | None = None  # peers holding it (asked for dry runs only)


@dataclass(frozen=True)
class JobPlan:
    """The resolved revision and what the job will fetch."""

    repo_type: str
    repo_id: str
    commit: str
    files: tuple[PlannedFile, ...]  # every file the job covers
    todo: tuple[str, ...]  # paths not in the cache yet
    endpoints: tuple[str, ...]  # upstream sources (bytes from them are "hub" bytes)
    note: str | None = None  # e.g. "using commit X that peers hold"


@dataclass
class JobResult:
    """What a finished job did, for the summary."""

    commit: str
    downloaded: int = 0
    cached: int = 0
    hardlinked: int = 0
    bytes_by_source: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


class JobListener(Protocol):
    """Where a running job reports (progress bars, or the control API's stream)."""

    def planned(self, plan: JobPlan) -> None: ...
    def on_bytes(self, path: str, source: str, upstream: bool, n: int) -> None: ...
    def file_done(self, path: str, how: str, by_source: Mapping[str, int]) -> None: ...


# -- on the wire ------------------------------------------------------------------


def plan_event(plan: JobPlan) -> dict[str, Any]:
    return {
        "event": "plan",
        "repo_type": plan.repo_type,
        "repo_id": plan.repo_id,
        "commit": plan.commit,
        "files": [
            {"path": f.path, "size": f.size, "file_id": f.file_id, "holders": f.holders}
            for f in plan.files
        ],
        "todo": list(plan.todo),
        "endpoints": list(plan.endpoints),
        "note": plan.note,
    }


def result_event(result: JobResult) -> dict[str, Any]:
    return {
        "event": "done",
        "commit": result.commit,
        "downloaded": result.downloaded,
        "cached": result.cached,
        "hardlinked": result.hardlinked,
        "bytes_by_source": result.bytes_by_source,
        "seconds": result.seconds,
    }


def _by_source(obj: Any) -> dict[str, int]:
    if not isinstance(obj, dict) or len(obj) > MAX_FILES:
        raise ValueError("bytes_by_source must be an object")
    return {str(_text({"s": k}, "s")): _count(obj, k) for k in obj}


def replay(event: Any, listener: JobListener) -> JobResult | None:
    """Hand one event from a job's host to ``listener``; the result once it is done.
    JobFailed for a reported failure, ValueError for a malformed event."""
    if not isinstance(event, dict):
        raise ValueError("an event must be an object")
    kind = event.get("event")
    if kind == "bytes":
        listener.on_bytes(
            str(_text(event, "path")),
            str(_text(event, "source")),
            event.get("upstream") is True,
            _count(event, "n"),
        )
    elif kind == "file":
        how = event.get("how")
        if how not in HOWS:
            raise ValueError("bad file event")
        listener.file_done(str(_text(event, "path")), how, _by_source(event.get("by_source", {})))
    elif kind == "plan":
        files = event.get("files")
        todo, endpoints = event.get("todo"), event.get("endpoints")
        if not isinstance(files, list) or not isinstance(todo, list):
            raise ValueError("bad plan event")
        if not isinstance(endpoints, list):
            raise ValueError("bad plan event")
        listener.planned(
            JobPlan(
                str(_text(event, "repo_type")),
                str(_text(event, "repo_id")),
                str(_text(event, "commit")),
                tuple(
                    PlannedFile(
                        str(_text(f, "path")),
                        _count(f, "size"),
                        str(_text(f, "file_id")),
                        _count(f, "holders") if f.get("holders") is not None else None,
                    )
                    for f in files
                    if isinstance(f, dict)
                ),
                tuple(str(_text({"p": p}, "p")) for p in todo),
                tuple(str(_text({"e": e}, "e")) for e in endpoints),
                _text(event, "note", optional=True),
            )
        )
    elif kind == "done":
        seconds = event.get("seconds", 0.0)
        return JobResult(
            str(_text(event, "commit")),
            _count(event, "downloaded"),
            _count(event, "cached"),
            _count(event, "hardlinked"),
            _by_source(event.get("bytes_by_source", {})),
            float(seconds) if isinstance(seconds, int | float) else 0.0,
        )
    elif kind == "error":
        raise JobFailed(str(_text(event, "message")))
    else:
        raise ValueError(f"unknown event {str(kind)[:40]!r}")
    return None
