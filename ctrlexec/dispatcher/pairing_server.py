"""The pairing listener (port 7444), open only while `ced pairing-mode` runs.

Theory of operation. The port is unauthenticated by design: anyone may ask
to be paired, only the operator decides. So everything about a connection is
bounded before the operator sees anything:

1. accept; per-address volume limit (pairing_rate_limit_volume, 0.12's
   10/60/300) and a cap on concurrent connections - refused ones are closed
   with no answer;
2. a connection that closes without sending a byte is 0.12's pre-flight
   probe: closed quietly; one that stays silent is closed after
   pairing_request_timeout;
3. TLS with the dispatcher certificate, no client certificate;
4. one request, read within pairing_request_timeout, Content-Length at most
   64 KiB (else 0.12's `request too large`);
5. validation (core/pairing.py) and, stricter than 0.12, the CSR checks the
   CA will apply at approval (pki/csr.py, CN bound to the hostname), so a
   request that could never be signed never reaches the queue;
6. the queue cap, then the request is queued and acknowledged at once;
7. the same connection waits for the operator (up to 600 s, and never past
   the end of pairing mode), then gets the approval or denial; an agent that
   disconnects while waiting withdraws its request.

Every refusal is one `{"status":"error","reason":...}` response (or a closed
connection) and one `pair-reject` log line, and changes no file. Each
connection is served in its own thread; the accept loop never blocks on one.
"""

from __future__ import annotations

import secrets
import select
import selectors
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from .. import log
from ..core import pairing as wire
from ..core.http import RequestReader, encode_json, response_bytes
from ..core.ids import TokenBytes, new_reqid
from ..core.ratelimit import RateLimiter, Rule
from ..core.timefmt import iso_utc
from ..errors import (
    CsrRejected,
    FramingError,
    IncompleteMessage,
    PairingRefused,
    PairRequestError,
    StateError,
)
from ..netio import ListenerPause, abort, accept_pending, accepting, finish, open_listeners
from ..pki import csr as csr_rules
from ..pki import revocation
from ..pki.tls import server_only_context
from .pairing_queue import PairingQueue

# How often a waiting connection looks for the operator's decision, and how
# often the accept loop calls its idle callback.
POLL_INTERVAL = 0.25
# Bound on the reverse DNS lookup shown to the operator (0.12: 2 s).
REVERSE_DNS_TIMEOUT = 2.0
# Connections served at once beyond the queue's waiting ones; more are closed.
EXTRA_HANDLERS = 64
READ_CHUNK = 16384
# Any of these ends pairing mode (SIGHUP too: the terminal went away).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

# What the accept loop returns: why it stopped.
TIMEOUT = "timeout"
SIGNAL = "signal"
QUIT = "quit"
# What an input callback returns (see PairingListener.serve).
INPUT_CLOSED = "closed"

_resolver = ThreadPoolExecutor(max_workers=4, thread_name_prefix="rdns")


@dataclass(frozen=True)
class ListenerSettings:
    cert: str
    key: str
    port: int = 7444
    bind: str = ""
    max_queue: int = 10
    rate: Rule | None = Rule(10, 60, 300)
    request_timeout: float = 10.0
    approval_wait: float = wire.APPROVAL_WAIT
    revoked_keys: str = ""  # ca_dir/revoked-keys: keys never certified again
    # How often a waiting connection looks for the operator's decision.
    poll_interval: float = POLL_INTERVAL


def _lookup(ip: str) -> tuple[str, bool]:
    name = socket.gethostbyaddr(ip)[0]
    addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
    return name, ip in addresses


def reverse_dns(ip: str) -> tuple[str, bool]:
    """(name, forward-confirmed) for `ip`, or ('', False) when the lookup
    fails or takes longer than REVERSE_DNS_TIMEOUT."""
    try:
        return _resolver.submit(_lookup, ip).result(timeout=REVERSE_DNS_TIMEOUT)
    except (FutureTimeout, OSError, UnicodeError, ValueError):
        return "", False


class PairingListener:
    def __init__(
        self,
        settings: ListenerSettings,
        queue: PairingQueue,
        on_queued: Callable[[dict], None] | None = None,
        resolve: Callable[[str], tuple[str, bool]] = reverse_dns,
        clock: Callable[[], float] = time.time,
        wrap: Callable[[socket.socket], socket.socket] | None = None,
        token_bytes: TokenBytes = secrets.token_bytes,
    ):
        """`wrap` turns an accepted connection into the TLS one (default: the
        dispatcher certificate, no client certificate); tests may pass a
        function that returns the connection as it is."""
        self.settings = settings
        self.queue = queue
        self.on_queued = on_queued
        self.resolve = resolve
        self.clock = clock
        self.token_bytes = token_bytes
        if wrap is None:
            context = server_only_context(settings.cert, settings.key)
            wrap = lambda conn: context.wrap_socket(conn, server_side=True)  # noqa: E731
        self._wrap = wrap
        self._limiter = RateLimiter(volume=settings.rate, probe=None) if settings.rate else None
        self._slots = threading.BoundedSemaphore(settings.max_queue + EXTRA_HANDLERS)
        self._closing = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._threads_lock = threading.Lock()
        self._listeners: list[socket.socket] = []

    # --- lifecycle ----------------------------------------------------------

    def listen(self) -> int:
        """Open the port; returns the port number (useful with port 0)."""
        csr_rules.warm()
        # `::` has always meant every address here, IPv4 included.
        bind = "" if self.settings.bind == "::" else self.settings.bind
        self._listeners = open_listeners(bind, self.settings.port)
        return self._listeners[0].getsockname()[1]

    def serve(
        self,
        deadline: float,
        on_ready: Callable[[], None] | None = None,
        inputs: Mapping[int, Callable[[], str | None]] | None = None,
        on_idle: Callable[[], None] | None = None,
    ) -> str:
        """Accept connections in this (the main) thread until the monotonic
        `deadline` (TIMEOUT), a stop signal (SIGNAL) or an input callback
        returning QUIT. Signals arrive as bytes on netio's wake-up socket.

        `on_ready` runs once the signals are routed, before the first accept.
        `inputs` maps a readable descriptor (the operator's terminal) to a
        callback run when it is readable; it returns None, INPUT_CLOSED (stop
        watching it) or QUIT. `on_idle` runs about every POLL_INTERVAL.
        The listening sockets are closed on the way out; call close() next
        to end the connections still waiting."""
        assert self._listeners, "listen() first"
        with accepting(self._listeners, STOP_SIGNALS) as (selector, _wake):
            for fd, callback in (inputs or {}).items():
                selector.register(fd, selectors.EVENT_READ, _Input(callback))
            if on_ready is not None:
                on_ready()
            return self._accept_loop(selector, deadline, on_idle)

    def _accept_loop(
        self,
        selector: selectors.BaseSelector,
        deadline: float,
        on_idle: Callable[[], None] | None,
    ) -> str:
        next_idle = time.monotonic() + POLL_INTERVAL
        pause = ListenerPause(selector, self._listeners)
        while True:
            now = time.monotonic()
            if now >= deadline:
                return TIMEOUT
            if on_idle is not None and now >= next_idle:
                on_idle()
                next_idle = now + POLL_INTERVAL
            for key, _ in selector.select(min(POLL_INTERVAL, deadline - now)):
                if key.data is None:  # the wake-up socket: a stop signal
                    return SIGNAL
                if isinstance(key.data, _Input):
                    verdict = key.data.callback()
                    if verdict == QUIT:
                        return QUIT
                    if verdict == INPUT_CLOSED:
                        selector.unregister(key.fileobj)
                elif not pause.paused and not self._accept(key.data):
                    pause.pause()
            pause.resume_if_due()

    def _accept(self, listener: socket.socket) -> bool:
        """Accept what is pending; False when accept failed for lack of resources."""
        return accept_pending(listener, self.admit, log_errors=False)

    def close(self, grace: float = 5.0) -> None:
        """Stop taking requests; waiting agents are told `approval timeout`."""
        self._closing.set()
        deadline = time.monotonic() + grace
        with self._threads_lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # --- one connection -----------------------------------------------------

    def admit(self, conn: socket.socket, ip: str) -> None:
        """Serve one accepted connection on its own thread, within the rate
        limit and the cap on connections; otherwise close it."""
        if self._limiter is not None:
            verdict = self._limiter.admit(ip, time.monotonic())
            if not verdict.allowed:
                if verdict.blocked_now:
                    log.event("rate-block", log.WARNING, PEER=ip, REASON=verdict.blocked_now)
                abort(conn)
                return
        if not self._slots.acquire(blocking=False):
            log.event("pair-reject", log.WARNING, IP=ip, REASON="overload")
            abort(conn)
            return
        thread = threading.Thread(
            target=self._handle, args=(conn, ip), daemon=True, name=f"pair-{ip}"
        )
        with self._threads_lock:
            self._threads.add(thread)
        try:
            thread.start()
        except RuntimeError:  # the system refuses another thread: as overload
            with self._threads_lock:
                self._threads.discard(thread)
            self._slots.release()
            log.event("pair-reject", log.WARNING, IP=ip, REASON="overload")
            abort(conn)

    def _handle(self, conn: socket.socket, ip: str) -> None:
        try:
            self._serve(conn, ip)
        except Exception as exc:
            log.event(
                "pair-reject",
                log.ERR,
                IP=ip,
                REASON="internal-error",
                ERROR=f"{type(exc).__name__}: {exc}",
            )
        finally:
            abort(conn)
            self._slots.release()
            with self._threads_lock:
                self._threads.discard(threading.current_thread())

    def _serve(self, conn: socket.socket, ip: str) -> None:
        timeout = self.settings.request_timeout
        deadline = time.monotonic() + timeout
        conn.settimeout(timeout)
        try:
            first = conn.recv(1, socket.MSG_PEEK)
        except TimeoutError:
            log.event("pair-reject", IP=ip, REASON="timeout")
            return
        except OSError:
            return
        if not first:
            return  # a bare TCP probe (0.12's request-pairing pre-flight)
        try:
            tls = self._wrap(conn)
        except (ssl.SSLError, OSError) as exc:
            log.event("pair-reject", IP=ip, REASON="tls-handshake", DETAIL=_short(exc))
            return
        try:
            try:
                reqid, hostname = self._queue_request(tls, ip, deadline)
            except PairingRefused as refusal:
                if refusal.reason and self._send(tls, encode_json(wire.error_body(refusal.reason))):
                    finish(tls)  # the agent reads the answer, not a reset
                fields = {"DETAIL": refusal.detail} if refusal.detail else {}
                log.event("pair-reject", IP=ip, REASON=refusal.log_reason, **fields)
                return
            if self._send(tls, encode_json(wire.pending_body(reqid))):
                self._await_decision(tls, reqid, hostname)
            else:
                self._withdraw(tls, reqid, hostname, "disconnected")
        finally:
            abort(tls)

    def _queue_request(self, tls: socket.socket, ip: str, deadline: float) -> tuple[str, str]:
        request = _read_request(tls, deadline)
        try:
            pair = wire.parse_request(request.body)
        except PairRequestError as exc:
            raise PairingRefused(exc.reason, exc.log_reason, exc.detail) from None
        try:
            facts = csr_rules.validate(pair.csr, expected_cn=pair.hostname)
        except CsrRejected as exc:
            raise PairingRefused(wire.REASON_INVALID, "invalid-csr", str(exc)) from None
        if self.settings.revoked_keys and facts.key_sha256 in revocation.read_keys(
            self.settings.revoked_keys
        ):
            # The key of a revoked certificate: refused at once (read per request).
            raise PairingRefused(wire.REASON_INVALID, "revoked-key", "key of a revoked certificate")
        if self._closing.is_set():
            raise PairingRefused(None, "pairing-mode-stopped")
        reqid = new_reqid(self.token_bytes)
        name, confirmed = self.resolve(ip)
        record = wire.queue_record(pair, reqid, ip, iso_utc(self.clock()), name, confirmed)
        if not self.queue.add(record, self.settings.max_queue):
            raise PairingRefused(wire.REASON_QUEUE_FULL, "queue-full")
        fields = {"REPORTED_IP": pair.ip} if pair.ip else {}
        log.event(
            "pair-request", AGENT=pair.hostname, IP=ip, REQID=reqid, STATUS="pending", **fields
        )
        if self.on_queued is not None:
            self.on_queued(record)
        return reqid, pair.hostname

    def _await_decision(self, tls: socket.socket, reqid: str, hostname: str) -> None:
        deadline = time.monotonic() + self.settings.approval_wait
        while True:
            try:
                body = self.queue.decision(reqid)
            except StateError as exc:  # e.g. a planted link: nothing is sent
                log.event("pair-reject", log.ERR, REQID=reqid, REASON="state", DETAIL=str(exc))
                return
            if body is not None:
                self._send(tls, body)
                self.queue.delivered(reqid)
                return
            if self._closing.is_set():
                return self._withdraw(tls, reqid, hostname, "pairing-mode-stopped")
            if time.monotonic() >= deadline:
                return self._withdraw(tls, reqid, hostname, "approval-timeout")
            if _peer_gone(tls, self.settings.poll_interval):
                return self._withdraw(tls, reqid, hostname, "disconnected")

    def _withdraw(self, tls: socket.socket, reqid: str, hostname: str, why: str) -> None:
        body = self.queue.withdraw(reqid)
        if body is not None:  # decided at the last moment: deliver that
            self._send(tls, body)
            self.queue.delivered(reqid)
            return
        log.event("pair-expire", AGENT=hostname, REQID=reqid, REASON=why)
        if why != "disconnected":
            self._send(tls, encode_json(wire.denied_body(wire.REASON_TIMEOUT)))

    def _send(self, tls: socket.socket, body: bytes) -> bool:
        try:
            tls.settimeout(self.settings.request_timeout)
            tls.sendall(response_bytes(200, body))
            return True
        except (OSError, ValueError):
            return False


def _read_request(tls: socket.socket, deadline: float):
    reader = RequestReader(max_body=wire.MAX_PAIR_BODY)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PairingRefused(None, "timeout")
        tls.settimeout(remaining)
        try:
            data = tls.recv(READ_CHUNK)
        except TimeoutError:
            raise PairingRefused(None, "timeout") from None
        except (ssl.SSLError, OSError):
            raise PairingRefused(None, "truncated") from None
        try:
            if not data:
                reader.finish()
                raise PairingRefused(wire.REASON_INVALID, "truncated")
            request = reader.feed(data)
        except FramingError as exc:
            if exc.status == 413:
                raise PairingRefused(wire.REASON_TOO_LARGE, "body-too-large") from None
            raise PairingRefused(wire.REASON_INVALID, "invalid-request", exc.detail) from None
        except IncompleteMessage:
            raise PairingRefused(wire.REASON_INVALID, "truncated") from None
        if request is not None:
            return request


def _peer_gone(tls: socket.socket, wait: float) -> bool:
    """Wait up to `wait` seconds; True if the agent closed its side."""
    try:
        ready, _, _ = select.select([tls], [], [], wait)
    except (OSError, ValueError):
        return True
    if not ready:
        return False
    tls.setblocking(False)
    try:
        return not tls.recv(READ_CHUNK)
    except ssl.SSLWantReadError:
        return False
    except (ssl.SSLError, OSError):
        return True


class _Input:
    """A watched descriptor's callback (told apart from listeners in the selector)."""

    def __init__(self, callback: Callable[[], str | None]):
        self.callback = callback


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:160]
