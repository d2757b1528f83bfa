"""One mTLS request from the dispatcher to an agent (standard library only).

The wire rules (protocol.md §2.2, §14.2): a new TLS connection per request,
the dispatcher certificate presented, the agent verified against the CA
with no hostname check, `Content-Length` on every body, at most a few
header lines, and the reply read by Content-Length or to EOF.

Every blocking step (connect, handshake, send, each read) is bounded by
`timeout`: 0.12's `read_timeout` is an inactivity timeout, not a bound on
the whole run, and a long script that keeps its agent silent is given that
long. A caller that can learn whether the agent is still working on the
request (`still_waiting`, asked after each silent `timeout` before the
first reply byte) may keep the connection open longer. The reply size is
bounded by core.http.MAX_RESPONSE_BODY.

The result is an `AgentReply` or a `Failure` of one of the kinds in core.results;
nothing here raises for a network problem.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Callable

from ..core import results
from ..core.http import MAX_RESPONSE_BODY, ResponseReader, request_bytes
from ..errors import FramingError, IncompleteMessage
from .tls_sessions import Resumption

_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}
_RECV = 65536
# How a handshake ends when the agent closed the connection without a TLS
# word (an EOF or a reset, no alert): it refused us before any TLS work.
# Every certificate refusal arrives as an alert instead (ssl.SSLError).
_CLOSED_DURING_HELLO = (
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
    ConnectionResetError,
    BrokenPipeError,
    ConnectionAbortedError,
)


def exchange(
    context: ssl.SSLContext,
    address: str,
    port: int,
    method: str,
    path: str,
    body: bytes | None,
    timeout: float,
    max_body: int = MAX_RESPONSE_BODY,
    check_peer: Callable[[bytes], str | None] | None = None,
    still_waiting: Callable[[], bool] | None = None,
    resume: Resumption | None = None,
) -> results.AgentReply | results.Failure:
    """Send one request and read one reply of at most `max_body` bytes.
    `check_peer(der)` may refuse the agent's certificate after the handshake,
    before any request byte is sent. With `resume`, the agent's last session
    is offered and the new one remembered after a complete reply."""

    def failed(kind: str, detail: str = "") -> results.Failure:
        return results.Failure(kind, address, port, detail)

    sock = open_tls(context, address, port, timeout, check_peer, resume)
    if isinstance(sock, results.Failure):
        return sock
    try:
        outcome = _request(sock, method, path, body, address, port, max_body, failed, still_waiting)
        if resume is not None and isinstance(outcome, results.AgentReply):
            resume.keep(sock)
        return outcome
    finally:
        sock.close()


def open_tls(
    context: ssl.SSLContext,
    address: str,
    port: int,
    timeout: float,
    check_peer: Callable[[bytes], str | None] | None = None,
    resume: Resumption | None = None,
) -> ssl.SSLSocket | results.Failure:
    """A TLS connection to the agent, every step bounded by `timeout`;
    `check_peer(der)` may refuse the agent's certificate after the handshake,
    resumed or not, before any request byte is sent."""

    def failed(kind: str, detail: str = "") -> results.Failure:
        return results.Failure(kind, address, port, detail)

    try:
        raw = socket.create_connection((address, port), timeout=timeout)
    except socket.gaierror as exc:
        return failed(results.RESOLVE, exc.strerror or "")
    except ConnectionRefusedError:
        return failed(results.REFUSED)
    except TimeoutError:
        return failed(results.TIMEOUT)
    except OSError as exc:
        if exc.errno in _UNREACHABLE:
            return failed(results.UNREACHABLE)
        return failed(results.OTHER, exc.strerror or str(exc))
    try:
        session = resume.offer(context) if resume is not None else None
        sock = context.wrap_socket(raw, server_hostname=None, session=session)
    except TimeoutError:
        raw.close()
        return failed(results.TIMEOUT)
    except _CLOSED_DURING_HELLO as exc:
        raw.close()
        return failed(results.CLOSED_BEFORE_TLS, str(exc))
    except (ssl.SSLError, ConnectionError, OSError) as exc:
        raw.close()
        if resume is not None:
            resume.forget()  # the next handshake is a full one
        return failed(results.TLS, str(exc))
    if check_peer is not None:
        problem = check_peer(sock.getpeercert(binary_form=True) or b"")
        if problem:
            if resume is not None:
                resume.forget()
            sock.close()
            return failed(results.IDENTITY, problem)
    return sock


def _request(
    sock: ssl.SSLSocket,
    method: str,
    path: str,
    body: bytes | None,
    address: str,
    port: int,
    max_body: int,
    failed,
    still_waiting: Callable[[], bool] | None = None,
) -> results.AgentReply | results.Failure:
    host = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    reader = ResponseReader(max_body)
    received = 0
    try:
        sock.sendall(request_bytes(method, path, body, host=host))
        while True:
            try:
                data = sock.recv(_RECV)
            except TimeoutError:
                if received == 0 and still_waiting is not None and still_waiting():
                    continue
                raise
            if not data:
                response = reader.finish()
                break
            received += len(data)
            fed = reader.feed(data)
            if fed is not None:
                response = fed
                break
    except TimeoutError:
        return failed(results.READ_TIMEOUT)
    except ssl.SSLEOFError as exc:
        if received:  # EOF without close_notify: the end of a reply read to EOF
            return _finish(reader, failed)
        return failed(results.TLS, str(exc))
    except (ssl.SSLError, ConnectionError) as exc:
        if received:
            return failed(results.PROTOCOL, f"connection broken mid-response ({exc})")
        # Under TLS 1.3 an agent refuses our certificate only after our side
        # of the handshake is done: its alert reaches the first read, or is
        # lost when its close resets the connection under the request we
        # just sent. Either way nothing was answered, and that is the cause.
        return failed(results.TLS, str(exc))
    except IncompleteMessage:
        return failed(results.CLOSED if received == 0 else results.PROTOCOL, "truncated response")
    except FramingError as exc:
        return failed(results.PROTOCOL, exc.reason)
    except OSError as exc:
        return failed(results.OTHER, exc.strerror or str(exc))
    return results.AgentReply(response.status, response.phrase, response.body)


def _finish(reader: ResponseReader, failed) -> results.AgentReply | results.Failure:
    try:
        response = reader.finish()
    except IncompleteMessage:
        return failed(results.PROTOCOL, "truncated response")
    except FramingError as exc:
        return failed(results.PROTOCOL, exc.reason)
    return results.AgentReply(response.status, response.phrase, response.body)
