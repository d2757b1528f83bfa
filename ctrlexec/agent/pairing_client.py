"""The agent's side of the pairing connection (port 7444).

Sequence, as a 0.12 agent does it: a plain TCP probe (so that a wrong host
or a closed port is reported before a key is generated), then one TLS
connection carrying `POST /pair` and two responses read by Content-Length:
the acknowledgement now, the result when the operator decides.

TLS verifies nothing by default, as in 0.12: the dispatcher is not
authenticated during pairing. The caller may pin the CA by fingerprint; the
pin is checked against the returned CA and the server certificate captured
here (agent/pairing_store.py), before anything is stored.
"""

from __future__ import annotations

import socket
import ssl
import time

from ..core import pairing as wire
from ..core.http import MAX_PAIRING_RESPONSE, ResponseReader, request_bytes
from ..errors import (
    DispatcherUnreachable,
    FramingError,
    IncompleteMessage,
    OperationTimeout,
    ProtocolError,
)
from ..pki.tls import pairing_client_context

PROBE_TIMEOUT = 5.0
# Connect, handshake, send and acknowledgement: the dispatcher answers at once.
EXCHANGE_TIMEOUT = 30.0
READ_CHUNK = 16384


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror:
        raise DispatcherUnreachable(
            f"could not resolve the dispatcher host '{host}': check the name, "
            "or give its IP address"
        ) from None
    except ConnectionRefusedError:
        raise DispatcherUnreachable(
            f"connection refused by {_where(host, port)}: is pairing mode active on the "
            "dispatcher ('ced pairing-mode'), and is this its pairing port?"
        ) from None
    except TimeoutError:
        raise DispatcherUnreachable(
            f"no answer from {_where(host, port)} within {timeout:g}s: check the address "
            "and any firewall between this host and the dispatcher"
        ) from None
    except OSError as exc:
        raise DispatcherUnreachable(
            f"cannot connect to {_where(host, port)}: {exc.strerror or exc}"
        ) from None


def probe(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> None:
    """Open and close a plain TCP connection (0.12's pre-flight)."""
    _connect(host, port, timeout).close()


def open_connection(host: str, port: int) -> PairingConnection:
    """Connect and complete the TLS handshake (nothing verified, as 0.12)."""
    raw = _connect(host, port, EXCHANGE_TIMEOUT)
    try:
        tls = pairing_client_context().wrap_socket(raw, server_hostname=None)
    except (ssl.SSLError, OSError) as exc:
        raw.close()
        raise DispatcherUnreachable(
            f"{_where(host, port)} did not complete a TLS handshake ({exc}): "
            "is this the dispatcher's pairing port, with pairing mode active?"
        ) from None
    return PairingConnection(tls, tls.getpeercert(binary_form=True) or b"", tls.getsockname()[0])


class PairingConnection:
    """One pairing exchange on a connected stream: `submit()` then
    `result()`. `server_cert_der` is what the listener presented (b"" when
    the stream is not TLS); `local_ip` is our end's address, which the
    request reports."""

    def __init__(self, sock: socket.socket, server_cert_der: bytes = b"", local_ip: str = ""):
        self.server_cert_der = server_cert_der
        self.local_ip = local_ip
        self._sock: socket.socket | None = sock
        self._buffer = b""

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def submit(self, body: bytes) -> str:
        """Send the request; return the reqid of the acknowledgement."""
        assert self._sock is not None
        try:
            self._sock.sendall(request_bytes("POST", "/pair", body))
        except OSError as exc:
            raise DispatcherUnreachable(f"the dispatcher closed the connection ({exc})") from None
        ack = self._read_response(time.monotonic() + EXCHANGE_TIMEOUT, "acknowledgement")
        return wire.parse_ack(ack)

    def result(self, nonce: str, deadline: float) -> wire.Approval:
        """Wait (until the monotonic `deadline`) for the operator's decision."""
        body = self._read_response(deadline, "result")
        return wire.parse_result(body, nonce)

    def _read_response(self, deadline: float, what: str) -> bytes:
        assert self._sock is not None
        reader = ResponseReader(max_body=MAX_PAIRING_RESPONSE)
        data, self._buffer = self._buffer, b""
        while True:
            try:
                response = reader.feed(data)
            except FramingError as exc:
                raise ProtocolError(f"malformed {what} from the dispatcher: {exc}") from None
            if response is not None:
                self._buffer = reader.remainder
                return response.body
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OperationTimeout(f"no {what} from the dispatcher in time")
            self._sock.settimeout(remaining)
            try:
                data = self._sock.recv(READ_CHUNK)
            except TimeoutError:
                raise OperationTimeout(f"no {what} from the dispatcher in time") from None
            except (ssl.SSLError, OSError) as exc:
                raise ProtocolError(
                    f"connection lost while waiting for the {what} ({exc})"
                ) from None
            if not data:
                try:
                    return reader.finish().body
                except (IncompleteMessage, FramingError):
                    raise ProtocolError(
                        f"the dispatcher closed the connection before sending the {what}"
                    ) from None
