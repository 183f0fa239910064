"""Progress bars while downloading, and the closing tally of where bytes came from."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from hffs.fetch import AddReport
    from hffs.hub import RemoteFile, RemoteRevision


def human_bytes(n: float) -> str:
    """The one byte formatter of every hffs output: binary units (1 MiB = 1024 KiB)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class BytesColumn(ProgressColumn):
    """``done/total`` in human_bytes (rich's DownloadColumn would mix in decimal MB)."""

    def render(self, task: Task) -> Text:
        total = human_bytes(task.total) if task.total is not None else "?"
        return Text(f"{human_bytes(task.completed)}/{total}", style="progress.download")


class SpeedColumn(ProgressColumn):
    """The transfer rate in human_bytes per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{human_bytes(speed)}/s", style="progress.data.speed")


class DownloadProgress:
    """One bar per file plus a total, split live into bytes from peers and upstream."""

    def __init__(self, console: Console, rev: RemoteRevision, todo: list[RemoteFile]) -> None:
        self._progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            BytesColumn(),
            SpeedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[split]}", markup=False),
            console=console,
            transient=False,
            disable=not todo,
        )
        self._tasks: dict[str, TaskID] = {}
        self._todo = todo
        self._total = self._progress.add_task(
            f"{rev.repo_id}@{rev.commit[:7]}", total=sum(f.size for f in todo), split=""
        )
        self.peer_bytes = 0
        self.upstream_bytes = 0

    def __enter__(self) -> DownloadProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(None, None, None)

    def _task(self, f: RemoteFile) -> TaskID:
        if f.path not in self._tasks:
            self._tasks[f.path] = self._progress.add_task(f.path, total=f.size, split="")
        return self._tasks[f.path]

    def callback(self, f: RemoteFile) -> Callable[[str, bool, int], None]:
        task = self._task(f)
        got = 0

        def on_bytes(source: str, upstream: bool, n: int) -> None:
            nonlocal got
            if upstream:
                self.upstream_bytes += n
            else:
                self.peer_bytes += n
            split = f"peers {human_bytes(self.peer_bytes)} · hub {human_bytes(self.upstream_bytes)}"
            step = min(n, f.size - got)  # a retried file does not run past its size
            got += step
            self._progress.update(task, advance=step)
            self._progress.update(self._total, advance=step, split=split)

        return on_bytes

    def file_done(self, f: RemoteFile, *, from_cache: bool = False) -> None:
        task = self._task(f)
        self._progress.update(task, completed=f.size)
        if from_cache:
            self._progress.update(self._total, advance=f.size)

    @staticmethod
    def summary(console: Console, report: AddReport) -> None:
        rev = report.revision
        by_source: Counter[str] = Counter()
        for r in report.reports:
            by_source.update(r.bytes_by_source)
        total = sum(by_source.values())
        downloaded = len(report.reports)
        console.print(
            f"{rev.repo_id} at {rev.commit[:12]}: {downloaded} file(s) downloaded, "
            f"{report.cached} already cached, {human_bytes(total)} in {report.seconds:.1f} s"
            + (
                f" ({human_bytes(total / report.seconds)}/s)"
                if report.seconds > 0 and total
                else ""
            ),
            highlight=False,
        )
        if by_source:
            table = Table("source", "bytes", "share")
            for source, n in by_source.most_common():
                table.add_row(source, human_bytes(n), f"{100 * n / total:.0f}%")
            console.print(table)
