"""Can this agent serve? Offline checks (`self-check`), the same rules
`serve` refuses to start on, and the loopback `self-ping`.

One place for each rule: `serving_context()` is what `serve` uses (it raises
ConfigError, exit 78), and `checks()` reports the same conditions, plus
warnings, one line each. Stricter than 0.12: `self-check` fails (exit 1)
when any check fails, not only when a config file cannot be parsed.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from ..config.load import AgentConfig, load_agent, load_allowlist
from ..config.paths import Layout
from ..core import ids
from ..core.http import ResponseReader, encode_json, request_bytes
from ..core.timefmt import openssl_notafter
from ..core.x509 import facts_from_pem
from ..errors import ConfigError, FramingError, IncompleteMessage, NotAllowlisted
from ..pki import tls
from . import capabilities, trust
from .allowlist import Allowlist

PAIRING_HINT = "run `ctrl-exec-agent request-pairing --dispatcher HOST` first"
SELF_PING_TIMEOUT = 5.0
# An expired certificate cannot be renewed over mTLS: the dispatcher refuses it.
EXPIRED_HINT = (
    "it cannot be renewed any more: pair again with `ctrl-exec-agent request-pairing "
    "--dispatcher HOST`, approved there with `ced approve REQID --replace`"
)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    warning: bool = False  # reported, but does not fail the check run

    def as_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "warning": self.warning, "detail": self.detail}


# --- rules shared with `serve` ---------------------------------------------


def _identity_files(config: AgentConfig) -> list[tuple[str, str]]:
    return [("cert", config.cert), ("key", config.key), ("ca", config.ca)]


def missing_identity(config: AgentConfig) -> tuple[str, str] | None:
    """(key, path) of the first identity file that is absent."""
    for key, path in _identity_files(config):
        if not os.path.exists(path):
            return key, path
    return None


def serving_context(config: AgentConfig) -> ssl.SSLContext:
    """The agent's TLS context, or ConfigError naming what stops it serving."""
    source = str(config.source) if config.source else None
    absent = missing_identity(config)
    if absent:
        key, path = absent
        raise ConfigError(f"not paired yet: {path} is missing ({PAIRING_HINT})", source, key)
    unenforced = unenforced_profiles(config)
    if unenforced:
        name, setting = unenforced[0]
        raise ConfigError(
            f"profile '{name}' sets {setting}, which only the privileged executor applies, "
            "and executor_socket is unset (set executor_socket and run `ctrl-exec-executor "
            "serve`, or remove the setting)",
            source,
            f"profile.{name}.{setting}",
        )
    hook = config.auth_hook
    if hook and not capabilities.executable(hook):
        raise ConfigError(f"{hook} is not an executable file", source, "auth_hook")
    try:
        return tls.agent_server_context(config.cert, config.key, config.ca)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(
            f"cannot use the agent certificate, key and CA "
            f"({config.cert}, {config.key}, {config.ca}): {reason}",
            source,
        ) from None


EXECUTOR_SETTINGS = ("run_as", "caps", "writable")


def unenforced_profiles(config: AgentConfig) -> list[tuple[str, str]]:
    """(profile, setting) for each setting only the executor can apply, when
    no executor is configured: the agent refuses to serve with any of them
    rather than run scripts without the control they ask for."""
    if config.executor_socket:
        return []
    return [
        (name, setting)
        for name, profile in sorted(config.profiles.items())
        for setting in EXECUTOR_SETTINGS
        if getattr(profile, setting)
    ]


# --- self-check -------------------------------------------------------------


def executor_check(path: str) -> Check:
    """Whether the executor's socket is there (a warning when not: the
    executor may simply start after the agent; runs fail until it does)."""
    try:
        is_socket = stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError as exc:
        return Check(
            "executor", True, f"{path}: {exc.strerror} (is ctrl-exec-executor running?)", True
        )
    if not is_socket:
        return Check("executor", False, f"{path} is not a socket")
    return Check("executor", True, f"{path} (scripts run through the privileged executor)")


def _verifies_against_ca(config: AgentConfig) -> str | None:
    """None when the agent cert chains to the CA and matches the key; else why.
    Done with an in-memory TLS handshake: stdlib only."""
    try:
        server = tls.agent_server_context(config.cert, config.key, config.ca)
        client = tls.dispatcher_client_context(config.cert, config.key, config.ca)
    except (OSError, ssl.SSLError) as exc:
        return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client_side = client.wrap_bio(client_in, client_out, server_side=False)
    server_side = server.wrap_bio(server_in, server_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):  # a TLS 1.3 handshake needs three flights
        for name, side in (("client", client_side), ("server", server_side)):
            if done[name]:
                continue
            try:
                side.do_handshake()
                done[name] = True
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            except ssl.SSLCertVerificationError as exc:
                # OpenSSL's words ("certificate has expired"), not its reason code
                return exc.verify_message or exc.reason or str(exc)
            except ssl.SSLError as exc:
                return exc.reason or str(exc)
            server_in.write(client_out.read())
            client_in.write(server_out.read())
        if all(done.values()):
            return None
    return "the TLS handshake with itself did not complete"


def identity_checks(config: AgentConfig, now: float) -> list[Check]:
    absent = missing_identity(config)
    if absent:
        return [Check("paired", False, f"no: {absent[1]} is missing ({PAIRING_HINT})")]
    try:
        with open(config.cert, encoding="ascii", errors="replace") as handle:
            facts = facts_from_pem(handle.read(1_048_576))
    except (OSError, ValueError) as exc:
        return [
            Check(
                "paired",
                False,
                f"cannot read {config.cert}: {getattr(exc, 'strerror', None) or exc}",
            )
        ]
    expiry = openssl_notafter(facts.not_after)
    days = int((facts.not_after - now) // 86400)
    checks = [Check("paired", True, f"yes (cert expires {expiry})")]
    if facts.not_after <= now:
        checks.append(Check("certificate", False, f"expired on {expiry} ({EXPIRED_HINT})"))
    else:
        checks.append(
            Check("certificate", True, f"{facts.subject or '(empty subject)'}, {days} days left")
        )
    problem = _verifies_against_ca(config)
    checks.append(
        Check(
            "certificate chain",
            problem is None,
            "key matches, signed by the CA" if problem is None else problem,
        )
    )
    checks.append(key_mode_check(config.key))
    return checks


def key_mode_check(path: str) -> Check:
    """The private key may be read by its owner and the agent's group (0640,
    as pairing writes it), never by other users, never written by the group."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as exc:
        return Check("key permissions", False, f"{path}: {exc.strerror}")
    if mode & 0o037:
        return Check(
            "key permissions",
            False,
            f"{path} is mode {mode:04o}: other users can read or change the agent's private "
            f"key (chmod 0640 {path}, and pair again if it may have been copied)",
        )
    return Check("key permissions", True, f"{path} mode {mode:04o}")


def script_checks(allowlist: Allowlist) -> list[Check]:
    checks = []
    for name in allowlist.names():
        entry = allowlist.entries[name]
        label = f"Script '{name}': {entry.path}  (profile: {entry.profile})"
        try:
            resolved = allowlist.resolve(name)
        except NotAllowlisted as exc:
            checks.append(Check(f"script {name}", False, f"{label} [{exc.why.upper()}]"))
            continue
        if not os.path.lexists(resolved.executable):
            checks.append(Check(f"script {name}", False, f"{label} [MISSING]"))
            continue
        ok = capabilities.executable(resolved.executable)
        checks.append(Check(f"script {name}", ok, f"{label} [{'ok' if ok else 'NOT EXECUTABLE'}]"))
    return checks


def checks(
    layout: Layout, config_path: Path | None, allowlist_path: Path | None, now: float | None = None
) -> list[Check]:
    now = time.time() if now is None else now
    try:
        config = load_agent(layout, config_path)
    except ConfigError as exc:
        return [Check("config", False, str(exc))]
    where = str(config.source) if config.source else "defaults (no agent.toml)"
    results = [Check("config", True, f"{where} (port {config.port})")]
    try:
        entries = load_allowlist(layout, allowlist_path, config.profiles)
    except ConfigError as exc:
        results.append(Check("allowlist", False, str(exc)))
        entries = None
    if entries is not None:
        results.append(Check("allowlist", True, f"{len(entries)} script(s)"))
        results += script_checks(Allowlist(entries, tuple(config.script_dirs)))
    results += identity_checks(config, now)
    try:
        trusted = trust.load_map(config.trusted_dispatchers_path)
        detail = (
            f"{len(trusted)} ({', '.join(sorted(set(trusted.values())))})"
            if trusted
            else f"none in {config.trusted_dispatchers_path}: no dispatcher can use this agent"
        )
        results.append(Check("trusted dispatchers", bool(trusted), detail))
    except (OSError, ValueError) as exc:
        results.append(Check("trusted dispatchers", False, str(exc)))
    try:
        revoked = trust.load_revocations(config.revoked_serials)
        results.append(
            Check(
                "revocation list",
                True,
                f"{len(revoked.serials)} serial(s)"
                if revoked.present
                else f"absent ({config.revoked_serials}): nothing revoked",
            )
        )
    except (OSError, ValueError) as exc:
        results.append(Check("revocation list", False, str(exc)))
    if config.auth_hook:
        ok = capabilities.executable(config.auth_hook)
        results.append(
            Check(
                "auth hook",
                ok,
                config.auth_hook if ok else f"{config.auth_hook} is not an executable file",
            )
        )
    if config.executor_socket:
        results.append(executor_check(config.executor_socket))
    for name, setting in unenforced_profiles(config):
        results.append(
            Check(
                f"profile {name}",
                False,
                f"sets {setting}, which only the privileged executor applies, "
                "and executor_socket is unset",
            )
        )
    return results


# --- self-ping ----------------------------------------------------------------


@dataclass(frozen=True)
class PingOutcome:
    ok: bool
    stage: str  # config | connect | handshake | reply
    detail: str
    status: int | None = None
    body: dict | None = None


def loopback_address(config: AgentConfig) -> str:
    bind = config.bind
    if not bind or bind in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return bind


def self_ping(config: AgentConfig, timeout: float = SELF_PING_TIMEOUT) -> PingOutcome:
    """POST /ping to the local agent with its own certificate. The agent's
    cert is not a trusted dispatcher, so `403 serial mismatch` proves the
    agent runs and enforces its policy (as 0.12's self-ping)."""
    try:
        context = tls.dispatcher_client_context(config.cert, config.key, config.ca)
    except (OSError, ssl.SSLError) as exc:
        return PingOutcome(
            False,
            "config",
            f"cannot use the agent certificate: {getattr(exc, 'strerror', None) or exc}",
        )
    host = loopback_address(config)
    try:
        raw = socket.create_connection((host, config.port), timeout=timeout)
    except OSError as exc:
        return PingOutcome(
            False, "connect", f"{host}:{config.port}: {exc.strerror or exc} (is the agent running?)"
        )
    try:
        try:
            conn = context.wrap_socket(raw, server_hostname=None)
        except (ssl.SSLError, OSError) as exc:
            return PingOutcome(False, "handshake", getattr(exc, "reason", None) or str(exc))
        body = encode_json({"reqid": ids.new_short_id()})
        try:
            conn.sendall(request_bytes("POST", "/ping", body, host=f"{host}:{config.port}"))
            reader = ResponseReader()
            response = None
            while response is None:
                chunk = conn.recv(65536)
                response = reader.finish() if not chunk else reader.feed(chunk)
        except (ssl.SSLError, OSError, FramingError, IncompleteMessage) as exc:
            return PingOutcome(False, "reply", f"no usable reply: {exc}")
        finally:
            conn.close()
    finally:
        raw.close()
    try:
        parsed = json.loads(response.body)
    except ValueError:
        parsed = None
    if response.status == 403 and parsed == {"error": "serial mismatch", "status": "forbidden"}:
        return PingOutcome(
            True,
            "reply",
            "403 serial mismatch (expected - agent is running and enforcing policy)",
            403,
            parsed,
        )
    if response.status == 200 and isinstance(parsed, dict) and parsed.get("status") == "ok":
        return PingOutcome(True, "reply", "200 ok", 200, parsed)
    return PingOutcome(
        False,
        "reply",
        f"unexpected reply {response.status}: {response.body[:200]!r}",
        response.status,
        parsed if isinstance(parsed, dict) else None,
    )
