"""The executor socket's frames (core/exec_frames.py): bytes in, values or
a FrameError out."""

from __future__ import annotations

import random
import struct

import pytest

from ctrlexec.core import exec_frames as ef
from tests.support.tables import each_case


def _field(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _body(*fields: bytes, argc: int | None = None, args: tuple[bytes, ...] = ()) -> bytes:
    count = len(args) if argc is None else argc
    return (
        b"".join(_field(f) for f in fields)
        + struct.pack(">I", count)
        + b"".join(_field(a) for a in args)
    )


REQUEST = ef.ExecRequest("r-1", "disp-a", "backup", b'{"x":1}', ("a b", "", "ü\n"))


def test_request_round_trip_matches_012_framing():
    frame = ef.encode_request(REQUEST)
    body = _body(b"r-1", b"disp-a", b"backup", b'{"x":1}', args=(b"a b", b"", "ü\n".encode()))
    assert frame == struct.pack(">I", len(body)) + body
    assert ef.request_length(frame[:4]) == len(body)
    assert ef.decode_request(frame[4:]) == REQUEST


BAD_REQUESTS_NAME_THE_RULE_CASES = [
    (b"", "truncated reqid length"),
    (_field(b"r") + struct.pack(">I", 99) + b"d", "dispatcher_id length 99 runs past"),
    (_body(b"r", b"d", b"../etc", b""), "not a valid script name"),
    (_body(b"r", b"d", b"s", b"", argc=257), "argc 257 exceeds 256"),
    (_body(b"r", b"d", b"s", b"", argc=2, args=(b"x",)), "truncated argument 2 length"),
    (_body(b"r", b"d", b"s", b"", args=(b"\xff",)), "argument 1 is not valid UTF-8"),
    (_body(b"r", b"d", b"s", b"", args=(b"a\x00b",)), "argument 1 contains a NUL"),
    (_body(b"r", b"d", b"s", b"") + b"extra", "5 unexpected bytes"),
    (_body(b"r" * 300, b"d", b"s", b""), "reqid longer than 256"),
]


def test_bad_requests_name_the_rule():
    def check(body, message):
        with pytest.raises(ef.FrameError) as info:
            ef.decode_request(body)
        assert message in str(info.value)

    each_case(BAD_REQUESTS_NAME_THE_RULE_CASES, check)


@pytest.mark.parametrize(
    "head, message",
    [
        (b"\x00\x00", "truncated length prefix"),
        (struct.pack(">I", 3), "too small"),
        (struct.pack(">I", ef.MAX_REQUEST + 1), "exceeds"),
        (b"\xff\xff\xff\xff", "exceeds"),
    ],
)
def test_length_prefix_is_bounded_before_reading(head, message):
    with pytest.raises(ef.FrameError, match=message):
        ef.request_length(head)


def test_encoding_refuses_what_the_executor_would():
    with pytest.raises(ef.FrameError, match="at most 256"):
        ef.encode_request(REQUEST.__class__("r", "d", "s", b"", ("x",) * 257))
    with pytest.raises(ef.FrameError, match="not valid UTF-8"):
        ef.encode_request(REQUEST.__class__("r", "d", "s", b"", ("\udcff",)))
    with pytest.raises(ef.FrameError, match="larger than"):
        ef.encode_request(REQUEST.__class__("r", "d", "s", b"x" * ef.MAX_REQUEST, ()))


def test_random_bodies_never_escape_as_other_errors():
    rng = random.Random(1234)
    for _ in range(3000):
        body = rng.randbytes(rng.randrange(0, 80))
        try:
            ef.decode_request(body)
        except ef.FrameError:
            pass


@pytest.mark.parametrize(
    "size, steps",
    [
        (10, (1, 2, 3)),  # every byte boundary of every record
        (ef.MAX_CHUNK + 10, (5, 4096, None)),  # output split over two records
    ],
)
def test_response_stream_in_any_split(size, steps):
    out = b"x" * size
    data = (
        ef.encode_output(ef.KIND_STDOUT, out)
        + ef.encode_output(ef.KIND_STDERR, b"warn\n")
        + ef.encode_end(ef.ExecEnd(3, True, ("stderr",), 7))
    )
    for step in steps:
        step = step or len(data)
        parser = ef.ResponseParser(1_000_000)
        end = None
        for start in range(0, len(data), step):
            end = parser.feed(data[start : start + step]) or end
        assert end == ef.ExecEnd(3, True, ("stderr",), 7)
        assert (bytes(parser.stdout), bytes(parser.stderr)) == (out, b"warn\n")


@pytest.mark.parametrize(
    "data, message",
    [
        (b"z\x00\x00\x00\x01a", "unknown record kind"),
        (b"o" + struct.pack(">I", ef.MAX_CHUNK + 1), "out of bounds"),
        (b"x" + struct.pack(">I", 3) + b"abc", "out of bounds"),
        (ef.encode_end(ef.ExecEnd(0)) + b"o", "data after the end record"),
        (ef.encode_output(ef.KIND_STDOUT, b"y" * 11), "more than 10 bytes of output"),
    ],
)
def test_bad_responses(data, message):
    with pytest.raises(ef.FrameError, match=message):
        ef.ResponseParser(10).feed(data)


def test_failure_is_stderr_and_exit_minus_one():
    parser = ef.ResponseParser(100)
    assert parser.feed(ef.encode_failure("executor: script not permitted\n")) == ef.ExecEnd(-1)
    assert bytes(parser.stderr) == b"executor: script not permitted\n"


def test_output_records_are_handed_over_as_they_are_parsed():
    seen: list[tuple[str, bytes]] = []
    parser = ef.ResponseParser(1_000, lambda name, chunk: seen.append((name, chunk)))
    parser.feed(ef.encode_output(ef.KIND_STDOUT, b"one\n")[:3])
    assert seen == []
    parser.feed(ef.encode_output(ef.KIND_STDOUT, b"one\n")[3:])
    assert seen == [("stdout", b"one\n")]
    parser.feed(ef.encode_output(ef.KIND_STDERR, b"warn") + ef.encode_end(ef.ExecEnd(0)))
    assert seen == [("stdout", b"one\n"), ("stderr", b"warn")]
