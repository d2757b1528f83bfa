"""Server-Sent Events for the API's streamed runs, with no I/O.

`POST /run` with `Accept: text/event-stream` answers with an event stream
(dispatcher/api_stream.py). This module decides whether a request asked for
one, encodes events, and cuts the scripts' output into lines.

An event is `event: <name>\\ndata: <compact JSON>\\n\\n`. JSON escapes every
newline, so `data` is always one line; a client needs no multi-line
reassembly. A comment line (`: keep-alive`) is sent while nothing happens,
so that proxies and clients can tell a quiet script from a dead stream.
"""

from __future__ import annotations

import json
from typing import Any

CONTENT_TYPE = "text/event-stream"
# One output line never exceeds this many characters in an event: a script
# that writes a long line without a newline has it sent in pieces, so that
# neither end buffers without bound.
MAX_LINE = 65_536
# The Accept header is read only this far (the request's header limits bound it too).
MAX_ACCEPT = 4_096

KEEP_ALIVE = b": keep-alive\n\n"


def wants_event_stream(accept: str) -> bool:
    """Whether an Accept header asks for `text/event-stream` (with q > 0).
    Wildcards do not count: a client that takes anything gets 0.12's JSON."""
    for media_range in accept[:MAX_ACCEPT].split(","):
        kind, *params = (part.strip() for part in media_range.split(";"))
        if kind.lower() != CONTENT_TYPE:
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = 0.0
        if quality > 0:
            return True
    return False


def head(status: int = 200, phrase: str = "OK") -> bytes:
    """The response head of a stream: no Content-Length, the body ends when
    the connection closes (HTTP/1.0, as every API reply)."""
    return (
        f"HTTP/1.0 {status} {phrase}\r\n"
        f"Content-Type: {CONTENT_TYPE}\r\n"
        "Cache-Control: no-cache\r\n\r\n"
    ).encode("ascii")


def message(name: str, data: dict[str, Any]) -> bytes:
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"event: {name}\ndata: {payload}\n\n".encode("utf-8", "replace")


class LineSplitter:
    """Text as it arrives per (host, stream) in, whole lines out.

    Not thread-safe: the caller serialises `feed` and `flush`."""

    def __init__(self, max_line: int = MAX_LINE):
        self.max_line = max_line
        self._partial: dict[tuple[str, str], str] = {}

    def feed(self, host: str, stream: str, text: str) -> list[str]:
        """The lines completed by `text` (without their newline); a partial
        line longer than `max_line` comes out in `max_line` pieces."""
        key = (host, stream)
        pending = self._partial.pop(key, "") + text
        *lines, rest = pending.split("\n")
        while len(rest) > self.max_line:
            lines.append(rest[: self.max_line])
            rest = rest[self.max_line :]
        out: list[str] = []
        for line in lines:
            while len(line) > self.max_line:
                out.append(line[: self.max_line])
                line = line[self.max_line :]
            out.append(line)
        if rest:
            self._partial[key] = rest
        return out

    def flush(self, host: str) -> list[tuple[str, str]]:
        """What is left of `host`'s last lines (no newline at the end), as
        (stream, text) pairs, stdout first."""
        left = []
        for stream in ("stdout", "stderr"):
            rest = self._partial.pop((host, stream), "")
            if rest:
                left.append((stream, rest))
        return left
