"""Progress bars while downloading, and the closing tally of where bytes came from."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from hffs.jobs import JobPlan, JobResult

# rich.progress and rich.table are imported when a bar or a table is drawn: commands that
# only format sizes (hffs model ls, daemon status) import this module too.


def human_bytes(n: float) -> str:
    """The one byte formatter of every hffs output: binary units (1 MiB = 1024 KiB)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _bars(console: Console) -> Progress:
    """The bars: name, bar, done/total and speed in human_bytes, time left, the split."""
    from rich.progress import (
        BarColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class BytesColumn(ProgressColumn):
        """``done/total`` in human_bytes (rich's DownloadColumn would mix in decimal MB)."""

        def render(self, task: Task) -> Text:
            total = human_bytes(task.total) if task.total is not None else "?"
            return Text(f"{human_bytes(task.completed)}/{total}", style="progress.download")

    class SpeedColumn(ProgressColumn):
        """The transfer rate in human_bytes per second."""

        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            text = "" if speed is None else f"{human_bytes(speed)}/s"
            return Text(text, style="progress.data.speed")

    return Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        BytesColumn(),
        SpeedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[split]}", markup=False),
        console=console,
        transient=False,
    )


class DownloadProgress:
    """A job's ``JobListener`` for the terminal: one bar per file to fetch plus a total,
    split live into bytes from peers and from upstream; then the closing tally."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._sizes: dict[str, int] = {}
        self._got: dict[str, int] = {}
        self._total: TaskID | None = None
        self._endpoints: set[str] = set()
        self.plan: JobPlan | None = None
        self.peer_bytes = 0
        self.upstream_bytes = 0

    def __enter__(self) -> DownloadProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)

    # -- JobListener ---------------------------------------------------------------

    def planned(self, plan: JobPlan) -> None:
        self.plan = plan
        self._endpoints = set(plan.endpoints)
        if plan.note:
            self.console.print(f"[yellow]note:[/yellow] {plan.note}", highlight=False)
        sizes = {f.path: f.size for f in plan.files}
        todo = [p for p in plan.todo if p in sizes]
        if not todo:
            return
        self._progress = _bars(self.console)
        self._progress.__enter__()
        self._total = self._progress.add_task(
            f"{plan.repo_id}@{plan.commit[:7]}", total=sum(sizes[p] for p in todo), split=""
        )
        for p in todo:
            self._sizes[p] = sizes[p]
            self._got[p] = 0
            self._tasks[p] = self._progress.add_task(p, total=sizes[p], split="")

    def on_bytes(self, path: str, source: str, upstream: bool, n: int) -> None:
        if upstream:
            self.upstream_bytes += n
        else:
            self.peer_bytes += n
        task = self._tasks.get(path)
        if self._progress is None or task is None or self._total is None:
            return
        split = f"peers {human_bytes(self.peer_bytes)} · hub {human_bytes(self.upstream_bytes)}"
        step = min(n, self._sizes[path] - self._got[path])  # a retried file stops at its size
        self._got[path] += step
        self._progress.update(task, advance=step)
        self._progress.update(self._total, advance=step, split=split)

    def file_done(self, path: str, how: str, by_source: Mapping[str, int]) -> None:
        task = self._tasks.get(path)
        if self._progress is None or task is None or self._total is None:
            return
        left = self._sizes[path] - self._got[path]
        self._got[path] = self._sizes[path]
        self._progress.update(task, completed=self._sizes[path])
        self._progress.update(self._total, advance=left)

    # -- the end -------------------------------------------------------------------

    def summary(self, result: JobResult) -> None:
        plan = self.plan
        name = plan.repo_id if plan else "?"
        by_source = Counter(result.bytes_by_source)
        total = sum(by_source.values())
        seconds = result.seconds
        rate = f" ({human_bytes(total / seconds)}/s)" if seconds > 0 and total else ""
        held = f"{result.cached} already cached"
        if result.hardlinked:
            held += f", {result.hardlinked} linked from another repo"
        self.console.print(
            f"{name} at {result.commit[:12]}: {result.downloaded} file(s) downloaded, "
            f"{held}, {human_bytes(total)} in {seconds:.1f} s{rate}",
            highlight=False,
            soft_wrap=True,
        )
        if by_source:
            from rich.table import Table

            table = Table("source", "bytes", "share")
            for source, n in by_source.most_common():
                table.add_row(source, human_bytes(n), f"{100 * n / total:.0f}%")
            self.console.print(table)

    def dry_run(self, out: Console) -> None:
        """What would be fetched, on ``out`` (stdout: it is the command's result), as hf
        download --dry-run says it, plus how many peers hold each file."""
        plan = self.plan
        if plan is None:
            return
        todo = set(plan.todo)
        total = sum(f.size for f in plan.files if f.path in todo)
        out.print(
            f"[dry-run] {plan.repo_id} at {plan.commit[:12]}: would fetch {len(todo)} file(s) "
            f"(out of {len(plan.files)}) totalling {human_bytes(total)}",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
        from rich.table import Table

        table = Table("file", "size", "peers holding it", box=None)
        for f in sorted(plan.files, key=lambda f: f.path):
            if f.path in todo:
                held = "-" if f.holders is None else str(f.holders)
                table.add_row(f.path, human_bytes(f.size), held)
            else:
                table.add_row(f.path, "-", "cached")
        out.print(table, soft_wrap=True)
