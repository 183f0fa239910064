"""The headers of a resolve answer, as the hub sends them: plain code without I/O."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from hffs.daemon.hub_api import Listing
from hffs.hub import RemoteFile
from swarm.peer_server import RangeError, parse_range

MAX_RANGE_HEADER = 200  # a Range longer than this is no byte range of any hub file


@dataclass(frozen=True)
class Span:
    """What a resolve answers: the status, the byte span ``[start, end)`` and headers."""

    status: int
    start: int
    end: int
    headers: dict[str, str]


@dataclass(frozen=True)
class BadRange:
    """A Range refused with 416 (the hub ignores a malformed one; so do we)."""

    detail: str
    headers: dict[str, str]


def file_headers(listing: Listing, f: RemoteFile) -> dict[str, str]:
    """X-Repo-Commit, ETag (and X-Linked-* for LFS) as huggingface_hub reads them."""
    name = quote(f.path.rsplit("/", 1)[-1])
    headers = {
        "X-Repo-Commit": listing.commit,
        "ETag": f'"{f.file_id}"',
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
        "Content-Disposition": f"inline; filename*=UTF-8''{name}; filename=\"{name}\";",
    }
    if f.lfs:
        headers["X-Linked-Etag"] = f'"{f.file_id}"'
        headers["X-Linked-Size"] = str(f.size)
    if listing.vouched is not None:  # the hub was not asked: say who vouched for it
        headers["X-HFFS-Vouched-By"] = listing.vouched.describe()
    return headers


def span_for(range_header: str | None, f: RemoteFile, headers: dict[str, str]) -> Span | BadRange:
    """The span a Range header asks of ``f``, with Content-Range/Length set."""
    headers = dict(headers)
    try:
        if range_header is not None and len(range_header) > MAX_RANGE_HEADER:
            raise RangeError(416, "Range header too long")
        span = parse_range(range_header, f.size)
    except RangeError as exc:
        if exc.status == 416:
            return BadRange(exc.detail, {**headers, "Content-Range": f"bytes */{f.size}"})
        span = None  # as the hub: a malformed Range is ignored
    except ValueError:  # digits beyond what int() takes: no file is that large
        return BadRange("Range out of bounds", {**headers, "Content-Range": f"bytes */{f.size}"})
    status, start, end = 200, 0, f.size
    if span is not None:
        status, (start, end) = 206, span
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{f.size}"
    headers["Content-Length"] = str(end - start)
    return Span(status, start, end, headers)
