"""TLS contexts and peer identity for every ctrl-exec connection.

Theory of operation. All connections use the standard library's ssl module
with one policy, 0.12's: TLS 1.2 or 1.3 only; TLS 1.2 restricted to the four
ECDHE AES-GCM suites; TLS 1.3 with OpenSSL's default suites, which are
exactly 0.12's list (AES-256-GCM, CHACHA20-POLY1305, AES-128-GCM).

Identity is not the certificate subject. Hostname checks are off everywhere
(agent certs carry a CN and no SAN, and the dispatcher addresses agents by
IP or name interchangeably); instead:

- TLS proves the peer holds a key certified by our CA (CERT_REQUIRED);
- then, before any request byte is read, the peer's serial number is
  canonicalised once (core.serial.Serial.trust_key) and looked up in the
  revocation list and the trusted-dispatcher map (agent side).

The agent requires a client certificate, stricter than 0.12 (which lets a
certless client finish the handshake and answers 403 later); a 0.12
dispatcher always presents one. Python >= 3.13 turns on X509 strict checks in
default contexts; we build contexts by hand and clear that flag, because
0.12's CA signs with `openssl x509 -req` and no extensions.

The pairing client is the one exception to certificate checking (0.12
pairing does not authenticate the dispatcher); it can pin the CA instead.
"""

from __future__ import annotations

import ssl

from ..core.serial import Serial
from ..core.x509 import facts_from_der

TLS12_CIPHERS = (
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256"
)


def _hardened(purpose_server: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if purpose_server else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if hasattr(ssl, "VERIFY_X509_STRICT"):
        context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    return context


def agent_server_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """Agent on 7443: present the agent cert, require a CA-signed client cert."""
    context = _hardened(True)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(cafile=ca)
    context.verify_mode = ssl.CERT_REQUIRED
    # One TLS 1.3 ticket per handshake instead of OpenSSL's two: a dispatcher
    # keeps one session per agent, and with OpenSSL 3.0 each ticket costs the
    # agent about 0.6 ms and the dispatcher about 0.2 ms of CPU per connection.
    context.num_tickets = 1
    return context


def dispatcher_client_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """Dispatcher -> agent: present the dispatcher cert, verify the agent
    against the CA, no hostname check."""
    context = _hardened(False)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(cert, key)
    context.load_verify_locations(cafile=ca)
    return context


def server_only_context(cert: str, key: str) -> ssl.SSLContext:
    """Pairing listener (7444) and the TLS API (7445): no client cert."""
    context = _hardened(True)
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_NONE
    return context


def pairing_client_context(pinned_ca_pem: str | None = None) -> ssl.SSLContext:
    """Agent -> pairing listener. Without a pin nothing is verified (as 0.12);
    with one, the server cert must chain to that CA."""
    context = _hardened(False)
    context.check_hostname = False
    if pinned_ca_pem is None:
        context.verify_mode = ssl.CERT_NONE
    else:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=pinned_ca_pem)
    return context


def peer_serial(sock: ssl.SSLSocket) -> Serial | None:
    """Serial number of the peer certificate (None when there is none or it
    cannot be read)."""
    der = sock.getpeercert(binary_form=True)
    if not der:
        return None
    try:
        return facts_from_der(der).serial
    except ValueError:
        return None
