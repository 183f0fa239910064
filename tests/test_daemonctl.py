"""The control client's reader of a job's streamed progress lines (plain code, no I/O)."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st

from hffs.daemonctl.client import _lines

line = st.binary(max_size=300).map(lambda b: b.replace(b"\n", b""))


@settings(max_examples=300, deadline=None)
@given(st.lists(line, max_size=30), st.booleans(), st.integers(1, 700))
def test_lines_come_out_whole_whatever_the_reads(
    lines: list[bytes], trailing_newline: bool, block: int
) -> None:
    body = b"\n".join(lines) + (b"\n" if trailing_newline and lines else b"")
    got = list(_lines(io.BytesIO(body), block))
    want = body.split(b"\n")
    if want and want[-1] == b"":
        want.pop()  # the end of the last line is no line of its own
    assert got == want


def test_a_long_line_across_many_reads_is_one_line() -> None:
    big = b"x" * (5 << 20)
    assert list(_lines(io.BytesIO(big + b"\nend"), 4096)) == [big, b"end"]
