"""Live output of a synchronous run: `POST /run-stream` (our addition).

The request body is `/run`'s. A request refused before the script starts
gets `/run`'s answer unchanged (JSON, Content-Length). Otherwise the reply
is `200` with `Content-Type: application/x-ndjson` and no Content-Length:
one JSON object per line, sent as the script writes, then the connection
closes:

    {"stream":"stdout","data":"first line\\n"}
    {"stream":"stderr","data":"..."}
    {"result":{"script","exit","stdout","stderr","reqid"}}   (last: /run's body)

`data` is the text of what the script wrote since the previous frame
(UTF-8, decoded incrementally, invalid bytes replaced); lines may be split
across frames. The script runs exactly as for `/run` (same runner, limits,
tracking, cancel), so `result` is what `/run` would have answered.

Theory of operation. The script runs on a worker thread; its output goes
through a bounded queue to the connection's thread, which writes frames.
A dispatcher that reads slowly holds the script back (the queue is full,
the runner waits, the script blocks on its pipe), for at most
`STALL_SECONDS` at a time; a dispatcher that stops reading for longer, or
goes away, is dropped from the stream and the script runs on to its end
as a `/run` would (0.12: a script is never killed because its dispatcher
left).
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import queue
import threading
from collections.abc import Callable, Iterator

# Frames buffered between the script and the connection.
QUEUE_FRAMES = 256
# How long the script may be held back by a dispatcher that does not read.
STALL_SECONDS = 30.0
CONTENT_TYPE = "application/x-ndjson"

_END = object()


class StreamReply:
    """A reply the server writes frame by frame (no Content-Length)."""

    def __init__(self, frames: Iterator[bytes], on_close: Callable[[], None]):
        self.status = 200
        self.content_type = CONTENT_TYPE
        self.frames = frames
        self._on_close = on_close

    def close(self) -> None:
        self._on_close()


def send_stream(sock, reply: StreamReply) -> None:
    """Write a StreamReply: head, then each frame as it comes; the end of
    the body is the end of the connection. A failed write detaches the
    stream (the script runs on) and raises."""
    try:
        sock.sendall(
            (f"HTTP/1.0 {reply.status} OK\r\nContent-Type: {reply.content_type}\r\n\r\n").encode(
                "ascii"
            )
        )
        for chunk in reply.frames:
            sock.sendall(chunk)
    finally:
        reply.close()


def frame(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"


def stream(job, run: Callable, finish: Callable) -> StreamReply:
    """Run `job` through `run(job) -> ScriptResult` on a worker thread; the
    reply's frames carry its output, then `finish(result)` (the /run body)."""
    frames: queue.Queue = queue.Queue(QUEUE_FRAMES)
    detached = threading.Event()
    decoders = {
        name: codecs.getincrementaldecoder("utf-8")("replace") for name in ("stdout", "stderr")
    }

    def put(item) -> None:
        if detached.is_set():
            return
        try:
            frames.put(item, timeout=STALL_SECONDS)
        except queue.Full:
            detached.set()  # nobody reads: drop the stream, let the script go on

    def on_output(name: str, chunk: bytes) -> None:
        text = decoders[name].decode(chunk)
        if text:
            put(frame({"stream": name, "data": text}))

    def work() -> None:
        body = None
        try:
            result = run(dataclasses.replace(job, on_output=on_output))
            for name, decoder in decoders.items():
                rest = decoder.decode(b"", final=True)
                if rest:
                    put(frame({"stream": name, "data": rest}))
            body = finish(result)
        finally:
            put(frame({"result": body}) if body is not None else _END)
            if body is not None:
                put(_END)

    worker = threading.Thread(target=work, name="run-stream", daemon=True)
    worker.start()

    def frames_out() -> Iterator[bytes]:
        while True:
            item = frames.get()
            if item is _END:
                return
            yield item

    def detach() -> None:
        detached.set()
        while True:  # unblock a worker waiting on a full queue
            try:
                frames.get_nowait()
            except queue.Empty:
                return

    return StreamReply(frames_out(), detach)
