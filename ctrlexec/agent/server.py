"""The agent's listener on 7443: accept, TLS, identity, one request, close.

Theory of operation. The main thread owns the listening sockets and a
selector that also watches a signal wake-up socket, so signals are handled
between accepts, never inside a signal handler (SIGHUP reloads, SIGTERM and
SIGINT stop). Per accepted connection, in this order (docs/agent.md, "Admission"):

1. `allowed_ips`, checked on the address before any TLS work (0.12 checks
   after the handshake); refused: closed, `ip-block`.
2. Rate limit: a blocked address is closed unanswered (`rate-block` was
   logged once, when the block began). Only connections that end without a
   trusted identity are counted (volume rule), and failed handshakes again
   for the probe rule, so a paired dispatcher's own use never blocks it.
3. A slot in the unauthenticated pool (core.admission): over
   `max_pending_per_address` from one address, or `max_pending` in all, a
   newcomer takes the slot of the oldest unproven connection of its own
   address, or of the busiest one; that connection is closed (`conn-evict`)
   and counts as unauthenticated. Idle strangers never keep a dispatcher
   out, and never hold the `max_children` slots.
4. A thread of its own takes it from there, so no connection, handshake or
   script ever holds up another:
   - the TLS handshake (a client certificate signed by our CA is
     required) within `handshake_timeout`; a failure is `tls-failure` and
     counts for the probe rule;
   - identity, before any request byte is read: the peer serial's
     canonical key is looked up in the revocation list (revoked: 403
     `certificate revoked`, nothing read) and the trusted-dispatcher map;
   - an untrusted peer has its request line read (nothing more, still
     within `handshake_timeout`) to pick 0.12's refusal for that path;
   - a trusted peer moves to one of the `max_children` authenticated slots
     (none free: closed unanswered, `overload`), is held to its own
     generous ceiling (`rate_limit_trusted`: 429 over it), and has its
     request read whole within `request_timeout` with 0.12's limits (32
     header lines, 1 MiB body) and handled;
   - the reply is written, close_notify sent, and unread input drained for
     a moment so the peer sees the reply rather than a reset.

SIGPIPE is ignored: a peer that vanishes only fails its own connection.
On SIGTERM the listener closes, running requests get SHUTDOWN_GRACE
seconds to finish, then any script still running is killed.
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
from ..core import admission, agent_wire
from ..core.http import Request, RequestReader, response_bytes
from ..core.ipallow import AddressFilter
from ..core.ratelimit import RateLimiter, Rule
from ..core.routing import Reply
from ..errors import FramingError, IncompleteMessage
from ..netio import (
    ListenerPause,
    accept_pending,
    accepting,
    close_all,
    open_listeners,
    received_signals,
)
from ..netio import abort as _abort
from ..netio import finish as _finish
from ..pki.tls import peer_serial
from ..store import remove_own_pidfile, sweep_leftovers, write_pidfile
from .handlers import Endpoints, Peer
from .state import AgentRuntime
from .streaming import StreamReply, send_stream

RECV_CHUNK = 65_536
# On SIGTERM, how long running requests may take before scripts are killed.
SHUTDOWN_GRACE = 10.0


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


class AgentServer:
    def __init__(
        self,
        runtime: AgentRuntime,
        context: ssl.SSLContext,
        endpoints: Endpoints | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.runtime = runtime
        self.context = context  # used when the runtime has no AgentIdentity
        self.endpoints = endpoints or Endpoints()
        self.clock = clock
        config = runtime.config
        self.request_timeout = float(config.request_timeout)
        self.handshake_timeout = float(config.handshake_timeout)
        self.max_children = int(config.max_children)
        self.addresses = AddressFilter.from_entries(list(config.allowed_ips))
        self.limiter: RateLimiter | None = None
        self.trusted_limiter: RateLimiter | None = None
        if not config.rate_limit_disable:
            self.limiter = RateLimiter(
                Rule.parse(config.rate_limit_volume), Rule.parse(config.rate_limit_probe)
            )
            self.trusted_limiter = RateLimiter(Rule.parse(config.rate_limit_trusted), None)
        self._limiter_lock = threading.Lock()
        self.connections = Connections(
            admission.Limits(
                int(config.max_pending), int(config.max_pending_per_address), self.max_children
            )
        )
        self._keys = itertools.count()
        self._listeners: list[socket.socket] = []
        self._stopping = False

    # --- lifecycle ---------------------------------------------------------

    def listen(self) -> list[tuple]:
        """Bind the listening sockets; their addresses."""
        config = self.runtime.config
        self._listeners = open_listeners(config.bind, config.port)
        return [sock.getsockname() for sock in self._listeners]

    def serve(self, pidfile: Path | None = None) -> None:
        """Accept until SIGTERM/SIGINT; then stop gracefully."""
        with accepting(self._listeners, (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)) as (
            selector,
            wake,
        ):
            state = self.runtime.state()
            self._sweep_leftovers()
            log.event(
                "start",
                log.INFO,
                PORT=self.runtime.config.port,
                SCRIPTS=len(state.allowlist),
                DISPATCHERS=len(state.trusted),
                VERSION=state.version,
            )
            if pidfile is not None:  # written last: its presence means "serving"
                write_pidfile(pidfile)
            try:
                self._accept_loop(selector, wake)
            finally:
                close_all(self._listeners)  # refuse new connections while draining
                self._drain_and_stop(pidfile)

    def _sweep_leftovers(self) -> None:
        """Temp files of writes a crash interrupted: the trusted map's
        directory and every async run partition."""
        config = self.runtime.config
        runs = Path(config.async_runs_dir)
        try:
            partitions = [entry for entry in runs.iterdir() if entry.is_dir()]
        except OSError:
            partitions = []
        sweep_leftovers([Path(config.trusted_dispatchers_path).parent, runs, *partitions])

    def _accept_loop(self, selector: selectors.BaseSelector, wake: socket.socket) -> None:
        pause = ListenerPause(selector, self._listeners, self.clock)
        while not self._stopping:
            for key, _ in selector.select(pause.timeout()):
                if key.data is None:
                    self._signals(wake)
                elif not pause.paused and not self._stopping and not self._accept(key.data):
                    pause.pause()
            pause.resume_if_due()

    def _signals(self, wake: socket.socket) -> None:
        for number in received_signals(wake):
            if number == signal.SIGHUP:
                self.runtime.reload()
            elif number in (signal.SIGTERM, signal.SIGINT):
                self._stopping = True

    def _drain_and_stop(self, pidfile: Path | None) -> None:
        log.event("stop", log.INFO, ACTIVE=self.connections.active)
        self.connections.wait_idle(SHUTDOWN_GRACE)
        killed = self.endpoints.shutdown()
        if killed:
            log.event("stop-kill", log.WARNING, SCRIPTS=killed)
        if pidfile is not None:
            remove_own_pidfile(pidfile)

    # --- accept ------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> bool:
        """Accept what is pending; False when accept failed for lack of resources."""
        return accept_pending(listener, self._admit)

    def _admit(self, conn: socket.socket, ip: str) -> None:
        if not self.addresses.allows(ip):
            log.event("ip-block", log.WARNING, PEER=ip)
            _abort(conn)
            return
        if self.limiter is not None:
            with self._limiter_lock:
                blocked = self.limiter.is_blocked(ip, self.clock())
            if blocked:
                _abort(conn)
                return
        self.connections.start(
            next(self._keys), conn, ip, self._connection, self._overload(ip), f"conn-{ip}"
        )

    def _overload(self, ip: str) -> Callable[[str], None]:
        """How a connection refused for lack of descriptors or threads is
        logged (the same ACTION as a full house)."""

        def overload(reason: str) -> None:
            if reason == "descriptors":
                log.event("overload", log.WARNING, PEER=ip, REASON=reason)
            else:
                log.event("overload", log.WARNING, PEER=ip, MAX=self.max_children)

        return overload

    def _unauthenticated(self, ip: str) -> None:
        """A connection from `ip` ended without a trusted identity."""
        if self.limiter is None:
            return
        with self._limiter_lock:
            verdict = self.limiter.record_unauthenticated(ip, self.clock())
        if verdict.evicted:
            log.event("rate-evict", log.INFO, PEER=ip)
        if verdict.blocked_now:
            log.event("rate-block", log.WARNING, PEER=ip, REASON=verdict.blocked_now)

    # --- one connection ----------------------------------------------------

    def _connection(self, conn: socket.socket, ip: str, key: int) -> None:
        try:
            self._serve_connection(conn, ip, key)
        except Exception as exc:
            log.event(
                "connection-error", log.ERR, PEER=ip, ERROR=f"{type(exc).__name__}: {exc}"[:200]
            )
        finally:
            try:
                conn.close()
            except OSError:
                pass
            self.connections.leave(key)

    def _serve_connection(self, conn: socket.socket, ip: str, key: int) -> None:
        deadline = self.clock() + self.handshake_timeout
        conn.settimeout(self.handshake_timeout)
        identity = self.runtime.identity
        try:
            # A renewed certificate is picked up here, for new connections only.
            context = self.context if identity is None else identity.context()
            tls = context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        except (ssl.SSLError, OSError, ValueError) as exc:
            self._tls_failure(ip, key, exc)
            return
        try:
            tls.do_handshake()
        except (ssl.SSLError, OSError, ValueError) as exc:
            tls.close()
            self._tls_failure(ip, key, exc)
            return
        reply = None
        try:
            reply = self._exchange(tls, ip, key, deadline)
            if reply is not None:
                self._send(tls, ip, reply)
        finally:
            if reply is not None and reply.on_sent is not None:
                reply.on_sent()
            _finish(tls)

    def _tls_failure(self, ip: str, key: int, exc: BaseException) -> None:
        if self.connections.evicted(key):  # its slot went to a newcomer: logged then
            self._unauthenticated(ip)
            return
        log.event("tls-failure", log.WARNING, PEER=ip, REASON=_failure_reason(exc))
        if self.limiter is None:
            return
        with self._limiter_lock:
            now = self.clock()
            verdict = self.limiter.record_failure(ip, now)
            if not verdict.blocked_now:
                verdict = self.limiter.record_unauthenticated(ip, now)
        if verdict.blocked_now:
            log.event("rate-block", log.WARNING, PEER=ip, REASON=verdict.blocked_now)

    def _exchange(self, tls: ssl.SSLSocket, ip: str, key: int, deadline: float) -> Reply | None:
        serial = peer_serial(tls)
        serial_key = "" if serial is None else serial.trust_key()
        serial_hex = "" if serial is None else serial.openssl_hex()
        state = self.runtime.state()
        if state.revoked.revoked(serial_key):
            log.event("revoked-cert", log.WARNING, PEER=ip, SERIAL=serial_hex)
            self._unauthenticated(ip)
            return Reply(403, dict(agent_wire.REVOKED))
        dispatcher = state.trusted.get(serial_key) if serial_key else None
        if dispatcher is None:
            self._unauthenticated(ip)
        else:
            outcome = self.connections.promote(key)
            if outcome == admission.EVICTED:
                self._unauthenticated(ip)
                return None
            if outcome == admission.OVERLOAD:
                log.event("overload", log.WARNING, PEER=ip, MAX=self.max_children)
                return None
            if not self._within_ceiling(ip, serial_key, dispatcher):
                return Reply(429, dict(agent_wire.TOO_MANY_REQUESTS))
            deadline = self.clock() + self.request_timeout
        peer = Peer(ip, serial_key, serial_hex, dispatcher)
        try:
            if dispatcher is None:
                reader = RequestReader()
                method, path, _ = self._read_request_line(tls, deadline, reader)
                if not agent_wire.ungated(agent_wire.route(method, path)):
                    return self.endpoints.refuse(method, path, peer, state)
                # /renew and /renew-complete need only the CA-signed client
                # certificate (0.12): read the rest of that request.
                request = self._read_request(tls, deadline, reader)
            else:
                request = self._read_request(tls, deadline)
        except FramingError as exc:
            return Reply(exc.status, agent_wire.error_body(exc.reason))
        except TimeoutError:
            log.event("request-timeout", log.WARNING, PEER=ip)
            return None
        except (IncompleteMessage, ssl.SSLError, OSError):
            return None  # the peer went away mid-request: nobody to answer
        return self.endpoints.handle(request, peer, state)

    def _within_ceiling(self, ip: str, serial_key: str, dispatcher: str) -> bool:
        """A trusted dispatcher's own, generous ceiling (`rate_limit_trusted`),
        counted per certificate so it never touches other peers."""
        if self.trusted_limiter is None:
            return True
        with self._limiter_lock:
            verdict = self.trusted_limiter.admit(serial_key, self.clock())
        if verdict.blocked_now:
            log.event("rate-block", log.WARNING, PEER=ip, REASON="trusted", DISPATCHER=dispatcher)
        return verdict.allowed

    def _recv(self, tls: ssl.SSLSocket, deadline: float) -> bytes:
        remaining = deadline - self.clock()
        if remaining <= 0:
            raise TimeoutError("request deadline passed")
        tls.settimeout(remaining)
        return tls.recv(RECV_CHUNK)

    def _read_request_line(
        self, tls: ssl.SSLSocket, deadline: float, reader: RequestReader
    ) -> tuple[str, str, str]:
        while True:
            chunk = self._recv(tls, deadline)
            if not chunk:
                return reader.finish_request_line()
            line = reader.feed_request_line(chunk)
            if line is not None:
                return line

    def _read_request(
        self, tls: ssl.SSLSocket, deadline: float, reader: RequestReader | None = None
    ) -> Request:
        if reader is not None:  # the request line is in already: go on from there
            request = reader.feed(b"")
            if request is not None:
                return request
        else:
            reader = RequestReader()
        while True:
            chunk = self._recv(tls, deadline)
            if not chunk:
                return reader.finish()
            request = reader.feed(chunk)
            if request is not None:
                return request

    def _send(self, tls: ssl.SSLSocket, ip: str, reply: Reply) -> None:
        try:
            tls.settimeout(self.request_timeout)  # inactivity bound while the peer reads
            if isinstance(reply, StreamReply):
                send_stream(tls, reply)
                return
            tls.sendall(response_bytes(reply.status, reply.body))
        except (ssl.SSLError, OSError) as exc:
            log.event(
                "reply-fail", log.WARNING, PEER=ip, STATUS=reply.status, REASON=_failure_reason(exc)
            )
