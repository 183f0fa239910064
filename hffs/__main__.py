"""``python -m hffs``: the same as the ``hffs`` command."""

from hffs.cli import main

main()
