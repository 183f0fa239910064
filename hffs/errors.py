"""The one base of the failures a user can act on (the CLI prints their message).

Importing this costs nothing, so the CLI catches every such failure without
importing the daemon or the downloader."""

from __future__ import annotations


class HffsError(Exception):
    """A failure with a message for the user: one line, saying what to do."""
