"""`POST /run-stream` from the dispatcher: a synchronous run whose output
arrives as the script writes it (the agent side and the frame format are
in agent/streaming.py). Standard library only.

`stream_run` returns what `agent_client.exchange` returns for `/run`: a
AgentReply whose body is `/run`'s answer (the final `result` frame, or the
agent's plain JSON answer when it refused the run), or a Failure. Every
output frame is handed to `on_frame(stream, text)` first. A ctrl-exec 0.12
agent answers 404 `{"error":"not found"}`, returned as such so the caller
can fall back to `/run`.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable

from ..core import results
from ..core.http import MAX_RESPONSE_BODY, ResponseReader
from ..core.http import request_bytes as _request_bytes
from ..core.lines import LineSplitter, LineTooLong
from ..errors import FramingError, IncompleteMessage
from .agent_client import open_tls

PATH = "/run-stream"
NDJSON = "application/x-ndjson"
# Largest response head, and largest single frame.
MAX_HEAD = 16_384
MAX_FRAME = MAX_RESPONSE_BODY
# Output one stream may carry, both streams together: what fits in /run's
# reply fits here (an agent sends at most its max_output_bytes per stream).
MAX_STREAM_OUTPUT = MAX_RESPONSE_BODY
# Bytes of frames, overhead included: far above any real stream, but an
# agent sending empty frames forever cannot hold a dispatcher thread and
# its CPU forever.
MAX_STREAM_BYTES = 16 * MAX_RESPONSE_BODY
_RECV = 65_536


def stream_run(
    context: ssl.SSLContext,
    address: str,
    port: int,
    body: bytes,
    timeout: float,
    on_frame: Callable[[str, str], None],
    still_waiting: Callable[[], bool] | None = None,
    check_peer: Callable[[bytes], str | None] | None = None,
) -> results.AgentReply | results.Failure:
    def failed(kind: str, detail: str = "") -> results.Failure:
        return results.Failure(kind, address, port, detail)

    sock = open_tls(context, address, port, timeout, check_peer)
    if isinstance(sock, results.Failure):
        return sock
    host = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    received = 0

    def recv() -> bytes:
        nonlocal received
        while True:
            try:
                data = sock.recv(_RECV)
            except TimeoutError:
                # silence: a long quiet script, or a dead agent; ask
                if still_waiting is not None and still_waiting():
                    continue
                raise
            received += len(data)
            return data

    try:
        sock.sendall(_request_bytes("POST", PATH, body, host=host))
        buffer = bytearray()
        while b"\r\n\r\n" not in buffer:
            data = recv()
            if not data:
                return failed(results.CLOSED if not buffer else results.PROTOCOL, "no response")
            buffer += data
            if len(buffer) > MAX_HEAD and b"\r\n\r\n" not in buffer[:MAX_HEAD]:
                return failed(results.PROTOCOL, "response head too long")
        head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        if not _is_stream(head):
            return _plain(head + b"\r\n\r\n" + rest, recv, failed)
        return _frames(rest, recv, on_frame, failed)
    except TimeoutError:
        return failed(results.READ_TIMEOUT)
    except (ssl.SSLError, ConnectionError) as exc:
        if received:
            return failed(results.PROTOCOL, f"connection broken mid-response ({exc})")
        return failed(results.TLS, str(exc))
    except OSError as exc:
        return failed(results.OTHER, exc.strerror or str(exc))
    finally:
        sock.close()


def _is_stream(head: bytes) -> bool:
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1.") or lines[0].split(" ")[1:2] != ["200"]:
        return False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-type":
            return value.strip().lower().startswith(NDJSON)
    return False


def _plain(start: bytes, recv, failed) -> results.AgentReply | results.Failure:
    """A plain JSON answer (a refusal, a 404 from 0.12): read it as /run's."""
    reader = ResponseReader(MAX_RESPONSE_BODY)
    try:
        response = reader.feed(start)
        while response is None:
            data = recv()
            response = reader.finish() if not data else reader.feed(data)
    except IncompleteMessage:
        return failed(results.PROTOCOL, "truncated response")
    except FramingError as exc:
        return failed(results.PROTOCOL, exc.reason)
    return results.AgentReply(response.status, response.phrase, response.body)


def _frames(rest: bytes, recv, on_frame, failed) -> results.AgentReply | results.Failure:
    # linear in what arrives, however the agent cuts its frames (core/lines.py)
    splitter = LineSplitter(MAX_FRAME)
    final: dict | None = None
    data = rest
    total = output = 0
    while True:
        total += len(data)
        if total > MAX_STREAM_BYTES:
            return failed(results.PROTOCOL, "stream too large")
        try:
            lines = splitter.feed(data)
        except LineTooLong:
            return failed(results.PROTOCOL, "stream frame too large")
        for line in lines:
            try:
                value = json.loads(line)
            except (ValueError, UnicodeDecodeError, RecursionError):
                return failed(results.PROTOCOL, "invalid stream frame")
            if not isinstance(value, dict):
                return failed(results.PROTOCOL, "invalid stream frame")
            if "result" in value:
                final = value["result"] if isinstance(value["result"], dict) else None
                if final is None or results.nesting_exceeds(final, results.MAX_REPLY_DEPTH):
                    return failed(results.PROTOCOL, "invalid result frame")
            elif isinstance(value.get("stream"), str) and isinstance(value.get("data"), str):
                output += len(value["data"])
                if output > MAX_STREAM_OUTPUT:
                    return failed(results.PROTOCOL, "stream output too large")
                on_frame(value["stream"], value["data"])
        data = recv()
        if not data:
            break
    if final is None:
        return failed(results.PROTOCOL, "stream ended without a result")
    return results.AgentReply(200, "OK", json.dumps(final).encode("utf-8"))
