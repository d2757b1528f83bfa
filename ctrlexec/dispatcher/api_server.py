"""The dispatcher API's listener on 7445: accept, (TLS), one request, close.

Theory of operation. The main thread owns the listening socket and a
selector that also watches a signal wake-up socket, so signals are handled
between accepts, never inside a signal handler. Every accepted connection
gets a thread of its own (a synchronous /run holds its thread for as long
as the script runs), and a slot in one of two pools (core.admission):

- while it is still sending its request, the pending pool: at most
  `api_max_pending_per_address` connections from one address and
  `api_max_pending` in all; beyond either, a new connection evicts the
  oldest pending one of its own address, or of the busiest address
  (`conn-evict`), so clients that connect and send nothing can never keep a
  real request out;
- once its request is complete (TLS handshake with `api_cert`/`api_key`,
  the request read with 0.12's limits: 32 header lines -> 431, a body over
  1 MiB -> 413, an empty request line -> 400), one of `api_max_children`
  handler slots: `api-request` logged, the request handled by
  `dispatcher.api`, the reply written;
- no handler slot free: 503 `too many concurrent requests` (0.12's answer;
  0.12 answers before reading the request, we after), `api-overload`.

The handshake and the whole request must arrive within
`api_request_timeout` seconds (0.12 waits forever). Replies are HTTP/1.0
with Content-Type and Content-Length only, then close_notify and a half
close (core.http, netio).

SIGTERM or SIGINT: the listener closes at once and requests in progress
finish and are answered (a synchronous run waits for its agents); a second
signal stops without waiting. The run store is purged of records older
than 24 hours at start and every PURGE_EVERY seconds.
"""

from __future__ import annotations

import itertools
import selectors
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .. import log
from ..connections import Connections
from ..core import admission, api_wire
from ..core.http import RequestReader, response_bytes
from ..core.routing import Reply
from ..errors import FramingError, IncompleteMessage
from ..netio import (
    abort,
    accept_pending,
    accepting,
    close_all,
    finish,
    open_listeners,
    received_signals,
)
from ..store import remove_own_pidfile, write_pidfile
from . import api_stream
from .api import Api, ApiRequest
from .api_stream import EventStream

RECV_CHUNK = 65_536
# Seconds between purges of expired run records.
PURGE_EVERY = 3_600
# While stopping, how often the wait for in-flight requests looks for a
# second signal.
STOP_POLL = 0.2


class ApiServer:
    def __init__(
        self,
        api: Api,
        bind: str,
        port: int,
        max_children: int,
        request_timeout: float,
        tls: ssl.SSLContext | None = None,
        purge: Callable[[], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_pending: int = 256,
        max_pending_per_address: int = 64,
    ):
        self.api = api
        self.bind = bind
        self.port = port
        self.max_children = max_children
        self.request_timeout = request_timeout
        self.tls = tls
        self.purge = purge
        self.clock = clock
        self.connections = Connections(
            admission.Limits(max_pending, max_pending_per_address, max_children)
        )
        self._keys = itertools.count()
        self._listeners: list[socket.socket] = []
        self._stopping = False
        self._next_purge = 0.0
        self._purging = threading.Lock()

    # --- lifecycle ---------------------------------------------------------

    def listen(self) -> list[tuple]:
        self._listeners = open_listeners(self.bind, self.port)
        return [sock.getsockname() for sock in self._listeners]

    def serve(self, pidfile: Path | None = None) -> None:
        """Accept until SIGTERM/SIGINT, then let requests in progress finish."""
        with accepting(self._listeners, (signal.SIGTERM, signal.SIGINT)) as (selector, wake):
            log.event(
                "api-start",
                log.INFO,
                PORT=self.port,
                BIND=self.bind,
                TLS="yes" if self.tls else "no",
                MAX=self.max_children,
            )
            if pidfile is not None:  # written last: its presence means "serving"
                write_pidfile(pidfile)
            try:
                self._accept_loop(selector, wake)
            finally:
                close_all(self._listeners)  # refuse new connections while draining
                self._drain(wake)
                log.event("api-stop", log.INFO, ACTIVE=self.connections.active)
                if pidfile is not None:
                    remove_own_pidfile(pidfile)

    def _accept_loop(self, selector: selectors.BaseSelector, wake: socket.socket) -> None:
        while not self._stopping:
            self._housekeeping()
            timeout = max(0.0, self._next_purge - self.clock()) if self.purge else None
            for key, _ in selector.select(timeout):
                if key.data is None:
                    self._stopping = self._stopping or _stop_requested(wake)
                elif not self._stopping:
                    self._accept(key.data)

    def _drain(self, wake: socket.socket) -> None:
        """Wait for requests in progress; a second signal stops the wait."""
        while not self.connections.wait_idle(STOP_POLL):
            if _stop_requested(wake):
                log.event("api-stop-now", log.WARNING, ACTIVE=self.connections.active)
                return

    def _housekeeping(self) -> None:
        if self.purge is None or self.clock() < self._next_purge:
            return
        self._next_purge = self.clock() + PURGE_EVERY
        if self._purging.acquire(blocking=False):
            threading.Thread(target=self._run_purge, name="purge", daemon=True).start()

    def _run_purge(self) -> None:
        try:
            assert self.purge is not None
            self.purge()
        except Exception as exc:
            log.event("maintain", log.ERR, PHASE="purge", ERROR=str(exc)[:200])
        finally:
            self._purging.release()

    # --- accept ------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        accept_pending(listener, self._admit)

    def _admit(self, conn: socket.socket, ip: str) -> None:
        def overload(reason: str) -> None:
            if reason == "descriptors":
                log.event("api-overload", log.WARNING, PEER=ip, REASON=reason)
            else:
                log.event("api-overload", log.WARNING, PEER=ip, MAX=self.max_children)

        self.connections.start(next(self._keys), conn, ip, self._connection, overload, f"api-{ip}")

    # --- one connection ----------------------------------------------------

    def _connection(self, conn: socket.socket, ip: str, key: int) -> None:
        deadline = self.clock() + self.request_timeout  # handshake and request together
        sock: socket.socket | None = None
        streamed: EventStream | None = None
        try:
            sock = self._handshake(conn, ip, key)
            if sock is None:
                return
            reply = self._exchange(sock, ip, key, deadline)
            if isinstance(reply, EventStream):
                streamed = reply
                self._send_events(sock, ip, reply)
            elif reply is not None:
                self._send(sock, ip, reply)
        except Exception as exc:
            log.event(
                "connection-error", log.ERR, PEER=ip, ERROR=f"{type(exc).__name__}: {exc}"[:200]
            )
        finally:
            if sock is not None:
                finish(sock)
            else:
                abort(conn)
            if streamed is not None:
                streamed.close()  # the run goes on to its end, in this slot
            self.connections.leave(key)

    def _handshake(self, conn: socket.socket, ip: str, key: int) -> socket.socket | None:
        """The connection to talk on (TLS-wrapped when configured), or None
        when the handshake failed."""
        conn.settimeout(self.request_timeout)
        if self.tls is None:
            return conn
        try:
            return self.tls.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError, ValueError) as exc:
            if self.connections.evicted(key):
                return None
            log.event(
                "tls-failure",
                log.WARNING,
                PEER=ip,
                REASON=getattr(exc, "reason", None) or type(exc).__name__,
            )
            return None

    def _exchange(
        self, conn: socket.socket, ip: str, key: int, deadline: float
    ) -> Reply | EventStream | None:
        reader = RequestReader()
        try:
            while True:
                remaining = deadline - self.clock()
                if remaining <= 0:
                    raise TimeoutError("request deadline passed")
                conn.settimeout(remaining)
                chunk = conn.recv(RECV_CHUNK)
                request = reader.finish() if not chunk else reader.feed(chunk)
                if request is not None:
                    break
        except FramingError as exc:
            return api_wire.framing_error(exc)
        except TimeoutError:
            log.event("request-timeout", log.WARNING, PEER=ip)
            return None
        except (IncompleteMessage, ssl.SSLError, OSError):
            return None  # the client went away mid-request (or was evicted)
        outcome = self.connections.promote(key)
        if outcome == admission.EVICTED:
            return None
        if outcome == admission.OVERLOAD:
            log.event("api-overload", log.WARNING, PEER=ip, MAX=self.max_children)
            return api_wire.overloaded()
        log.event(
            "api-request",
            log.INFO,
            METHOD=request.method.upper(),
            PATH=request.path[:512],
            PEER=ip,
            LEN=len(request.body),
        )
        try:
            return self.api.handle(
                ApiRequest(
                    request.method,
                    request.path,
                    request.body,
                    request.header("authorization"),
                    ip,
                    request.header("accept"),
                )
            )
        except Exception as exc:
            log.event(
                "api-error",
                log.ERR,
                PATH=request.path[:200],
                ERROR=f"{type(exc).__name__}: {exc}"[:300],
            )
            return api_wire.server_error("internal error")

    def _send(self, conn: socket.socket, ip: str, reply: Reply) -> None:
        try:
            conn.settimeout(self.request_timeout)  # inactivity bound while the client reads
            conn.sendall(response_bytes(reply.status, reply.body, reply.content_type))
        except (ssl.SSLError, OSError) as exc:
            _reply_failed(ip, reply.status, exc)

    def _send_events(self, conn: socket.socket, ip: str, stream: EventStream) -> None:
        try:
            api_stream.send(conn, stream, self.request_timeout)
        except (ssl.SSLError, OSError) as exc:
            _reply_failed(ip, stream.status, exc)


def _reply_failed(ip: str, status: int, exc: OSError) -> None:
    """The client went away or stalled while its answer was being sent."""
    log.event(
        "reply-fail",
        log.WARNING,
        PEER=ip,
        STATUS=status,
        REASON=getattr(exc, "strerror", None) or type(exc).__name__,
    )


def _stop_requested(wake: socket.socket) -> bool:
    """Whether SIGTERM or SIGINT arrived on the wake-up socket."""
    return any(number in (signal.SIGTERM, signal.SIGINT) for number in received_signals(wake))
