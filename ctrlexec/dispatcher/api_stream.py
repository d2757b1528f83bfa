"""Streamed API runs: `POST /run` with `Accept: text/event-stream`.

A synchronous run whose client sees the scripts' output as it is written,
as Server-Sent Events (core.sse), in this order:

- `start`: `{reqid, script, hosts}` once the run is authorised, its locks
  are taken and it is recorded (so `GET /status/{reqid}` knows it);
- `output`: `{host, stream, line}` per line a script writes (`stream` is
  `stdout` or `stderr`; the line without its newline);
- `fallback`: `{host, detail}` when an agent cannot stream (a ctrl-exec 0.12
  agent answers 404 to `/run-stream`): that host runs through `/run`, and
  its output arrives only in its `result`;
- `result`: one host's result object, as soon as that host has finished
  (the same object as in the `results` of a plain reply);
- `summary`: the body a plain (non-streamed) `/run` would have answered,
  `{ok, reqid, results}`: the last event, then the connection closes;
- `error`: `{ok:false, error}` instead of `summary` if the run failed on
  our side after it started.

A request refused before the run starts (auth, unknown agent, lock, bad
body) gets the plain JSON answer and status of a non-streamed `/run`.

Theory of operation. The run goes on a worker thread (the engine's fan-out
calls back with output, fallbacks and results from its own threads). The
callbacks put encoded events on a bounded queue; the connection's thread
takes them off and writes them, and a keep-alive comment when nothing came
for KEEP_ALIVE seconds. A client that reads too slowly holds the run's
callbacks back (and through them the agents' streams) for at most
STALL_SECONDS at a time; one that stops reading for longer, or goes away,
is dropped from the stream. The run itself goes on to its end either way,
is recorded, and its locks are released as for a plain `/run`; the
connection's slot is held until then, as a plain synchronous `/run`
holds it.
"""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .. import log
from ..core import run_record, sse
from ..core.results import RUN, HostResult

# Events buffered between the run and the connection.
QUEUE_EVENTS = 1_024
# How long the run waits for a client that does not read before dropping it.
STALL_SECONDS = 30.0
# Seconds of silence after which a keep-alive comment is sent.
KEEP_ALIVE = 15.0
# Events written with one send at most (a wide fan-out finishes many hosts at once).
BATCH_EVENTS = 64

FALLBACK_DETAIL = (
    "the agent cannot stream output (ctrl-exec 0.12?): ran through /run; "
    "its output is in its result"
)
# A host of a streamed run whose result is not in yet, in its run record.
IN_PROGRESS_ERROR = "running: the run is in progress"

_END = object()

Execute = Callable[..., list[HostResult]]


class EventStream:
    """A reply the API server writes event by event (no Content-Length)."""

    status = 200
    content_type = sse.CONTENT_TYPE

    def __init__(self, channel: _Channel, worker: threading.Thread):
        self._channel = channel
        self._worker = worker

    def events(self, keep_alive: float = KEEP_ALIVE) -> Iterator[bytes]:
        """The encoded events as they come, in batches; keep-alive comments
        in silences; ends after the last event, or once detached."""
        return self._channel.drain(keep_alive)

    def close(self) -> None:
        """Stop sending (if still sending) and wait for the run to end."""
        self._channel.detach()
        self._worker.join()


class _Channel:
    def __init__(self, capacity: int, stall: float):
        self._queue: queue.Queue = queue.Queue(capacity)
        self._stall = stall
        self._detached = threading.Event()

    def put(self, item: object) -> None:
        if self._detached.is_set():
            return
        try:
            self._queue.put(item, timeout=self._stall)
        except queue.Full:
            log.event("api-stream-drop", log.WARNING, REASON="client not reading")
            self.detach()

    def drain(self, keep_alive: float) -> Iterator[bytes]:
        while not self._detached.is_set():
            try:
                item = self._queue.get(timeout=keep_alive)
            except queue.Empty:
                yield sse.KEEP_ALIVE
                continue
            batch = []
            while item is not _END:
                batch.append(item)
                if len(batch) >= BATCH_EVENTS:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                yield b"".join(batch)
            if item is _END:
                return

    def detach(self) -> None:
        self._detached.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return


def start(
    execute: Execute,
    started: Callable[[list], dict[str, Any]],
    finish: Callable[[list[HostResult]], dict[str, Any]],
    capacity: int = QUEUE_EVENTS,
    stall: float = STALL_SECONDS,
) -> EventStream:
    """Start a run on a worker thread and return its event stream once it
    has started; an exception raised before that (refused, locked, ...)
    is raised here, for the API to answer as for a plain `/run`.

    `execute(before_dispatch=, follow=, on_fallback=, progress=)` runs it
    (Engine.run with those callbacks); `started(targets)` is called before
    the first agent is asked and gives the `start` event's data;
    `finish(results)` gives the `summary` event's data."""
    channel = _Channel(capacity, stall)
    opened = threading.Event()
    refused: list[BaseException] = []
    lines = sse.LineSplitter()
    lines_lock = threading.Lock()

    def output(host: str, stream: str, line: str) -> None:
        channel.put(sse.message("output", {"host": host, "stream": stream, "line": line}))

    def before_dispatch(reqid: str, targets: list) -> None:
        channel.put(sse.message("start", started(targets)))
        opened.set()

    def follow(host: str, stream: str, text: str) -> None:
        with lines_lock:
            complete = lines.feed(host, stream, text)
        for line in complete:
            output(host, stream, line)

    def on_fallback(host: str) -> None:
        channel.put(sse.message("fallback", {"host": host, "detail": FALLBACK_DETAIL}))

    def progress(result: HostResult) -> None:
        host = result.host
        with lines_lock:
            left = lines.flush(host)
        for stream, text in left:
            output(host, stream, text)
        channel.put(sse.message("result", result.to_wire()))

    def work() -> None:
        try:
            results = execute(
                before_dispatch=before_dispatch,
                follow=follow,
                on_fallback=on_fallback,
                progress=progress,
            )
            channel.put(sse.message("summary", finish(results)))
        except BaseException as exc:
            if not opened.is_set():
                refused.append(exc)
            else:
                log.event("api-error", log.ERR, PATH="/run", ERROR=f"{type(exc).__name__}: {exc}")
                channel.put(sse.message("error", {"ok": False, "error": "internal error"}))
        finally:
            if opened.is_set():
                channel.put(_END)
            opened.set()

    worker = threading.Thread(target=work, name="api-run-stream", daemon=True)
    worker.start()
    opened.wait()
    if refused:
        worker.join()
        raise refused[0]
    return EventStream(channel, worker)


def send(sock: socket.socket, stream: EventStream, timeout: float) -> None:
    """Write a stream: head, then its events; each write must make progress
    within `timeout`. Raises when the client goes away (the run goes on)."""
    sock.settimeout(timeout)
    sock.sendall(sse.head())
    for chunk in stream.events():
        sock.sendall(chunk)


def in_progress_record(
    reqid: str,
    script: str,
    hosts: list[str],
    targets: list,
    started: int,
    submitter: dict[str, Any] | None,
) -> dict[str, Any]:
    """The run record of a streamed run that has started: a sync record not
    yet complete, every host `running` until the run's end replaces it."""
    results = [
        HostResult(
            RUN,
            {
                **run_record.still_running_result(target.name, script, reqid).wire,
                "error": IN_PROGRESS_ERROR,
            },
        )
        for target in targets
    ]
    record = run_record.sync_record(reqid, script, hosts, results, started, submitter)
    del record["completed"]
    record["started"] = started
    record["complete"] = False
    return record
