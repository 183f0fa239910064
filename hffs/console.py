"""How every command talks to the user: results on stdout, messages and errors on
stderr, and an expected failure as one clear line with exit code 1."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import typer

if TYPE_CHECKING:
    from rich.console import Console


class LazyConsole:
    """A rich Console made when first used: importing rich costs ~30 ms, which commands
    that print nothing through it (``hffs --version``) need not pay."""

    def __init__(self, *, stderr: bool = False) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self._stderr)
        return self._console

    def print(self, *objects: Any, **kwargs: Any) -> None:
        self.console.print(*objects, **kwargs)


out = LazyConsole()
err = LazyConsole(stderr=True)


def fail(message: str) -> NoReturn:
    # soft_wrap: one line even when stderr is not a terminal (rich would wrap at 80)
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


@contextmanager
def expected_failures() -> Iterator[None]:
    """Turn the failures a user can meet into one clear line and exit code 1."""
    from hffs.errors import HffsError

    try:
        yield
    except HffsError as exc:
        fail(str(exc))
    except PermissionError as exc:
        fail(f"permission denied: {exc.filename or exc}; choose a writable folder")
    except OSError as exc:
        fail(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}")
    except KeyboardInterrupt:
        fail("interrupted; run the same command again to resume")
