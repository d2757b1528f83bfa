"""HTTP framing of the ctrl-exec wire, with no I/O.

Every ctrl-exec server reads exactly one request per connection and answers
`HTTP/1.0` with two headers (Content-Type, Content-Length), then closes; the
pairing listener is the one place that writes two responses on a connection.
Clients send Content-Length and read a response by Content-Length or to EOF.

The reader and parser below are fed bytes and return values or raise
`FramingError`; the services own the sockets. Each limit is a named constant
with its reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

# 0.12 answers 431 on the 33rd header line (agent and API alike).
MAX_HEADER_LINES = 32
# 0.12 answers 413 when Content-Length exceeds 1 MiB (agent and API alike).
MAX_BODY = 1_048_576
# 0.12 has no line-length limit; an unbounded line is a memory attack, and no
# legitimate ctrl-exec client sends a header line near this size.
MAX_LINE = 8192
# Largest response a client accepts: a run result carries a script's stdout
# and stderr (each capped by the agent) JSON-escaped, so allow generous room.
MAX_RESPONSE_BODY = 64 * 1_048_576
# Responses of the pairing exchange are small (a cert and a CA).
MAX_PAIRING_RESPONSE = 1_048_576

PHRASES = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class FramingError(Exception):
    """A request or response that cannot be framed. `status` is the HTTP code a
    server answers with; `reason` the short text 0.12 puts in its body."""

    def __init__(self, status: int, reason: str, detail: str = ""):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.detail = detail or reason


class IncompleteMessage(Exception):
    """The peer closed before a whole message arrived."""


@dataclass
class Request:
    method: str
    path: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


def encode_json(value: object) -> bytes:
    """Compact UTF-8 JSON, as 0.12's encode_json writes it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def response_bytes(status: int, body: object) -> bytes:
    """One complete 0.12-style response: status line, the two headers, body."""
    payload = body if isinstance(body, bytes) else encode_json(body)
    head = (
        f"HTTP/1.0 {status} {PHRASES.get(status, 'Unknown')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode("ascii") + payload


def request_bytes(
    method: str, path: str, body: bytes | None, host: str = "", version: str = "HTTP/1.0"
) -> bytes:
    """A client request as we send it: few headers, always Content-Length on
    POST (0.12 reads no body without it)."""
    lines = [f"{method} {path} {version}"]
    if host:
        lines.append(f"Host: {host}")
    if body is not None:
        lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head + (body or b"")


def _parse_content_length(value: str) -> int:
    value = value.strip()
    if not value.isdigit() or not value.isascii():
        raise FramingError(400, "bad request", "invalid Content-Length")
    return int(value)


def parse_request_line(line: bytes) -> tuple[str, str, str]:
    """(method, path, version) of a request line without its line end. As
    0.12: split on whitespace, the version is informational; an empty line is
    400 `empty request`."""
    parts = line.decode("latin-1").split()
    if not parts:
        raise FramingError(400, "empty request", "empty request")
    method = parts[0]
    path = parts[1] if len(parts) > 1 else ""
    version = parts[2] if len(parts) > 2 else ""
    return method, path, version


class RequestReader:
    """Incremental request parser: `feed()` bytes until it returns a Request.

    Order of checks, as 0.12: request line (empty -> 400), header lines (the
    33rd -> 431), Content-Length (over the cap -> 413), then exactly that many
    body bytes. No Content-Length means no body.
    """

    def __init__(self, max_body: int = MAX_BODY, max_headers: int = MAX_HEADER_LINES):
        self._buffer = bytearray()
        self._max_body = max_body
        self._max_headers = max_headers
        self._request: Request | None = None
        self._header_count = 0
        self._body_length = 0
        self._state = "request-line"

    @property
    def started(self) -> bool:
        return bool(self._buffer) or self._state != "request-line"

    def _next_line(self) -> bytes | None:
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > MAX_LINE:
                self._raise_line_too_long()
            return None
        if end > MAX_LINE:
            self._raise_line_too_long()
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line.rstrip(b"\r")

    def _raise_line_too_long(self) -> None:
        if self._state == "request-line":
            raise FramingError(400, "bad request", "request line too long")
        raise FramingError(431, "too many headers", "header line too long")

    def feed(self, data: bytes) -> Request | None:
        self._buffer += data
        while True:
            if self._state == "request-line":
                line = self._next_line()
                if line is None:
                    return None
                self._start_request(line)
            elif self._state == "headers":
                line = self._next_line()
                if line is None:
                    return None
                if not line:
                    self._end_headers()
                else:
                    self._add_header(line)
            elif self._state == "body":
                if len(self._buffer) < self._body_length:
                    return None
                assert self._request is not None
                self._request.body = bytes(self._buffer[: self._body_length])
                del self._buffer[: self._body_length]
                self._state = "done"
                return self._request
            else:
                return self._request

    def finish(self) -> Request:
        """The peer closed its side: what we have must be a whole request."""
        if self._state == "request-line" and not self._buffer.strip():
            raise FramingError(400, "empty request", "empty request")
        if self._state == "done" and self._request is not None:
            return self._request
        raise IncompleteMessage("connection closed mid-request")

    def _start_request(self, line: bytes) -> None:
        self._request = Request(*parse_request_line(line))
        self._state = "headers"

    def _add_header(self, line: bytes) -> None:
        self._header_count += 1
        if self._header_count > self._max_headers:
            raise FramingError(
                431, "too many headers", f"more than {self._max_headers} header lines"
            )
        text = line.decode("latin-1")
        name, sep, value = text.partition(":")
        if not sep or not name:
            return  # 0.12 ignores lines that are not `Name: value`
        assert self._request is not None
        key, value = name.strip().lower(), value.strip()
        if key == "content-length" and self._request.headers.get(key, value) != value:
            # which one frames the body? a proxy may pick the other (smuggling)
            raise FramingError(400, "bad request", "conflicting Content-Length headers")
        self._request.headers[key] = value

    def _end_headers(self) -> None:
        assert self._request is not None
        raw = self._request.headers.get("content-length", "")
        length = _parse_content_length(raw) if raw else 0
        if length > self._max_body:
            raise FramingError(413, "request too large", f"body exceeds {self._max_body} bytes")
        self._body_length = length
        self._state = "body"


@dataclass
class Response:
    status: int
    phrase: str
    headers: dict[str, str]
    body: bytes


class ResponseReader:
    """Incremental response parser for clients. A response ends after
    Content-Length bytes, or at EOF when there is no Content-Length.
    Leftover bytes (a second response on the pairing connection) stay
    buffered for the next reader via `remainder`."""

    def __init__(self, max_body: int = MAX_RESPONSE_BODY):
        self._buffer = bytearray()
        self._max_body = max_body
        self._status: int | None = None
        self._phrase = ""
        self._headers: dict[str, str] = {}
        self._length: int | None = None
        self._state = "status-line"
        self._header_count = 0

    @property
    def remainder(self) -> bytes:
        return bytes(self._buffer)

    def _next_line(self) -> bytes | None:
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > MAX_LINE:
                raise FramingError(502, "response line too long")
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line.rstrip(b"\r")

    def feed(self, data: bytes) -> Response | None:
        self._buffer += data
        while True:
            if self._state == "status-line":
                line = self._next_line()
                if line is None:
                    return None
                self._parse_status(line)
                self._state = "headers"
            elif self._state == "headers":
                line = self._next_line()
                if line is None:
                    return None
                if line:
                    self._add_header(line)
                    continue
                raw = self._headers.get("content-length")
                if raw is not None:
                    try:
                        self._length = _parse_content_length(raw)
                    except FramingError:
                        raise FramingError(502, "invalid Content-Length in response")
                    if self._length > self._max_body:
                        raise FramingError(502, "response too large")
                self._state = "body"
            else:
                if self._length is None:
                    if len(self._buffer) > self._max_body:
                        raise FramingError(502, "response too large")
                    return None
                if len(self._buffer) < self._length:
                    return None
                body = bytes(self._buffer[: self._length])
                del self._buffer[: self._length]
                return self._response(body)

    def finish(self) -> Response:
        """EOF from the peer."""
        if self._state == "body" and self._length is None:
            body = bytes(self._buffer)
            self._buffer.clear()
            return self._response(body)
        raise IncompleteMessage("connection closed before a whole response arrived")

    def _parse_status(self, line: bytes) -> None:
        parts = line.decode("latin-1").split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise FramingError(502, "malformed status line")
        self._status = int(parts[1])
        self._phrase = parts[2] if len(parts) > 2 else ""

    def _add_header(self, line: bytes) -> None:
        self._header_count += 1
        if self._header_count > 100:
            raise FramingError(502, "too many response headers")
        name, sep, value = line.decode("latin-1").partition(":")
        if sep:
            self._headers[name.strip().lower()] = value.strip()

    def _response(self, body: bytes) -> Response:
        assert self._status is not None
        return Response(self._status, self._phrase, dict(self._headers), body)
