"""HTTP framing of the ctrl-exec wire, with no I/O.

Every ctrl-exec server reads exactly one request per connection and answers
`HTTP/1.0` with two headers (Content-Type, Content-Length), then closes; the
pairing listener is the one place that writes two responses on a connection.
Clients send Content-Length and read a response by Content-Length or to EOF.

Theory of operation. One parser, fed bytes by whoever owns the socket, walks
the same states for a request (servers: agent, API, pairing) and a response
(clients: dispatcher to agent, agent pairing and self-check):

    START_LINE --line--> HEADERS --empty line--> BODY --length bytes--> DONE

Lines end at LF (a CR before it is dropped) and are bounded by MAX_LINE. The
two readers differ only in their start line, their limits and the status a
violation maps to: a server answers 0.12's codes (400, 431, 413), a client
fails the exchange with 502 (no peer of ours sends such a response). The
readers raise `FramingError`, or `IncompleteMessage` when the peer closes
early; they never touch a socket. Each limit is a named constant with its
reason.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ..errors import FramingError, IncompleteMessage

# 0.12 answers 431 on the 33rd header line (agent and API alike).
MAX_HEADER_LINES = 32
# 0.12 answers 413 when Content-Length exceeds 1 MiB (agent and API alike).
MAX_BODY = 1_048_576
# 0.12 has no line-length limit; an unbounded line is a memory attack, and no
# legitimate ctrl-exec client or server sends a start or header line near this
# size.
MAX_LINE = 8192
# 0.12's servers send two header lines; a peer sending more than this many is
# not a ctrl-exec server, and each line costs memory.
MAX_RESPONSE_HEADER_LINES = 100
# Largest response a client accepts: a run result carries a script's stdout
# and stderr (each capped by the agent) JSON-escaped, so allow generous room.
MAX_RESPONSE_BODY = 64 * 1_048_576
# Responses of the pairing exchange are small (a cert and a CA).
MAX_PAIRING_RESPONSE = 1_048_576
# What a client answers its caller when a response cannot be framed.
BAD_GATEWAY = 502

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


class State(enum.Enum):
    """Where a reader is in a message."""

    START_LINE = "start line"  # the request line or the status line
    HEADERS = "headers"
    BODY = "body"
    DONE = "done"


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


def response_bytes(status: int, body: object, content_type: str = "application/json") -> bytes:
    """One complete 0.12-style response: status line, the two headers, body."""
    payload = body if isinstance(body, bytes) else encode_json(body)
    head = (
        f"HTTP/1.0 {status} {PHRASES.get(status, 'Unknown')}\r\n"
        f"Content-Type: {content_type}\r\n"
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


@dataclass
class Response:
    status: int
    phrase: str
    headers: dict[str, str]
    body: bytes


Message = TypeVar("Message", Request, Response)


class _Reader(Generic[Message]):
    """The state machine both readers share: start line, header lines, body.
    Subclasses say how to read the start line, how long the body is, and
    which error each violation is."""

    def __init__(self, max_headers: int, max_body: int):
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer already searched for a line end
        self._state = State.START_LINE
        self._max_headers = max_headers
        self._max_body = max_body
        self._headers: dict[str, str] = {}
        self._header_count = 0
        self._length: int | None = None  # None: the body runs to EOF
        self._message: Message | None = None

    @property
    def state(self) -> State:
        return self._state

    def feed(self, data: bytes) -> Message | None:
        """Take bytes; the whole message once it has arrived, else None."""
        self._buffer += data
        while self._state is not State.DONE:
            if self._state is State.START_LINE:
                if not self._read_start_line():
                    return None
            elif self._state is State.HEADERS:
                line = self._next_line()
                if line is None:
                    return None
                if line:
                    self._add_header(line)
                else:
                    self._length = self._body_length()
                    self._state = State.BODY
            else:
                body = self._take_body()
                if body is None:
                    return None
                self._message = self._complete(body)
                self._state = State.DONE
        return self._message

    def _read_start_line(self) -> bool:
        """Frame the start line if it has arrived; False while it has not."""
        line = self._next_line()
        if line is None:
            return False
        self._start(line)
        self._state = State.HEADERS
        return True

    def _next_line(self) -> bytes | None:
        # Search only what arrived since the last look: a peer that sends a
        # line a byte at a time costs linear time, not quadratic.
        end = self._buffer.find(b"\n", self._scanned)
        if end > MAX_LINE or (end < 0 and len(self._buffer) > MAX_LINE):
            raise self._line_too_long()
        if end < 0:
            self._scanned = len(self._buffer)
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        self._scanned = 0
        return line.rstrip(b"\r")

    def _add_header(self, line: bytes) -> None:
        self._header_count += 1
        if self._header_count > self._max_headers:
            raise self._too_many_headers()
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or not name:
            return  # 0.12 ignores lines that are not `Name: value`
        key, value = name.strip().lower(), value.strip()
        if key == "content-length" and self._headers.get(key, value) != value:
            # which one frames the body? a proxy may pick the other (smuggling)
            raise self._conflicting_lengths()
        self._headers[key] = value

    def _take_body(self) -> bytes | None:
        if self._length is None:
            if len(self._buffer) > self._max_body:
                raise self._body_too_large()
            return None  # read to EOF: finish() completes it
        if len(self._buffer) < self._length:
            return None
        body = bytes(self._buffer[: self._length])
        del self._buffer[: self._length]
        return body

    # what differs between a request and a response
    def _start(self, line: bytes) -> None:
        raise NotImplementedError

    def _body_length(self) -> int | None:
        raise NotImplementedError

    def _complete(self, body: bytes) -> Message:
        raise NotImplementedError

    def _line_too_long(self) -> FramingError:
        raise NotImplementedError

    def _too_many_headers(self) -> FramingError:
        raise NotImplementedError

    def _body_too_large(self) -> FramingError:
        raise NotImplementedError

    def _conflicting_lengths(self) -> FramingError:
        raise NotImplementedError


class RequestReader(_Reader[Request]):
    """Incremental request parser for servers: `feed()` bytes until it
    returns a Request.

    Order of checks, as 0.12: request line (empty -> 400), header lines (the
    33rd -> 431), Content-Length (over the cap -> 413, before any body byte
    is read), then exactly that many body bytes. No Content-Length means no
    body.
    """

    def __init__(self, max_body: int = MAX_BODY, max_headers: int = MAX_HEADER_LINES):
        super().__init__(max_headers, max_body)
        self._request_line: tuple[str, str, str] | None = None

    def feed_request_line(self, data: bytes) -> tuple[str, str, str] | None:
        """Take bytes but frame only the request line: (method, path,
        version) once it has arrived, else None. For a peer whose request is
        refused by its path alone (0.12 reads nothing more from it)."""
        self._buffer += data
        if self._state is State.START_LINE and not self._read_start_line():
            return None
        return self._request_line

    def finish_request_line(self) -> tuple[str, str, str]:
        """The peer closed before a line end: as 0.12, what came is the
        request line (nothing at all: 400 `empty request`)."""
        if self._state is State.START_LINE:
            self._start(bytes(self._buffer).rstrip(b"\r"))
            self._buffer.clear()
            self._scanned = 0
            self._state = State.HEADERS
        assert self._request_line is not None
        return self._request_line

    def finish(self) -> Request:
        """The peer closed its side: what we have must be a whole request."""
        if self._state is State.START_LINE and not self._buffer.strip():
            raise FramingError(400, "empty request", "empty request")
        if self._state is State.DONE and self._message is not None:
            return self._message
        raise IncompleteMessage("connection closed mid-request")

    def _start(self, line: bytes) -> None:
        self._request_line = parse_request_line(line)

    def _body_length(self) -> int:
        raw = self._headers.get("content-length", "")
        length = _parse_content_length(raw) if raw else 0
        if length > self._max_body:
            raise self._body_too_large()
        return length

    def _complete(self, body: bytes) -> Request:
        assert self._request_line is not None
        return Request(*self._request_line, headers=self._headers, body=body)

    def _line_too_long(self) -> FramingError:
        if self._state is State.START_LINE:
            return FramingError(400, "bad request", "request line too long")
        return FramingError(431, "too many headers", "header line too long")

    def _too_many_headers(self) -> FramingError:
        return FramingError(431, "too many headers", f"more than {self._max_headers} header lines")

    def _body_too_large(self) -> FramingError:
        return FramingError(413, "request too large", f"body exceeds {self._max_body} bytes")

    def _conflicting_lengths(self) -> FramingError:
        return FramingError(400, "bad request", "conflicting Content-Length headers")


class ResponseReader(_Reader[Response]):
    """Incremental response parser for clients. A response ends after
    Content-Length bytes, or at EOF when there is no Content-Length.
    Leftover bytes (a second response on the pairing connection) stay
    buffered for the next reader via `remainder`."""

    def __init__(self, max_body: int = MAX_RESPONSE_BODY):
        super().__init__(MAX_RESPONSE_HEADER_LINES, max_body)
        self._status = 0
        self._phrase = ""

    @property
    def remainder(self) -> bytes:
        return bytes(self._buffer)

    def finish(self) -> Response:
        """EOF from the peer."""
        if self._state is State.BODY and self._length is None:
            body = bytes(self._buffer)
            self._buffer.clear()
            self._message = self._complete(body)
            self._state = State.DONE
        if self._state is State.DONE and self._message is not None:
            return self._message
        raise IncompleteMessage("connection closed before a whole response arrived")

    def _start(self, line: bytes) -> None:
        parts = line.decode("latin-1").split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise FramingError(BAD_GATEWAY, "malformed status line")
        self._status = int(parts[1])
        self._phrase = parts[2] if len(parts) > 2 else ""

    def _body_length(self) -> int | None:
        raw = self._headers.get("content-length")
        if raw is None:
            return None
        try:
            length = _parse_content_length(raw)
        except FramingError:
            raise FramingError(BAD_GATEWAY, "invalid Content-Length in response") from None
        if length > self._max_body:
            raise self._body_too_large()
        return length

    def _complete(self, body: bytes) -> Response:
        return Response(self._status, self._phrase, dict(self._headers), body)

    def _line_too_long(self) -> FramingError:
        return FramingError(BAD_GATEWAY, "response line too long")

    def _too_many_headers(self) -> FramingError:
        return FramingError(BAD_GATEWAY, "too many response headers")

    def _body_too_large(self) -> FramingError:
        return FramingError(BAD_GATEWAY, "response too large")

    def _conflicting_lengths(self) -> FramingError:
        return FramingError(BAD_GATEWAY, "conflicting Content-Length in response")
