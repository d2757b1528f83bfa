import json

import pytest

from ctrlexec.core.http import MAX_BODY, FramingError, RequestReader, ResponseReader, response_bytes

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


def test_conflicting_content_length_headers_are_400():
    raw = b"POST /run HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\n{}xyz"
    with pytest.raises(FramingError) as refused:
        RequestReader().feed(raw)
    assert refused.value.status == 400


def test_repeated_equal_content_length_headers_are_one():
    raw = b"POST /run HTTP/1.1\r\nContent-Length: 2\r\ncontent-length:  2\r\n\r\n{}"
    assert RequestReader().feed(raw).body == b"{}"
