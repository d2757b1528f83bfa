"""core/lines.py: lines of a byte stream, whatever the pieces it arrives in."""

import random

import pytest

from ctrlexec.core.lines import LineSplitter, LineTooLong


def split_all(pieces: list[bytes], max_line: int = 1_000) -> tuple[list[bytes], int]:
    splitter = LineSplitter(max_line)
    lines: list[bytes] = []
    for piece in pieces:
        lines += splitter.feed(piece)
    return lines, splitter.pending


def test_lines_come_out_whole_and_in_order_however_the_bytes_are_cut():
    rng = random.Random(20261129)
    for _ in range(300):
        wanted = [rng.randbytes(rng.randrange(0, 40)).replace(b"\n", b"") for _ in range(30)]
        stream = b"".join(line + b"\n" for line in wanted) + b"partial"
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randrange(0, 20)))
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        assert split_all(pieces) == (wanted, len(b"partial"))


def test_a_burst_of_many_small_lines():
    lines, pending = split_all([b"{}\n" * 50_000])
    assert lines == [b"{}"] * 50_000 and pending == 0


def test_a_long_line_a_byte_at_a_time_then_its_end():
    lines, pending = split_all([b"x"] * 900 + [b"\n"])
    assert lines == [b"x" * 900] and pending == 0


@pytest.mark.parametrize(
    "pieces", [[b"x" * 1_001], [b"x" * 600, b"x" * 401], [b"ok\n" + b"y" * 1_001]]
)
def test_an_unfinished_line_past_the_bound_is_refused(pieces):
    with pytest.raises(LineTooLong):
        split_all(pieces)


def test_a_line_at_the_bound_is_fine():
    assert split_all([b"x" * 1_000, b"\n"]) == ([b"x" * 1_000], 0)
