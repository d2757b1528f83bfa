"""core.sse: who asked for an event stream, how events are written, and
how the scripts' output is cut into lines."""

from __future__ import annotations

import json

from ctrlexec.core import sse
from tests.support.tables import each_case

WANTS_EVENT_STREAM_CASES = [
    ("text/event-stream", True),
    ("TEXT/Event-Stream", True),
    ("application/json, text/event-stream", True),
    ("text/event-stream; q=0.5", True),
    ("text/event-stream;q=0", False),
    ("text/event-stream;q=0.0, application/json", False),
    ("text/event-stream;q=bogus", False),
    ("*/*", False),
    ("text/*", False),
    ("application/json", False),
    ("", False),
    ("text/event-streams", False),
    ("x" * sse.MAX_ACCEPT + ", text/event-stream", False),
]


def test_wants_event_stream():
    def check(accept, wanted):
        assert sse.wants_event_stream(accept) is wanted

    each_case(WANTS_EVENT_STREAM_CASES, check)


def test_event_is_one_data_line_whatever_the_text():
    data = {"host": "web-01", "line": "two\nlines\r and \u2028 unicode é"}
    encoded = sse.message("output", data)
    assert encoded.endswith(b"\n\n")
    name, payload = encoded[:-2].decode().split("\n")
    assert name == "event: output"
    assert json.loads(payload.removeprefix("data: ")) == data


def test_event_with_a_lone_surrogate_does_not_raise():
    assert b"event: output" in sse.message("output", {"line": "\udcff"})


def test_head_has_no_length():
    head = sse.head()
    assert head.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"Content-Type: text/event-stream\r\n" in head
    assert b"Content-Length" not in head and head.endswith(b"\r\n\r\n")


def test_lines_are_whole_per_host_and_stream():
    lines = sse.LineSplitter()
    assert lines.feed("a", "stdout", "one\ntw") == ["one"]
    assert lines.feed("b", "stdout", "other\n") == ["other"]
    assert lines.feed("a", "stderr", "err") == []
    assert lines.feed("a", "stdout", "o\n\nthree") == ["two", ""]
    assert lines.flush("a") == [("stdout", "three"), ("stderr", "err")]
    assert lines.flush("a") == [] and lines.flush("b") == []


def test_a_line_without_end_comes_out_in_bounded_pieces():
    lines = sse.LineSplitter(max_line=4)
    assert lines.feed("a", "stdout", "abcdefghij") == ["abcd", "efgh"]
    assert lines.feed("a", "stdout", "k\nlmnopqrs\n") == ["ijk", "lmno", "pqrs"]
    assert lines.flush("a") == []
