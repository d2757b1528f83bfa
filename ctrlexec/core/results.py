"""Per-host result objects of a dispatch (protocol.md §7.7), with no I/O.

The dispatcher turns each agent exchange into one JSON object, the same
shape 0.12's Engine produces, so API clients and `ced --json` readers see
what they saw with 0.12:

- success: the agent's own body, plus `host` (the registry name the agent
  was addressed by), `rtt` ("NNms") and, for ping, `reported_hostname` when
  the agent calls itself something else;
- failure: a small object with an `error` string. The strings are 0.12's,
  so scripts that match on them keep working.

Unlike 0.12, an answer that echoes another request's reqid is that host's
failure (`reqid mismatch ...`), never passed on as the answer to ours: an
agent (or something in between) mixing up requests must not make one run's
output look like another's. An answer with no reqid, or an empty one, is
accepted as before (0.12 agents omit it on early errors).

An exchange ends in either an HTTP reply or a transport failure of one of
the kinds below; `run_result`, `ping_result` and their siblings decide the
object and wrap it in a `HostResult`. Everything downstream (logs, text
output, run records, exit codes) reads the typed properties; only the
boundaries (API bodies, `--json`, run records) call `to_wire()`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

# Transport failure kinds (what went wrong before an HTTP reply arrived).
RESOLVE = "resolve"  # the name did not resolve
REFUSED = "refused"  # TCP connection refused
UNREACHABLE = "unreachable"  # no route / network down
TIMEOUT = "timeout"  # no answer while connecting or handshaking
READ_TIMEOUT = "read-timeout"  # connected, then silence longer than read_timeout
TLS = "tls"  # handshake failed, or the peer's TLS layer refused us
# The agent closed before answering our TLS hello: allowed_ips, a rate
# block or overload; a certificate problem always comes with a TLS alert.
CLOSED_BEFORE_TLS = "closed-before-tls"
CLOSED = "closed"  # the agent closed the connection without a reply
PROTOCOL = "protocol"  # the reply was not HTTP we can frame
OTHER = "other"  # any other socket error (detail says which)
IDENTITY = "identity"  # a CA-signed peer that is not the registered agent

KINDS = (
    RESOLVE,
    REFUSED,
    UNREACHABLE,
    TIMEOUT,
    READ_TIMEOUT,
    TLS,
    CLOSED_BEFORE_TLS,
    CLOSED,
    PROTOCOL,
    OTHER,
    IDENTITY,
)


# The operations a per-host result answers; each has its own failure rule.
RUN = "run"  # synchronous /run
SUBMIT = "submit"  # asynchronous /run (the agent's 202)
PING = "ping"
CAPABILITIES = "capabilities"
FETCH = "result"  # /result/<reqid> of an async run
OPS = (RUN, SUBMIT, PING, CAPABILITIES, FETCH)


def exit_code(value: object) -> int:
    """An `exit` value as an int; anything missing or odd counts as -1."""
    if isinstance(value, bool) or not isinstance(value, int):
        return -1
    return value


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class HostResult:
    """One host's answer to one operation.

    `wire` is the 0.12 JSON object (keys in 0.12's order; read-only). Much of
    it is the agent's own body, so its values can be of any JSON type: the
    typed properties below are the one place that decides what a value
    means, and `text()` renders a raw value for display."""

    op: str
    wire: Mapping[str, Any] = field(hash=False)

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown operation {self.op!r}")
        object.__setattr__(self, "wire", MappingProxyType(dict(self.wire)))

    @classmethod
    def from_wire(cls, op: str, value: object) -> HostResult:
        """A result read back from a run record (anything not an object is empty)."""
        return cls(op, value if isinstance(value, dict) else {})

    def to_wire(self) -> dict[str, Any]:
        return dict(self.wire)

    @property
    def host(self) -> str:
        return _text_or_none(self.wire.get("host")) or ""

    @property
    def status(self) -> str | None:
        return _text_or_none(self.wire.get("status"))

    @property
    def error(self) -> str | None:
        """The error text; None when there is none (absent, null or empty)."""
        value = self.wire.get("error")
        return str(value) if value else None

    @property
    def exit_code(self) -> int:
        return exit_code(self.wire.get("exit"))

    @property
    def reqid(self) -> str | None:
        return _text_or_none(self.wire.get("reqid"))

    @property
    def rtt(self) -> str:
        return _text_or_none(self.wire.get("rtt")) or ""

    @property
    def stdout(self) -> str | None:
        return _text_or_none(self.wire.get("stdout"))

    @property
    def stderr(self) -> str | None:
        return _text_or_none(self.wire.get("stderr"))

    @property
    def failed(self) -> bool:
        """0.12's rules: a run failed unless it exited 0; a ping or a
        capabilities query unless its status is `ok`; a submission unless
        the agent accepted it; a fetch when it could not be made."""
        if self.op == RUN:
            return self.exit_code != 0
        if self.op == SUBMIT:
            return self.status != "accepted"
        if self.op == FETCH:
            return self.status in (None, "error")
        return self.status != "ok"

    def text(self, key: str, default: str = "") -> str:
        """A raw value as text, for display (callers make it terminal-safe)."""
        value = self.wire.get(key)
        return default if value is None else str(value)

    def has(self, key: str) -> bool:
        """Whether the object carries a non-null `key`."""
        return self.wire.get(key) is not None


@dataclass(frozen=True)
class Failure:
    """A transport failure talking to `address:port`."""

    kind: str
    address: str
    port: int
    detail: str = ""


@dataclass(frozen=True)
class AgentReply:
    """An HTTP reply from an agent, as the dispatcher read it."""

    status: int
    phrase: str
    body: bytes

    @property
    def status_line(self) -> str:
        """What 0.12 (LWP) shows for an unexpected status: `404 Not Found`."""
        return f"{self.status} {self.phrase}".strip()

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def rtt_text(seconds: float) -> str:
    """Round-trip time as 0.12 writes it (`sprintf '%.0fms'`)."""
    return f"{seconds * 1000:.0f}ms"


def known_failure(failure: Failure | None) -> Failure:
    """The failure of an exchange that got no reply (there always is one then)."""
    assert failure is not None
    return failure


def failure_text(failure: Failure, read_timeout: int, op: str) -> str:
    """0.12's wording for a transport failure. Only a run reports a read
    timeout as such; other operations call every timeout a timeout."""
    host, port = failure.address, failure.port
    kind = failure.kind
    if kind == READ_TIMEOUT and op == "run":
        return f"read timeout after {read_timeout}s"
    if kind == RESOLVE:
        return f"host '{host}' did not resolve - check the name or use an IP address"
    if kind == REFUSED:
        return (
            f"host '{host}' did not respond on port {port} - connection refused "
            "(agent not running, or wrong port?)"
        )
    if kind == UNREACHABLE:
        return f"host '{host}' is unreachable - no route to host or network down"
    if kind in (TIMEOUT, READ_TIMEOUT):
        return f"host '{host}' did not respond - connection timed out"
    if kind == TLS:
        return f"TLS handshake with '{host}' failed - certificate or trust mismatch"
    if kind == CLOSED_BEFORE_TLS:
        return (
            f"host '{host}': closed by the agent before the TLS handshake "
            "(allowed_ips, rate limit or overload: see the agent's log)"
        )
    if kind == CLOSED:
        return f"host '{host}' closed the connection without a response"
    if kind == PROTOCOL:
        return f"host '{host}' sent an invalid response ({failure.detail or 'not HTTP'})"
    if kind == IDENTITY:
        return f"host '{host}' port {port} is not the registered agent: {failure.detail}"
    return f"host '{host}' on port {port}: {failure.detail or 'connection failed'}"


# No agent reply nests deeper than a few levels (capabilities: 4). A deeper
# one is hostile: it would stop the decoder (RecursionError) or, just under
# the interpreter's limit, every later encoding of the result.
MAX_REPLY_DEPTH = 32


def tls_reason(failure: Failure | None) -> str:
    """Why a TLS handshake failed, in OpenSSL's words (`certificate has
    expired`, `tlsv1 alert unknown ca`), from the text of the ssl error; ""
    for any other failure."""
    if failure is None or failure.kind != TLS or not failure.detail:
        return ""
    text = failure.detail
    if "certificate verify failed: " in text:
        text = text.split("certificate verify failed: ", 1)[1]
    elif text.startswith("[SSL") and "] " in text:
        text = text.split("] ", 1)[1]
    if text.endswith(")") and " (_ssl.c:" in text:
        text = text.rsplit(" (_ssl.c:", 1)[0]
    return text.strip()[:200]


def _object(body: bytes) -> dict[str, Any] | None:
    """The reply body as a JSON object, or None (0.12 treats anything that
    does not decode as `invalid JSON`; so are bodies nested deeper than
    MAX_REPLY_DEPTH)."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(value, dict) or nesting_exceeds(value, MAX_REPLY_DEPTH):
        return None
    return value


def nesting_exceeds(value: object, limit: int) -> bool:
    """Whether a decoded JSON value nests containers deeper than `limit`
    (iterative: the check itself cannot hit the recursion limit)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _forbidden(reply: AgentReply) -> str:
    body = _object(reply.body) or {}
    error = body.get("error")
    return "forbidden: " + (str(error) if error is not None else reply.status_line)


def _http_error(reply: AgentReply) -> str:
    """Error text for a non-2xx reply to /run or /ping."""
    if reply.status == 403:
        return _forbidden(reply)
    if reply.status == 413:
        return "request too large"
    return reply.status_line


def _error(reply: AgentReply | None, failure: Failure | None, read_timeout: int, op: str) -> str:
    if reply is not None:
        return _http_error(reply)
    if failure is not None:
        return failure_text(failure, read_timeout, op)
    return "no response"


def _canonical(result: dict[str, Any], name: str) -> dict[str, Any]:
    """Key the result by the registry name; keep the agent's own name only
    when it differs."""
    result["host"] = name
    reported = result.get("reported_hostname")
    if reported is not None and (reported == "" or reported == name):
        del result["reported_hostname"]
    return result


REQID_MISMATCH = "reqid mismatch: the agent answered another request"


def _echoes_another(body: dict[str, Any], reqid: str) -> bool:
    echoed = body.get("reqid")
    return echoed is not None and echoed != "" and echoed != reqid


def _reported(result: dict[str, Any], body: dict[str, Any]) -> None:
    own = body.get("host")
    if isinstance(own, str) and own:
        result["reported_hostname"] = own


def _run_wire(
    name: str,
    script: str,
    reqid: str,
    rtt: str,
    reply: AgentReply | None,
    failure: Failure | None,
    read_timeout: int,
) -> dict[str, Any]:
    """One host's result of a synchronous run."""
    if reply is None or not reply.ok:
        return {
            "host": name,
            "script": script,
            "exit": -1,
            "error": _error(reply, failure, read_timeout, "run"),
            "rtt": rtt,
            "reqid": reqid,
        }
    body = _object(reply.body)
    if body is None or _echoes_another(body, reqid):
        return {
            "host": name,
            "script": script,
            "exit": -1,
            "error": "invalid JSON response" if body is None else REQID_MISMATCH,
            "rtt": rtt,
            "reqid": reqid,
        }
    result = _echoed(body, rtt, reqid)
    _reported(result, body)
    return _canonical(result, name)


def _echoed(body: dict[str, Any], rtt: str, reqid: str) -> dict[str, Any]:
    """An agent's answer to a request with a reqid, plus our `rtt` (and the
    reqid we sent when the agent echoed none)."""
    result = dict(body)
    result["rtt"] = rtt
    if result.get("reqid") is None:
        result["reqid"] = reqid
    return result


def _ping_wire(
    name: str,
    rtt: str,
    reply: AgentReply | None,
    failure: Failure | None,
    read_timeout: int,
    reqid: str | None = None,
) -> dict[str, Any]:
    """One host's result of a ping (checked against the `reqid` sent, if given)."""
    if reqid is not None and reply is not None and reply.ok:
        body = _object(reply.body)
        if body is not None and _echoes_another(body, reqid):
            return {"host": name, "status": "error", "error": REQID_MISMATCH, "rtt": rtt}
    return _described(name, rtt, reply, lambda: _error(reply, failure, read_timeout, "ping"))


def _described(
    name: str, rtt: str, reply: AgentReply | None, error: Callable[[], str]
) -> dict[str, Any]:
    """An agent describing itself (ping, capabilities): its body plus `rtt`
    and `reported_hostname`, or `{host, status:"error", error, rtt}` with
    `error()` when it did not answer 2xx."""
    if reply is None or not reply.ok:
        return {"host": name, "status": "error", "error": error(), "rtt": rtt}
    body = _object(reply.body)
    if body is None:
        return {"host": name, "status": "error", "error": "invalid JSON", "rtt": rtt}
    result = dict(body)
    _reported(result, body)
    result["rtt"] = rtt
    return _canonical(result, name)


def _async_submit_wire(
    name: str,
    script: str,
    reqid: str,
    rtt: str,
    reply: AgentReply | None,
    failure: Failure | None,
    read_timeout: int,
) -> dict[str, Any]:
    """One host's answer to an async submission: the agent's 202 body, or
    `busy` (409), or `error` with the reason. A 200 refusal (`script not
    permitted`, `not authorised: ...`) is passed through as 0.12 does: the
    agent's body with its `"exit": -1`, plus `status: "error"`, `host`, `rtt`
    (clients written for 0.12 read `exit`)."""

    def refused(status: str, error: str) -> dict[str, Any]:
        return {
            "host": name,
            "script": script,
            "status": status,
            "error": error,
            "rtt": rtt,
            "reqid": reqid,
        }

    if reply is not None and reply.status == 409:
        error = (_object(reply.body) or {}).get("error")
        return refused("busy", str(error) if error is not None else "script already running")
    if reply is None or not reply.ok:
        return refused("error", _error(reply, failure, read_timeout, "run"))
    body = _object(reply.body)
    if body is None:
        return refused("error", "invalid JSON response")
    if _echoes_another(body, reqid):
        return refused("error", REQID_MISMATCH)
    if body.get("status") != "accepted":
        result = _echoed(body, rtt, reqid)
        result.setdefault("script", script)
        result.setdefault("exit", -1)
        result.setdefault("error", "not accepted")
        result["status"] = "error"
        return _canonical(result, name)
    return _canonical(_echoed(body, rtt, reqid), name)


def _capabilities_wire(
    name: str, rtt: str, reply: AgentReply | None, failure: Failure | None, read_timeout: int
) -> dict[str, Any]:
    """One host's /capabilities answer. 0.12 reports any refusal by its
    status line (`403 Forbidden`), not the agent's body."""

    def error() -> str:
        if reply is not None:
            return reply.status_line
        return _error(None, failure, read_timeout, "capabilities")

    return _described(name, rtt, reply, error)


def _fetch_wire(
    name: str,
    reqid: str,
    rtt: str,
    reply: AgentReply | None,
    failure: Failure | None,
    read_timeout: int,
) -> dict[str, Any]:
    """One host's /result/<reqid> answer: the agent's record, `unknown` for a
    404, else `error`."""
    if reply is not None and reply.status == 404:
        return {"host": name, "status": "unknown", "reqid": reqid, "rtt": rtt}
    if reply is None or not reply.ok:
        return {
            "host": name,
            "status": "error",
            "error": _error(reply, failure, read_timeout, "result"),
            "reqid": reqid,
            "rtt": rtt,
        }
    body = _object(reply.body)
    if body is None or _echoes_another(body, reqid):
        return {
            "host": name,
            "status": "error",
            "error": "invalid JSON" if body is None else REQID_MISMATCH,
            "reqid": reqid,
            "rtt": rtt,
        }
    result = _echoed(body, rtt, reqid)
    result["host"] = name
    return result


# -- the per-host results, one function per operation ---------------------------------


def run_result(
    name: str,
    script: str,
    reqid: str,
    rtt: str,
    reply: AgentReply | None,
    failure: Failure | None,
    read_timeout: int,
) -> HostResult:
    """One host's result of a synchronous run."""
    return HostResult(RUN, _run_wire(name, script, reqid, rtt, reply, failure, read_timeout))


def ping_result(
    name: str,
    rtt: str,
    reply: AgentReply | None,
    failure: Failure | None,
    read_timeout: int,
    reqid: str | None = None,
) -> HostResult:
    """One host's result of a ping (checked against the `reqid` sent, if given)."""
    return HostResult(PING, _ping_wire(name, rtt, reply, failure, read_timeout, reqid))


def async_submit_result(
    name: str,
    script: str,
    reqid: str,
    rtt: str,
    reply: AgentReply | None,
    failure: Failure | None,
    read_timeout: int,
) -> HostResult:
    """One host's answer to an async submission (see _async_submit_wire)."""
    return HostResult(
        SUBMIT, _async_submit_wire(name, script, reqid, rtt, reply, failure, read_timeout)
    )


def capabilities_result(
    name: str, rtt: str, reply: AgentReply | None, failure: Failure | None, read_timeout: int
) -> HostResult:
    """One host's /capabilities answer."""
    return HostResult(CAPABILITIES, _capabilities_wire(name, rtt, reply, failure, read_timeout))


def fetch_result(
    name: str,
    reqid: str,
    rtt: str,
    reply: AgentReply | None,
    failure: Failure | None,
    read_timeout: int,
) -> HostResult:
    """One host's /result/<reqid> answer."""
    return HostResult(FETCH, _fetch_wire(name, reqid, rtt, reply, failure, read_timeout))


def fetch_failure(name: str, error: str) -> HostResult:
    """A /result/<reqid> that could not be asked (the host is not registered)."""
    return HostResult(FETCH, {"status": "error", "error": error, "host": name})
