"""Splitting a byte stream into lines, with no I/O, in linear time.

A reader that, for every line, copies what is left of its buffer, or that
searches the whole buffer again for every piece that arrives, does work
quadratic in what it holds: an agent sending many small NDJSON frames in
one burst, or one long frame a few bytes at a time, costs the dispatcher
seconds of CPU per megabyte. `LineSplitter` searches each byte once and
copies each line once, and refuses a line longer than its bound.
"""

from __future__ import annotations


class LineTooLong(ValueError):
    """An unfinished line grew past the splitter's bound."""


class LineSplitter:
    """Feed bytes, get the complete lines (without their LF) in order."""

    def __init__(self, max_line: int):
        self._max_line = max_line
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer known to hold no LF

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """The lines completed by `data`; LineTooLong when the unfinished
        line left over is longer than the bound."""
        buffer = self._buffer
        buffer += data
        lines = []
        start = 0
        end = buffer.find(b"\n", self._scanned)
        while end >= 0:
            lines.append(bytes(buffer[start:end]))
            start = end + 1
            end = buffer.find(b"\n", start)
        if start:
            del buffer[:start]
        self._scanned = len(buffer)
        if len(buffer) > self._max_line:
            raise LineTooLong(f"a line longer than {self._max_line} bytes")
        return lines
