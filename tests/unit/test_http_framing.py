import json

import pytest

from ctrlexec.core.http import (
    MAX_BODY,
    MAX_LINE,
    MAX_RESPONSE_BODY,
    MAX_RESPONSE_HEADER_LINES,
    Request,
    RequestReader,
    ResponseReader,
    State,
    response_bytes,
)
from ctrlexec.errors import FramingError, IncompleteMessage
from tests.support.tables import each_case

LWP_RUN = (
    b"POST /run HTTP/1.1\r\nTE: deflate,gzip;q=0.3\r\nConnection: TE, close\r\n"
    b"Host: 127.0.0.1:17543\r\nUser-Agent: libwww-perl/6.68\r\nContent-Length: 18\r\n"
    b'Content-Type: application/json\r\n\r\n{"script":"echo"}\n'
)


def test_lwp_request_parses_in_one_piece():
    request = RequestReader().feed(LWP_RUN)
    assert request.method == "POST" and request.path == "/run"
    assert request.header("content-length") == "18"
    assert json.loads(request.body) == {"script": "echo"}


def test_request_parses_byte_by_byte():
    reader = RequestReader()
    result = None
    for i in range(len(LWP_RUN)):
        result = reader.feed(LWP_RUN[i : i + 1])
        if result:
            break
    assert result is not None and result.body.startswith(b'{"script"')


def test_no_content_length_means_no_body():
    request = RequestReader().feed(b"GET /capabilities HTTP/1.1\r\nHost: x\r\n\r\nignored")
    assert request.body == b""


def test_33rd_header_line_is_431():
    head = b"POST /ping HTTP/1.0\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(33))
    with pytest.raises(FramingError) as info:
        RequestReader().feed(head + b"\r\n")
    assert info.value.status == 431 and info.value.reason == "too many headers"


def test_32_header_lines_are_fine():
    head = b"POST /ping HTTP/1.0\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(32))
    assert RequestReader().feed(head + b"\r\n").method == "POST"


def test_oversized_content_length_is_413_before_reading():
    with pytest.raises(FramingError) as info:
        RequestReader().feed(b"POST /run HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1))
    assert info.value.status == 413 and info.value.reason == "request too large"


def test_empty_request_line_is_400():
    with pytest.raises(FramingError) as info:
        RequestReader().feed(b"\r\n")
    assert info.value.status == 400 and info.value.reason == "empty request"
    reader = RequestReader()
    with pytest.raises(FramingError):
        reader.finish()


def test_endless_line_is_bounded():
    with pytest.raises(FramingError):
        RequestReader().feed(b"G" * 10000)


def test_response_is_http10_with_two_headers():
    raw = response_bytes(403, {"error": "serial mismatch", "status": "forbidden"})
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.0 403 Forbidden"
    assert lines[1:] == [b"Content-Type: application/json", b"Content-Length: %d" % len(body)]
    assert json.loads(body) == {"error": "serial mismatch", "status": "forbidden"}


def test_two_responses_on_one_connection():
    stream = response_bytes(200, {"status": "pending", "reqid": "ab"}) + response_bytes(
        200, {"status": "denied", "reason": "approval timeout"}
    )
    first_reader = ResponseReader()
    first = first_reader.feed(stream)
    assert json.loads(first.body)["status"] == "pending"
    second = ResponseReader().feed(first_reader.remainder)
    assert json.loads(second.body)["reason"] == "approval timeout"


def test_response_without_length_ends_at_eof():
    reader = ResponseReader()
    assert reader.feed(b'HTTP/1.0 200 OK\r\n\r\n{"a":1}') is None
    assert json.loads(reader.finish().body) == {"a": 1}


# -- the framing tables: bytes in, events out ------------------------------------------------
#
# Each case is fed whole, and again one byte at a time: the outcome must not
# depend on how the bytes were split. Outcomes:
#   ("request", method, path, version, headers, body)
#   ("response", status, phrase, headers, body)
#   ("error", status, reason)    a FramingError
#   ("incomplete",)              the peer closed mid-message
#   ("more",)                    no message yet and the peer has not closed


def _summary(message) -> tuple:
    if isinstance(message, Request):
        return (
            "request",
            message.method,
            message.path,
            message.version,
            message.headers,
            message.body,
        )
    return ("response", message.status, message.phrase, message.headers, message.body)


def _chunks(data: bytes, step: int | None) -> list[bytes]:
    return [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]


def _events(make_reader, data: bytes, eof: bool, step: int | None) -> tuple:
    reader = make_reader()
    try:
        for chunk in _chunks(data, step):
            message = reader.feed(chunk)
            if message is not None:
                return _summary(message)
        if not eof:
            return ("more",)
        return _summary(reader.finish())
    except FramingError as exc:
        return ("error", exc.status, exc.reason)
    except IncompleteMessage:
        return ("incomplete",)


def _line(length: int) -> bytes:
    """A request line of exactly `length` bytes before its LF (CR included)."""
    return b"GET /" + b"a" * (length - len(b"GET / HTTP/1.0\r")) + b" HTTP/1.0\r\n"


def _headers(count: int) -> bytes:
    return b"".join(b"X-%d: y\r\n" % i for i in range(count))


LWP_HEADERS = {
    "te": "deflate,gzip;q=0.3",
    "connection": "TE, close",
    "host": "127.0.0.1:17543",
    "user-agent": "libwww-perl/6.68",
    "content-length": "18",
    "content-type": "application/json",
}

REQUESTS = {
    "0.12's client, whole": (
        LWP_RUN,
        True,
        ("request", "POST", "/run", "HTTP/1.1", LWP_HEADERS, b'{"script":"echo"}\n'),
    ),
    "bare LF line ends": (
        b"GET /ping HTTP/1.0\nHost: a\n\n",
        True,
        ("request", "GET", "/ping", "HTTP/1.0", {"host": "a"}, b""),
    ),
    "no version": (b"GET /x\r\n\r\n", True, ("request", "GET", "/x", "", {}, b"")),
    "lines that are not Name: value are ignored": (
        b"GET / HTTP/1.0\r\nnonsense\r\n: empty name\r\nA:  b \r\n\r\n",
        True,
        ("request", "GET", "/", "HTTP/1.0", {"a": "b"}, b""),
    ),
    "bytes after the body are not read": (
        b"POST /ping HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}GARBAGE",
        True,
        ("request", "POST", "/ping", "HTTP/1.0", {"content-length": "2"}, b"{}"),
    ),
    "empty request line": (b"\r\n", False, ("error", 400, "empty request")),
    "blank request line": (b"  \t \r\n", False, ("error", 400, "empty request")),
    "nothing, then EOF": (b"", True, ("error", 400, "empty request")),
    "line of MAX_LINE bytes": (
        _line(MAX_LINE) + b"\r\n",
        True,
        ("request", "GET", "/" + "a" * (MAX_LINE - 15), "HTTP/1.0", {}, b""),
    ),
    "request line over MAX_LINE": (_line(MAX_LINE + 1), False, ("error", 400, "bad request")),
    "endless request line": (b"G" * (MAX_LINE + 2), False, ("error", 400, "bad request")),
    "32 header lines": (
        b"POST /ping HTTP/1.0\r\n" + _headers(32) + b"\r\n",
        True,
        ("request", "POST", "/ping", "HTTP/1.0", {f"x-{i}": "y" for i in range(32)}, b""),
    ),
    "33rd header line": (
        b"POST /ping HTTP/1.0\r\n" + _headers(33),
        False,
        ("error", 431, "too many headers"),
    ),
    "header line over MAX_LINE": (
        b"POST /ping HTTP/1.0\r\nX: " + b"v" * MAX_LINE + b"\r\n",
        False,
        ("error", 431, "too many headers"),
    ),
    "Content-Length of 1 MiB waits for the body": (
        b"POST /run HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % MAX_BODY,
        False,
        ("more",),
    ),
    "Content-Length over 1 MiB, before any body byte": (
        b"POST /run HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1),
        False,
        ("error", 413, "request too large"),
    ),
    "negative Content-Length": (
        b"POST /run HTTP/1.0\r\nContent-Length: -1\r\n\r\n",
        False,
        ("error", 400, "bad request"),
    ),
    "non-ASCII digits in Content-Length": (
        "POST /run HTTP/1.0\r\nContent-Length: \u0661\r\n\r\n".encode(),
        False,
        ("error", 400, "bad request"),
    ),
    "EOF in the headers": (b"POST /run HTTP/1.0\r\nA: b\r\n", True, ("incomplete",)),
    "EOF in the body": (
        b"POST /run HTTP/1.0\r\nContent-Length: 5\r\n\r\nabc",
        True,
        ("incomplete",),
    ),
    "EOF in the request line": (b"GET /x", True, ("incomplete",)),
}


def test_request_framing():
    def check(data, eof, expected):
        assert _events(RequestReader, data, eof, None) == expected
        assert _events(RequestReader, data, eof, 1) == expected, "fed one byte at a time"

    each_case(REQUESTS.values(), check, ids=REQUESTS.keys())


def _status(line: bytes) -> bytes:
    return line + b"\r\nContent-Length: 2\r\n\r\n{}"


RESPONSES = {
    "0.12's answer": (
        response_bytes(200, {}),
        False,
        (
            "response",
            200,
            "OK",
            {"content-type": "application/json", "content-length": "2"},
            b"{}",
        ),
    ),
    "no Content-Length: the body runs to EOF": (
        b"HTTP/1.0 403 Forbidden\r\n\r\nbody",
        True,
        ("response", 403, "Forbidden", {}, b"body"),
    ),
    "no phrase": (b"HTTP/1.1 204\r\n\r\n", True, ("response", 204, "", {}, b"")),
    "not HTTP": (_status(b"SSH-2.0-OpenSSH"), False, ("error", 502, "malformed status line")),
    "status not a number": (
        _status(b"HTTP/1.0 OK"),
        False,
        ("error", 502, "malformed status line"),
    ),
    "status line over MAX_LINE": (
        _status(b"HTTP/1.0 200 " + b"O" * MAX_LINE),
        False,
        ("error", 502, "response line too long"),
    ),
    "endless status line": (b"H" * (MAX_LINE + 2), False, ("error", 502, "response line too long")),
    "header line over MAX_LINE": (
        b"HTTP/1.0 200 OK\r\nX: " + b"v" * MAX_LINE + b"\r\n\r\n",
        False,
        ("error", 502, "response line too long"),
    ),
    "MAX_RESPONSE_HEADER_LINES header lines": (
        b"HTTP/1.0 200 OK\r\n" + _headers(MAX_RESPONSE_HEADER_LINES) + b"\r\n",
        True,
        ("response", 200, "OK", {f"x-{i}": "y" for i in range(MAX_RESPONSE_HEADER_LINES)}, b""),
    ),
    "one header line more": (
        b"HTTP/1.0 200 OK\r\n" + _headers(MAX_RESPONSE_HEADER_LINES + 1),
        False,
        ("error", 502, "too many response headers"),
    ),
    "Content-Length over the cap": (
        b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_RESPONSE_BODY + 1),
        False,
        ("error", 502, "response too large"),
    ),
    "invalid Content-Length": (
        b"HTTP/1.0 200 OK\r\nContent-Length: 1e3\r\n\r\n",
        False,
        ("error", 502, "invalid Content-Length in response"),
    ),
    "EOF before the headers end": (b"HTTP/1.0 200 OK\r\nA: b\r\n", True, ("incomplete",)),
    "EOF before Content-Length bytes": (
        b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\n{}",
        True,
        ("incomplete",),
    ),
}


def test_response_framing():
    def check(data, eof, expected):
        assert _events(ResponseReader, data, eof, None) == expected
        assert _events(ResponseReader, data, eof, 1) == expected, "fed one byte at a time"

    each_case(RESPONSES.values(), check, ids=RESPONSES.keys())


def test_a_response_read_to_eof_is_bounded():
    reader = ResponseReader(max_body=10)
    reader.feed(b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * 10)
    with pytest.raises(FramingError) as info:
        reader.feed(b"x")
    assert (info.value.status, info.value.reason) == (502, "response too large")


def test_states_are_named():
    reader = RequestReader()
    assert reader.state is State.START_LINE
    reader.feed(b"POST /run HTTP/1.0\r\n")
    assert reader.state is State.HEADERS
    reader.feed(b"Content-Length: 2\r\n\r\n")
    assert reader.state is State.BODY
    reader.feed(b"{}")
    assert reader.state is State.DONE


# The agent reads only the request line from a peer it does not trust, and
# refuses it by path (0.12 reads nothing more): what follows the line is never
# framed, so it cannot turn the refusal into a 431 or a 413.
REQUEST_LINES = {
    "a line, then too many headers": (
        b"POST /run HTTP/1.1\r\n" + _headers(40) + b"Content-Length: 99999999\r\n\r\n",
        False,
        ("line", "POST", "/run", "HTTP/1.1"),
    ),
    "a line cut short by EOF": (b"POST /run", True, ("line", "POST", "/run", "")),
    "a line with CR cut short by EOF": (
        b"GET /x HTTP/1.0\r",
        True,
        ("line", "GET", "/x", "HTTP/1.0"),
    ),
    "nothing, then EOF": (b"", True, ("error", 400, "empty request")),
    "an empty line": (b"\r\nGET / HTTP/1.0\r\n", False, ("error", 400, "empty request")),
    "a line over MAX_LINE": (_line(MAX_LINE + 1), False, ("error", 400, "bad request")),
    "no line end yet": (b"GET /ping HTTP/1.0", False, ("more",)),
}


def _line_events(data: bytes, eof: bool, step: int | None) -> tuple:
    reader = RequestReader()
    try:
        for chunk in _chunks(data, step):
            line = reader.feed_request_line(chunk)
            if line is not None:
                return ("line", *line)
        if not eof:
            return ("more",)
        return ("line", *reader.finish_request_line())
    except FramingError as exc:
        return ("error", exc.status, exc.reason)


def test_request_line_only():
    def check(data, eof, expected):
        assert _line_events(data, eof, None) == expected
        assert _line_events(data, eof, 1) == expected, "fed one byte at a time"

    each_case(REQUEST_LINES.values(), check, ids=REQUEST_LINES.keys())


def test_conflicting_content_length_headers_are_400():
    raw = b"POST /run HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\n{}xyz"
    with pytest.raises(FramingError) as refused:
        RequestReader().feed(raw)
    assert refused.value.status == 400


def test_repeated_equal_content_length_headers_are_one():
    raw = b"POST /run HTTP/1.1\r\nContent-Length: 2\r\ncontent-length:  2\r\n\r\n{}"
    assert RequestReader().feed(raw).body == b"{}"
