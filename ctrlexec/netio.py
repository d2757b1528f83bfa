"""Socket plumbing shared by the long-running servers (agent on 7443,
dispatcher API on 7445): listening sockets, signal delivery to an accept
loop, and closing a connection so the peer sees the reply.

Why closing needs care: a server that closes a socket while unread input
is still queued makes the kernel send a reset, and a reset can destroy the
reply still in flight to the peer. `finish` therefore sends close_notify
(TLS), half-closes, and drains what the peer still sends (bounded in time
and bytes) before closing.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import selectors
import signal
import socket
import ssl
import time
from collections.abc import Callable

from . import log

# Pending connections the kernel queues for us (0.12 uses 10; a fan-out of
# hundreds of dispatcher connections must not be refused by the kernel).
LISTEN_BACKLOG = 512
RECV_CHUNK = 65_536
# After the reply: how long and how much unread input is drained so the
# close does not turn into a reset that destroys the reply in flight.
LINGER_SECONDS = 1.0
LINGER_BYTES = 256 * 1024


def peer_address(address: tuple) -> str:
    """The peer IP as text; IPv4-mapped IPv6 shown as IPv4 (as 0.12 logs it)."""
    try:
        ip = ipaddress.ip_address(str(address[0]).split("%", 1)[0])
    except (ValueError, IndexError):
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


# accept() failures that mean "out of resources": stop listening a moment.
_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def accept_pending(
    listener: socket.socket,
    admit: Callable[[socket.socket, str], None],
    log_errors: bool = True,
) -> bool:
    """Accept every connection pending on `listener` (non-blocking) and hand
    each to `admit(conn, address)`; False when accept failed for lack of
    resources (descriptors, memory), so that the caller can pause."""
    while True:
        try:
            conn, address = listener.accept()
        except (BlockingIOError, InterruptedError):
            return True
        except ConnectionAbortedError:
            continue
        except OSError as exc:
            if log_errors:
                log.event("accept-error", log.ERR, ERROR=exc.strerror or str(exc))
            return exc.errno not in _EXHAUSTED
        admit(conn, peer_address(address))


def open_listeners(bind: str, port: int) -> list[socket.socket]:
    """Non-blocking listening sockets for `bind` (empty: every interface,
    IPv6 and IPv4), for an accept loop driven by a selector."""
    if not bind:
        try:
            sock = socket.create_server(
                ("::", port),
                family=socket.AF_INET6,
                backlog=LISTEN_BACKLOG,
                reuse_port=False,
                dualstack_ipv6=True,
            )
        except (OSError, ValueError):
            sock = socket.create_server(("0.0.0.0", port), backlog=LISTEN_BACKLOG)
    else:
        infos = socket.getaddrinfo(bind, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        sock = socket.create_server(address[:2], family=family, backlog=LISTEN_BACKLOG)
    sock.setblocking(False)
    return [sock]


@contextlib.contextmanager
def signals_as_bytes(signals: tuple[int, ...]):
    """Deliver `signals` as bytes (their numbers) on a socket the accept loop
    selects on, so they are handled between accepts, never in a handler."""
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    previous_fd = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    previous = {sig: signal.signal(sig, _note_signal) for sig in signals}
    try:
        yield wake_r
    finally:
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        wake_r.close()
        wake_w.close()


def received_signals(wake: socket.socket) -> bytes:
    """The numbers of the signals waiting on a wake-up socket (as
    signals_as_bytes delivers them); empty when there are none."""
    try:
        return wake.recv(512)
    except BlockingIOError:
        return b""


@contextlib.contextmanager
def accepting(listeners: list[socket.socket], signals: tuple[int, ...]):
    """A selector over the listening sockets (key data: the socket) and the
    signal wake-up socket (key data: None), for one server's accept loop.
    SIGPIPE is ignored: a peer that goes away mid-reply is that connection's
    problem, never the server's. The listeners are closed on the way out."""
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    with signals_as_bytes(signals) as wake, selectors.DefaultSelector() as selector:
        selector.register(wake, selectors.EVENT_READ, None)
        for sock in listeners:
            selector.register(sock, selectors.EVENT_READ, sock)
        try:
            yield selector, wake
        finally:
            close_all(listeners)


# After accept fails for lack of file descriptors or memory, the listeners
# are not polled for this long (instead of spinning on them).
ACCEPT_BACKOFF = 0.1


class ListenerPause:
    """The listeners of one accept loop, taken out of its selector for
    ACCEPT_BACKOFF when accept failed for lack of resources, then put back."""

    def __init__(
        self,
        selector: selectors.BaseSelector,
        listeners: list[socket.socket],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.selector = selector
        self.listeners = listeners
        self.clock = clock
        self.until: float | None = None

    @property
    def paused(self) -> bool:
        return self.until is not None

    def timeout(self) -> float | None:
        """How long select may block: until the pause ends (None: no bound)."""
        return None if self.until is None else max(0.0, self.until - self.clock())

    def pause(self) -> None:
        self.until = self.clock() + ACCEPT_BACKOFF
        for sock in self.listeners:
            self.selector.unregister(sock)

    def resume_if_due(self) -> None:
        if self.until is not None and self.clock() >= self.until:
            self.until = None
            for sock in self.listeners:
                self.selector.register(sock, selectors.EVENT_READ, sock)


def close_all(listeners: list[socket.socket]) -> None:
    for sock in listeners:
        sock.close()


def _note_signal(signum, frame) -> None:
    """Installed so the signal is delivered; the wake-up socket carries it."""


def abort(conn: socket.socket) -> None:
    """Close a connection we will not serve, without waiting for anything."""
    try:
        conn.close()
    except OSError:
        pass


def interrupt(handle: socket.socket) -> None:
    """End a connection another thread is serving, through a duplicate of
    its socket (`handle`, closed here): that thread's blocked read returns."""
    try:
        handle.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    handle.close()


def finish(conn: socket.socket) -> None:
    """Send close_notify (TLS) without waiting for the peer's, half-close,
    and drain what the peer still sends (bounded), then close."""
    if isinstance(conn, ssl.SSLSocket):
        try:
            conn.setblocking(False)
            conn.unwrap()
        except (ssl.SSLError, OSError, ValueError):
            pass
        try:
            raw = socket.socket(fileno=conn.detach())
        except OSError:
            conn.close()
            return
    else:
        raw = conn
    try:
        raw.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_SECONDS
        drained = 0
        while drained < LINGER_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            raw.settimeout(remaining)
            data = raw.recv(RECV_CHUNK)
            if not data:
                break
            drained += len(data)
    except OSError:
        pass
    finally:
        raw.close()
