"""The ``hffs`` command line."""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from hffs import config, managed
from hffs.cache import HubCache
from hffs.console import err, expected_failures, fail, out
from hffs.progress import human_bytes

if TYPE_CHECKING:
    from hffs.jobs import JobPlan, JobSpec

# -h as well as --help, on every command (click passes it down to subcommands)
HELP = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    help="Hugging Face models from your peers first, the mirror and huggingface.co last.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings=HELP,
)
model_app = typer.Typer(
    help="Download, list, remove, import and search models.",
    no_args_is_help=True,
    context_settings=HELP,
)
conf_app = typer.Typer(help="Settings.", no_args_is_help=True, context_settings=HELP)
cache_conf_app = typer.Typer(
    help="The working directory (config, state, partial downloads).",
    no_args_is_help=True,
    context_settings=HELP,
)
app.add_typer(model_app, name="model")
app.add_typer(conf_app, name="conf")
conf_app.add_typer(cache_conf_app, name="cache")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"hffs {version('hffs')}")  # what out.print wrote, without importing rich
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Hugging Face models from your peers first, the mirror and huggingface.co last."""


RepoType = Annotated[str, typer.Option("--repo-type", help="model, dataset or space")]
FileOpt = Annotated[str | None, typer.Option("--file", help="Path of one file inside the repo")]
# The options hf download has, where they make sense on ls, rm and search too
FilenamesArg = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="[FILENAMES]...", help="Files (a trailing / means a folder), as for hf download"
    ),
]
IncludeOpt = Annotated[
    list[str] | None,
    typer.Option("--include", metavar="GLOB", help="Only paths matching; repeatable"),
]
ExcludeOpt = Annotated[
    list[str] | None,
    typer.Option("--exclude", metavar="GLOB", help="No paths matching; repeatable"),
]
CacheDirOpt = Annotated[
    Path | None,
    typer.Option("--cache-dir", metavar="DIR", help="The HF cache [default: HF_HUB_CACHE]"),
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print only what scripts need on stdout")
]


def _cache(cache_dir: Path | None = None) -> HubCache:
    return HubCache(cache_dir.expanduser().absolute() if cache_dir else config.hub_cache_dir())


def _chosen(
    paths: list[str],
    filenames: list[str] | None,
    include: list[str] | None,
    exclude: list[str] | None,
    file: str | None = None,
    context: str = "",
) -> list[str] | None:
    """The paths hf download's arguments select (None: no selection given, all of them);
    one clear line for arguments that cannot select."""
    from hffs.selection import SelectionError, select

    names = [*(filenames or []), *([file] if file else [])]
    if not names and not include and not exclude:
        return None
    try:
        chosen = select(paths, names, include or [], exclude or [])
    except SelectionError as exc:
        fail(f"{context}{exc}")
    for warning in chosen.warnings:
        err.print(f"[yellow]note:[/yellow] {warning}")
    return list(chosen.paths)


def _check_repo_type(repo_type: str) -> None:
    if repo_type not in ("model", "dataset", "space"):
        fail(f"--repo-type must be model, dataset or space, not {repo_type!r}")


# -- model -----------------------------------------------------------------


@model_app.command("add")
def model_add(
    repo_id: str,
    filenames: FilenamesArg = None,
    file: FileOpt = None,
    revision: Annotated[str, typer.Option(help="Branch, tag or commit")] = "main",
    repo_type: RepoType = "model",
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    local_dir: Annotated[
        Path | None,
        typer.Option(
            "--local-dir",
            metavar="DIR",
            help="Also place the files under DIR, as hf download --local-dir does",
        ),
    ] = None,
    cache_dir: CacheDirOpt = None,
    token: Annotated[
        str | None,
        typer.Option(metavar="TOKEN", help="HF token for upstream [default: HF_TOKEN]"),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only the path (no progress)")
    ] = False,
    force_download: Annotated[
        bool, typer.Option("--force-download", help="Fetch again even what is cached")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Say what would be fetched, sizes and holders; fetch nothing"
        ),
    ] = False,
    max_workers: Annotated[
        int | None, typer.Option("--max-workers", metavar="N", help="Files fetched at once")
    ] = None,
) -> None:
    """Download a repo revision or some of its files, as hf download does: peers first,
    then the mirror(s), then huggingface.co. Prints the snapshot (or local-dir) path,
    or the file's when one FILE is named; everything else goes to stderr."""
    _check_repo_type(repo_type)
    from hffs.jobs import JobSpec
    from hffs.selection import SelectionError, check_arguments

    names = [*(filenames or []), *([file] if file else [])]
    if local_dir is not None and cache_dir is not None:
        fail("--local-dir and --cache-dir cannot be used together (as in hf download)")
    if max_workers is not None and not 1 <= max_workers <= 64:
        fail("--max-workers must be 1..64")
    try:
        check_arguments(names, include or [], exclude or [])
    except SelectionError as exc:
        fail(str(exc))
    if [n for n in names if not n.endswith("/")] and (include or exclude) and not quiet:
        err.print("[yellow]note:[/yellow] --include/--exclude are ignored: files were named")
    cache = _cache(cache_dir)
    copies_to = None if local_dir is None else Path(os.path.realpath(local_dir.expanduser()))
    with expected_failures():
        cfg = config.Config.load()
        spec = JobSpec(
            repo_id,
            revision,
            repo_type,
            files=tuple(names) or None,
            include=tuple(include or ()),
            exclude=tuple(exclude or ()),
            token=token or config.hf_token(),
            cache_dir=str(cache.root.absolute()),
            endpoints=() if config.offline() else tuple(cfg.upstream_endpoints()),
            named=tuple(cfg.named_endpoints()),
            force=force_download,
            dry_run=dry_run,
            max_workers=max_workers,
            local_dir=None if copies_to is None else str(copies_to),
        )
        plan = _run_job(spec, quiet=quiet)
        if dry_run or plan is None:
            return
        single = len(names) == 1 and not names[0].endswith("/")
        folder = cache.snapshot_dir(repo_type, repo_id, plan.commit)
        if copies_to is not None:
            from hffs.local_dir import place

            folder = copies_to
            for f in plan.files:
                blob = cache.blob_path(repo_type, repo_id, f.file_id)
                place(folder, f.path, blob, plan.commit, f.file_id, force=force_download)
        result = folder.joinpath(*plan.files[0].path.split("/")) if single else folder
    # the one line on stdout, for scripts: path=$(hffs model add ...)
    out.print(str(result), highlight=False, soft_wrap=True)


def _run_job(spec: JobSpec, *, quiet: bool = False) -> JobPlan | None:
    """The daemon runs the job when one runs (the CLI only shows progress); else this
    process runs the same code. Returns the job's plan (None if it never planned)."""
    from rich.console import Console

    from hffs.daemonctl.client import DaemonClient, DaemonNotRunning
    from hffs.progress import DownloadProgress

    try:
        daemon: DaemonClient | None = DaemonClient.from_home(config.home_dir())
    except DaemonNotRunning:
        daemon = None
    console = Console(stderr=True, quiet=True) if quiet else err.console
    if quiet:  # only the path: not even huggingface_hub's no-symlinks warning
        warnings.simplefilter("ignore")
    with DownloadProgress(console) as progress:
        if daemon is not None:
            result = daemon.run_job(spec, progress)
        else:
            import anyio

            from hffs.fetch import run_local

            result = anyio.run(run_local, spec, progress, backend="asyncio")
    if spec.dry_run:
        progress.dry_run(out.console)
    else:
        progress.summary(result)
    return progress.plan


@model_app.command("ls")
def model_ls(
    repo_id: Annotated[
        str | None, typer.Option("--repo-id", help="List the files of this repo")
    ] = None,
    file: FileOpt = None,
    revision: Annotated[str | None, typer.Option(help="Only this revision")] = None,
    repo_type: RepoType = "model",
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    cache_dir: CacheDirOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """List cached repos, the files of a repo, or the local path of one file.

    --quiet prints repo ids, or the absolute paths of the files, one a line."""
    _check_repo_type(repo_type)
    cache = _cache(cache_dir)
    with expected_failures():
        if repo_id is None:
            if file or include or exclude:
                fail("--file, --include and --exclude need --repo-id")
            _print_repos(cache, quiet)
            return
        commit = None
        if revision is not None:
            commit = cache.read_ref(repo_type, repo_id, revision)
            if commit is None:
                fail(f"revision {revision!r} of {repo_id} is not in the cache")
        files = cache.files(repo_type, repo_id, commit)
        if not files:
            fail(f"{repo_id} ({repo_type}) is not in the cache {cache.root}")
        if include or exclude:
            keep = set(_chosen(sorted({f.path for f in files}), None, include, exclude) or [])
            files = [f for f in files if f.path in keep]
        if file is not None:
            main = cache.read_ref(repo_type, repo_id, "main")
            matches = sorted((f for f in files if f.path == file), key=lambda f: f.commit != main)
            if not matches:
                fail(f"{file} is not cached for {repo_id}")
            out.print(str(matches[0].local_path.absolute()), highlight=False, soft_wrap=True)
            return
        if quiet:
            for f in files:
                out.print(str(f.local_path.absolute()), highlight=False, soft_wrap=True)
            return
        from rich.table import Table

        table = Table("file", "size", "revision", "blob")
        for f in files:
            table.add_row(f.path, human_bytes(f.size), f.commit[:12], f.blob_id[:12])
        out.print(table)


def _print_repos(cache: HubCache, quiet: bool = False) -> None:
    if quiet:
        for _, repo_id in cache.iter_repos():
            out.print(repo_id, highlight=False, soft_wrap=True)
        return
    from rich.table import Table

    table = Table("repo", "type", "files", "size", "refs")
    for repo_type, repo_id in cache.iter_repos():
        s = cache.repo_summary(repo_type, repo_id)
        refs = ", ".join(f"{r}→{c[:7]}" for r, c in s.refs.items()) or ", ".join(
            c[:7] for c in s.commits
        )
        table.add_row(repo_id, repo_type, str(s.n_files), human_bytes(s.size), refs)
    if not table.rows:
        err.print(f"no models in {cache.root}")
        return
    out.print(table)


@model_app.command("rm")
def model_rm(
    repo_id: str,
    filenames: FilenamesArg = None,
    file: FileOpt = None,
    revision: Annotated[str, typer.Option(help="Branch, tag or commit")] = "main",
    repo_type: RepoType = "model",
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    cache_dir: CacheDirOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be removed; remove nothing")
    ] = False,
) -> None:
    """Remove files (chosen as hf download chooses them) or a whole revision; blobs no
    revision uses any more are freed."""
    _check_repo_type(repo_type)
    cache = _cache(cache_dir)
    with expected_failures():
        commit = cache.read_ref(repo_type, repo_id, revision)
        if commit is None:
            fail(f"nothing removed: revision {revision!r} of {repo_id} is not in the cache")
        held = sorted(f.path for f in cache.files(repo_type, repo_id, commit))
        chosen = _chosen(held, filenames, include, exclude, file, "nothing removed: ")
        if chosen is not None and not chosen:
            fail(f"nothing removed: no cached file of {repo_id}@{revision} matches")
        if dry_run:
            for path in chosen if chosen is not None else held:
                out.print(path, highlight=False, soft_wrap=True)
            err.print(f"[dry-run] would remove {len(chosen or held)} file(s); removed nothing")
            return
        if chosen is not None:
            for path in chosen:
                if not cache.remove_file(repo_type, repo_id, commit, path):
                    fail(f"nothing removed: {path} is not cached in {repo_id}@{revision}")
            what = (
                f"{chosen[0]} of {repo_id}@{revision}"
                if len(chosen) == 1
                else f"{len(chosen)} files of {repo_id}@{revision}"
            )
        else:
            cache.remove_commit(repo_type, repo_id, commit)
            managed.forget(config.home_dir(), repo_type, repo_id, commit)
            what = f"{repo_id}@{revision} ({commit[:12]})"
        freed = cache.collect_garbage(repo_type, repo_id)
        err.print(f"removed {what}; {len(freed)} blob(s) freed")
    _tell_daemon(lambda d: d.rescan())


@model_app.command("import")
def model_import(
    src_path: Path,
    repo_id: str,
    file: FileOpt = None,
    revision: Annotated[str | None, typer.Option(help="Commit hash, or a ref name")] = None,
    method: Annotated[str, typer.Option(help="cp, mv or ln")] = "cp",
    repo_type: RepoType = "model",
) -> None:
    """Adopt files already on disk (a file needs --file; a folder keeps its tree)."""
    _check_repo_type(repo_type)
    from hffs import importer

    if method not in importer.METHODS:
        fail(f"--method must be cp, mv or ln, not {method!r}")
    cache = _cache()
    with expected_failures():
        plan = importer.plan(src_path, file, revision)
        done = importer.run(cache, repo_type, repo_id, plan, method)
        managed.remember(config.home_dir(), repo_type, repo_id, plan.commit)
        err.print(
            f"imported {len(done)} file(s) into {repo_id} at {plan.commit[:12]} (ref {plan.ref})"
        )
    _tell_daemon(lambda d: d.rescan())


@model_app.command("search")
def model_search(
    repo_id: str,
    filenames: FilenamesArg = None,
    file: FileOpt = None,
    revision: Annotated[str, typer.Option(help="Branch, tag or commit")] = "main",
    repo_type: RepoType = "model",
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
) -> None:
    """Ask the DHT which peers hold a repo revision or some of its files."""
    _check_repo_type(repo_type)
    from hffs.cli_daemon import search_command
    from hffs.selection import SelectionError, check_arguments, select

    names = [*(filenames or []), *([file] if file else [])]
    try:
        check_arguments(names, include or [], exclude or [])
    except SelectionError as exc:
        fail(str(exc))

    def choose(paths: list[str]) -> list[str] | None:
        """What of one holder's files to show: a holder without the named file shows none."""
        if not names and not include and not exclude:
            return None
        try:
            return list(select(paths, names, include or [], exclude or []).paths)
        except SelectionError:
            return []

    search_command(repo_id, choose, revision, repo_type)


def _tell_daemon(action: Callable[..., object]) -> None:
    """Let a running daemon know the cache changed; no daemon is fine."""
    from hffs.daemonctl.client import DaemonClient, DaemonNotRunning

    try:
        action(DaemonClient.from_home(config.home_dir()))
    except DaemonNotRunning:
        pass
    except Exception as exc:  # the change itself is done; say so and go on
        err.print(f"[yellow]note:[/yellow] the daemon was not told of the change ({exc})")


# -- conf ------------------------------------------------------------------


@cache_conf_app.command("set")
def conf_cache_set(path: Path) -> None:
    """Set the working directory (it must exist)."""
    with expected_failures():
        home = config.set_home(path)
    out.print(str(home), highlight=False)
    if os.environ.get("HFFS_HOME"):
        err.print("[yellow]note:[/yellow] HFFS_HOME is set and overrides this setting")


@cache_conf_app.command("get")
def conf_cache_get() -> None:
    """Show the working directory in force (HFFS_HOME overrides what was set)."""
    out.print(str(config.home_dir()), highlight=False)


@cache_conf_app.command("reset")
def conf_cache_reset() -> None:
    """Go back to the default working directory."""
    config.reset_home()
    out.print(str(config.home_dir()), highlight=False)


# -- uninstall ---------------------------------------------------------------


@app.command()
def uninstall(yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask")] = False) -> None:
    """Remove hffs's configuration and the models it downloaded or imported."""
    home = config.home_dir()
    cache = _cache()
    entries = sorted(managed.load(home))
    if not yes:
        typer.confirm(
            f"Remove {home} and the {len(entries)} revision(s) hffs added to {cache.root}?",
            abort=True,
        )
    _tell_daemon(lambda d: d.stop())
    with expected_failures():
        for repo_type, repo_id, commit in entries:
            cache.remove_commit(repo_type, repo_id, commit)
            cache.collect_garbage(repo_type, repo_id)
        shutil.rmtree(home, ignore_errors=True)
        config.reset_home()
    err.print(f"removed {home} and {len(entries)} revision(s); now `pip uninstall hffs`")


def _mount_daemon_commands() -> None:
    from hffs.cli_daemon import daemon_app, peer_app

    app.add_typer(daemon_app, name="daemon", help="Start, stop and inspect the daemon.")
    app.add_typer(peer_app, name="peer", help="Saved peers: bootstrap nodes, always probed.")


_mount_daemon_commands()


def main() -> None:
    app(prog_name="hffs")


# `hffs download`: the same command as `hffs model add`, named as `hf download` is
app.command("download", help="Same as `hffs model add` (named like `hf download`).")(model_add)


if __name__ == "__main__":
    main()
