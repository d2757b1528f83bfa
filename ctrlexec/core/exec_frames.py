"""Frames on the executor's Unix socket (agent -> executor), no I/O.

Request: 0.12's framing (protocol.md §13), all integers big-endian:

    [u32 total][field reqid][field dispatcher_id][field script][field stdin]
    [u32 argc][argc x field arg]                     field = [u32 len][bytes]

`total` counts the bytes after itself. Every length is checked against what
is left before anything is sliced, `total` against MAX_REQUEST before a byte
of the body is read, and nothing may follow the last argument.

Response: a stream of records `[u8 kind][u32 len][payload]` (ours; 0.12
sends one `[i32 exit][field stdout][field stderr]`). `o` and `e` carry a
chunk of stdout or stderr (at most MAX_CHUNK bytes each), `x` ends the
exchange with `[i32 exit][u8 flags][u32 stdin_unwritten]`. Streaming in
bounded records means neither side ever holds one message the size of a
script's whole output, and the agent learns whether the script timed out or
was truncated (its `run` log line says so, as without an executor). The
executor sends `o` and `e` records as the script writes (live output for
`/run-stream`), at most the script's output limit per stream, then the rest
of stderr (the runner's notes) and `x`.

Cancel (ours): the agent half-closes its side of the connection (SHUT_WR)
after the request; the executor reads that end of file as "stop this run",
kills the script's process group and still answers with what it wrote.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import FrameError
from . import names

# 0.12's executor limits (operations.md §4.6).
MAX_REQUEST = 16 * 1_048_576
MAX_ARGS = 256
# Identifiers only ever appear in log lines; 0.12's store ids are shorter.
MAX_ID = 256
MAX_CHUNK = 65_536

KIND_STDOUT = b"o"
KIND_STDERR = b"e"
KIND_END = b"x"
_END = struct.Struct(">iBI")
_RECORD_HEAD = struct.Struct(">cI")
_U32 = struct.Struct(">I")

FLAG_TIMED_OUT = 1
FLAG_STDOUT_TRUNCATED = 2
FLAG_STDERR_TRUNCATED = 4


@dataclass(frozen=True)
class ExecRequest:
    reqid: str
    dispatcher: str
    script: str
    stdin: bytes
    args: tuple[str, ...]


def _field(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def encode_request(request: ExecRequest) -> bytes:
    """The request frame. Raises FrameError for values the executor would
    refuse anyway (too many arguments, too large, not encodable)."""
    if len(request.args) > MAX_ARGS:
        raise FrameError(f"at most {MAX_ARGS} arguments")
    try:
        parts = [
            _field(request.reqid.encode("utf-8")),
            _field(request.dispatcher.encode("utf-8")),
            _field(request.script.encode("utf-8")),
            _field(request.stdin),
            _U32.pack(len(request.args)),
            *(_field(arg.encode("utf-8")) for arg in request.args),
        ]
    except UnicodeEncodeError:
        raise FrameError("an argument is not valid UTF-8 text") from None
    body = b"".join(parts)
    if len(body) > MAX_REQUEST:
        raise FrameError(f"request larger than {MAX_REQUEST} bytes")
    return _U32.pack(len(body)) + body


def request_length(head: bytes) -> int:
    """The body length announced by the first four bytes; FrameError when
    it is out of bounds (checked before the body is read)."""
    if len(head) != 4:
        raise FrameError("truncated length prefix")
    total: int = _U32.unpack(head)[0]
    # The smallest body: four empty fields and argc.
    if total < 20:
        raise FrameError(f"request length {total} is too small")
    if total > MAX_REQUEST:
        raise FrameError(f"request length {total} exceeds {MAX_REQUEST}")
    return total


class _Cursor:
    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.offset = 0

    def u32(self, what: str) -> int:
        if len(self.data) - self.offset < 4:
            raise FrameError(f"truncated {what} length")
        value: int = _U32.unpack_from(self.data, self.offset)[0]
        self.offset += 4
        return value

    def field(self, what: str) -> bytes:
        size = self.u32(what)
        if size > len(self.data) - self.offset:
            raise FrameError(f"{what} length {size} runs past the end of the request")
        value = bytes(self.data[self.offset : self.offset + size])
        self.offset += size
        return value

    def text(self, what: str, limit: int | None = None) -> str:
        raw = self.field(what)
        if limit is not None and len(raw) > limit:
            raise FrameError(f"{what} longer than {limit} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError(f"{what} is not valid UTF-8") from None
        if "\x00" in text:
            raise FrameError(f"{what} contains a NUL byte")
        return text


def decode_request(body: bytes) -> ExecRequest:
    """The request in `body` (the bytes after the length prefix)."""
    cursor = _Cursor(body)
    reqid = cursor.text("reqid", MAX_ID)
    dispatcher = cursor.text("dispatcher_id", MAX_ID)
    script = cursor.text("script", MAX_ID)
    if not names.is_script_name(script):
        raise FrameError("script is not a valid script name")
    stdin = cursor.field("stdin")
    argc = cursor.u32("argc")
    if argc > MAX_ARGS:
        raise FrameError(f"argc {argc} exceeds {MAX_ARGS}")
    args = tuple(cursor.text(f"argument {index + 1}") for index in range(argc))
    if cursor.offset != len(body):
        raise FrameError(f"{len(body) - cursor.offset} unexpected bytes after the last argument")
    return ExecRequest(reqid, dispatcher, script, stdin, args)


# --- response ------------------------------------------------------------------


@dataclass(frozen=True)
class ExecEnd:
    exit: int
    timed_out: bool = False
    truncated: tuple[str, ...] = ()
    stdin_unwritten: int = 0


def encode_output(kind: bytes, data: bytes) -> bytes:
    """`data` as records of at most MAX_CHUNK bytes."""
    return b"".join(
        _RECORD_HEAD.pack(kind, len(data[start : start + MAX_CHUNK]))
        + data[start : start + MAX_CHUNK]
        for start in range(0, len(data), MAX_CHUNK)
    )


def encode_end(end: ExecEnd) -> bytes:
    flags = (
        (FLAG_TIMED_OUT if end.timed_out else 0)
        | (FLAG_STDOUT_TRUNCATED if "stdout" in end.truncated else 0)
        | (FLAG_STDERR_TRUNCATED if "stderr" in end.truncated else 0)
    )
    payload = _END.pack(end.exit, flags, min(end.stdin_unwritten, 0xFFFFFFFF))
    return _RECORD_HEAD.pack(KIND_END, len(payload)) + payload


def encode_failure(message: str) -> bytes:
    """A refusal or failure: the message on stderr, exit -1 (0.12's shape)."""
    return encode_output(KIND_STDERR, message.encode("utf-8")) + encode_end(ExecEnd(-1))


class ResponseParser:
    """Feeds response bytes, collects stdout and stderr up to `max_stream`
    bytes each, and returns the end record once seen. Bounded: at most one
    record header and MAX_CHUNK bytes are buffered beyond the output."""

    def __init__(self, max_stream: int, on_output: Callable[[str, bytes], None] | None = None):
        self.max_stream = max_stream
        # Called with ("stdout"|"stderr", chunk) for each output record as
        # it is parsed (live output).
        self.on_output = on_output
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.end: ExecEnd | None = None
        self._buffer = bytearray()
        self.received = 0

    def feed(self, data: bytes) -> ExecEnd | None:
        if self.end is not None:
            if data:
                raise FrameError("data after the end record")
            return self.end
        self.received += len(data)
        self._buffer += data
        while self.end is None and len(self._buffer) >= _RECORD_HEAD.size:
            kind, size = _RECORD_HEAD.unpack_from(self._buffer)
            if kind not in (KIND_STDOUT, KIND_STDERR, KIND_END):
                raise FrameError(f"unknown record kind {kind!r}")
            if size > MAX_CHUNK or (kind == KIND_END and size != _END.size):
                raise FrameError(f"record length {size} out of bounds")
            if len(self._buffer) < _RECORD_HEAD.size + size:
                break
            payload = bytes(self._buffer[_RECORD_HEAD.size : _RECORD_HEAD.size + size])
            del self._buffer[: _RECORD_HEAD.size + size]
            if kind == KIND_END:
                exit_code, flags, unwritten = _END.unpack(payload)
                truncated = tuple(
                    name
                    for name, flag in (
                        ("stdout", FLAG_STDOUT_TRUNCATED),
                        ("stderr", FLAG_STDERR_TRUNCATED),
                    )
                    if flags & flag
                )
                self.end = ExecEnd(exit_code, bool(flags & FLAG_TIMED_OUT), truncated, unwritten)
                if self._buffer:
                    raise FrameError("data after the end record")
            else:
                target = self.stdout if kind == KIND_STDOUT else self.stderr
                if len(target) + len(payload) > self.max_stream:
                    raise FrameError(f"more than {self.max_stream} bytes of output")
                target += payload
                if self.on_output is not None and payload:
                    self.on_output("stdout" if kind == KIND_STDOUT else "stderr", payload)
        return self.end
