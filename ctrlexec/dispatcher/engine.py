"""Ping and run fan-out: how every dispatcher front end talks to agents.

`ced ping`/`ced run` call it, and the HTTP API (`dispatcher serve`) calls it
the same way with a `Caller.api(...)` (its client's address). One call is:

1. validate the request (hosts, script name, args) -> BadRequest;
2. the auth hook for the action (`ping` or `run`) -> PolicyDenied;
3. resolve every host through the registry -> UnknownAgents;
4. run only: take every `host:script` lock -> Locked (held until the end);
5. one reqid for the whole operation, one mTLS request per agent, at most
   `max_parallel` at once, each bounded by `read_timeout`;
6. one result object per host, in the order the hosts were given
   (core.results: 0.12's shapes and error strings).

An async run (`run_async=True`) ends at the agents' 202; `fetch_results`
collects each agent's `/result/<reqid>` later. `discover` (gated as `ping`,
as 0.12) and `capabilities` ask agents what they offer.

Nothing here prints; transport problems with one agent become that agent's
result, never an exception.
"""

from __future__ import annotations

import os
import pwd
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import hooks, log
from ..config.paths import Layout
from ..core import results, run_control, selection
from ..core.caller import Caller
from ..core.http import encode_json
from ..core.ids import RUN_REQID, TokenBytes, new_reqid
from ..core.lifecycle import peer_problem
from ..core.names import is_script_name
from ..core.timefmt import iso_utc
from ..errors import (
    BadRequest,
    ConfigError,
    CtrlExecError,
    EmptySelection,
    Locked,
    PolicyDenied,
    SelectionError,
)
from ..pki.revocation import RevokedSerials
from ..pki.tls import dispatcher_client_context
from . import agent_client, agent_stream
from .fanout import fan_out
from .registry import DEFAULT_AGENT_PORT, Target
from .tls_sessions import SessionCache

if TYPE_CHECKING:
    from ..state.interface import AgentRegistry, HostLocks

# 0.12's Engine refuses more hosts than this in one operation; ours by
# default too (`max_hosts` raises it: docs/compatibility.md).
MAX_HOSTS = 500
# Bounds on what one run may carry (the agent caps its request body at 1 MiB).
MAX_ARGS = 4096
# Discovery caches an agent's tags in its registry record; an agent has at
# most 256 (config.load.MAX_TAGS), and a tag is a short label.
MAX_CACHED_TAGS = 256
MAX_TAG_TEXT = 1024

Progress = Callable[[results.HostResult], None]
# The dispatcher's revocation list, in ca_dir.
REVOKED_SERIALS = "revoked-serials"

Follow = Callable[[str, str, str], None]  # (host, "stdout"|"stderr", text)


@dataclass(frozen=True)
class EngineSettings:
    cert: str
    key: str
    ca: str
    read_timeout: int = 60
    max_parallel: int = 64
    max_hosts: int = MAX_HOSTS
    auth_hook: str | None = None
    auth_hook_timeout: int = 10
    api_auth_default: str = "deny"
    default_port: int = DEFAULT_AGENT_PORT
    revoked_serials: str = ""  # the dispatcher's revocation list (ca_dir/revoked-serials)
    # Remember agents' TLS sessions for later contacts (tls_sessions.py). Worth
    # it in a long-lived process; a one-shot `ced` contacts each agent once or
    # twice, and reading a session out of a connection costs CPU.
    resume_sessions: bool = True

    @classmethod
    def from_config(cls, settings, resume_sessions: bool = False) -> EngineSettings:
        """From a loaded ctrl-exec.toml (config.load.load_dispatcher)."""
        return cls(
            resume_sessions=resume_sessions,
            cert=settings.cert,
            key=settings.key,
            ca=settings.ca,
            read_timeout=settings.read_timeout,
            max_parallel=settings.max_parallel,
            max_hosts=settings.max_hosts,
            auth_hook=settings.auth_hook,
            auth_hook_timeout=settings.auth_hook_timeout,
            api_auth_default=settings.api_auth_default,
            default_port=settings.port,
            revoked_serials=os.path.join(settings.ca_dir, REVOKED_SERIALS),
        )


class Engine:
    def __init__(
        self,
        settings: EngineSettings,
        registry: AgentRegistry,
        locks: HostLocks,
        token_bytes: TokenBytes = secrets.token_bytes,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ):
        self.settings = settings
        self.registry = registry
        self.locks = locks
        self._token_bytes = token_bytes
        self._clock = clock
        self._wall_clock = wall_clock
        self._context: ssl.SSLContext | None = None
        self._sessions: SessionCache | None = None
        self._signature: tuple = ()
        self._context_lock = threading.Lock()
        self.revoked = RevokedSerials(settings.revoked_serials or os.devnull)
        self.state: Any = None  # the State it was opened from (from_config)

    @classmethod
    def from_config(cls, settings, layout: Layout, resume_sessions: bool = False) -> Engine:
        """Registry and locks from the configured state backend
        (`engine.state` holds the rest: run store, pairing queue, leases)."""
        from ..state import for_layout

        state = for_layout(settings, layout)
        engine = cls(
            EngineSettings.from_config(settings, resume_sessions), state.registry, state.locks
        )
        engine.state = state
        return engine

    @staticmethod
    def _process_user() -> str:
        try:
            return pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            return str(os.getuid())

    def new_reqid(self) -> str:
        return new_reqid(self._token_bytes)

    # -- the steps, public so that front ends can add their own gates --------

    def authorise(
        self,
        action: str,
        hosts: Sequence[str],
        *,
        caller: Caller,
        script: str = "",
        args: Sequence[str] = (),
        reqid: str = "",
        submitter: dict | None = None,
    ) -> None:
        """Ask the auth hook; raise PolicyDenied(reason, code) on a no."""
        request = hooks.AuthRequest(
            action=action,
            script=script,
            hosts=list(hosts),
            args=list(args),
            username=caller.username,
            token=caller.token,
            source_ip=caller.source_ip,
            reqid=reqid,
            submitter=submitter,
        )
        decision = hooks.authorise(
            request,
            self.settings.auth_hook,
            self.settings.auth_hook_timeout,
            caller.front,
            self.settings.api_auth_default,
        )
        if not decision.allowed:
            raise PolicyDenied(decision.reason, decision.code)

    def admit(
        self,
        action: str,
        hosts: Sequence[str],
        caller: Caller,
        port: int | None = None,
        **hook_fields,
    ) -> list[Target]:
        """The steps every operation starts with: the host list's bounds,
        the auth hook for `action` (`hook_fields`: script, args, reqid), then
        the registry targets."""
        _check_hosts(hosts, self.settings.max_hosts)
        self.authorise(action, hosts, caller=caller, **hook_fields)
        return self.resolve(hosts, port)

    def resolve(self, hosts: Sequence[str], port: int | None = None) -> list[Target]:
        """Registry targets for the hosts (UnknownAgents names every unknown one)."""
        targets = self.registry.resolve(
            list(hosts), default_port=port or self.settings.default_port
        )
        seen: set[str] = set()
        for target in targets:
            if target.name in seen:
                raise BadRequest(f"agent '{target.name}' is given more than once")
            seen.add(target.name)
        return targets

    def select(self, operands: Sequence[str], tags: Sequence[tuple[str, str]] = ()) -> list[str]:
        """Expand `@all`, shell-style patterns and tag filters against the
        registry (core/selection.py); names pass through as written. An
        empty selection raises CtrlExecError."""
        if not selection.needs_registry(operands, tags):
            return list(operands)
        agents = {}
        for record in self.registry.records():
            cached = record.get("tags")
            name = record.get("hostname")
            if isinstance(name, str):
                agents[name] = cached if isinstance(cached, dict) else {}
        try:
            return selection.select(operands, tags, agents)
        except SelectionError as exc:
            raise EmptySelection(str(exc)) from None

    def tls_context(self) -> ssl.SSLContext:
        """The client context, built once (loading the key is the slow part)
        and again when the certificate or key file changed (a rotation by
        another process)."""
        signature = _files_signature(self.settings)
        with self._context_lock:
            if self._context is None or signature != self._signature:
                self._context = _client_context(self.settings)
                if self.settings.resume_sessions:
                    self._sessions = SessionCache(self._context)
                self._signature = signature
            return self._context

    def reset_context(self) -> None:
        """Forget the client context (the dispatcher certificate was rotated)."""
        with self._context_lock:
            self._context = None
            self._sessions = None

    def post(
        self, target: Target, path: str, payload: dict, context: ssl.SSLContext | None = None
    ) -> tuple[results.AgentReply | None, results.Failure | None, str]:
        """One POST to one agent: (reply, failure, rtt); never raises for the
        network. `context` presents another certificate (rotation)."""
        return self._exchange(context or self.tls_context(), target, path, encode_json(payload))

    # -- operations ----------------------------------------------------------

    def ping(
        self,
        hosts: Sequence[str],
        *,
        caller: Caller,
        port: int | None = None,
        reqid: str | None = None,
        progress: Progress | None = None,
    ) -> list[results.HostResult]:
        """POST /ping to every host; one result per host (§7.7)."""
        targets = self.admit("ping", hosts, caller, port)
        reqid = reqid or self.new_reqid()
        context = self.tls_context()
        body = encode_json({"reqid": reqid})
        return fan_out(
            targets,
            lambda target: self._ping_one(context, target, body, reqid),
            self.settings.max_parallel,
            progress,
        )

    def run(
        self,
        hosts: Sequence[str],
        script: str,
        args: Sequence[str],
        *,
        caller: Caller,
        port: int | None = None,
        reqid: str | None = None,
        progress: Progress | None = None,
        run_async: bool = False,
        follow: Follow | None = None,
        on_fallback: Callable[[str], None] | None = None,
        before_dispatch: Callable[[str, list[Target]], None] | None = None,
    ) -> list[results.HostResult]:
        """POST /run of `script` with `args` to every host, holding the
        host:script locks throughout; one result per host (§7.7). With
        `run_async` the agents only accept the job (202) and the results are
        fetched later (`fetch_results`). With `follow(host, stream, text)`
        a synchronous run asks our agents for live output (`/run-stream`);
        a 0.12 agent cannot stream: `on_fallback(host)`, then `/run`.
        `before_dispatch(reqid, targets)` runs once everything is checked and
        locked, before the first request (the API records an async run there,
        so a crash cannot leave a job without a record); if it raises, nothing
        is sent."""
        _check_run(script, args)
        targets = self.admit("run", hosts, caller, port, script=script, args=args)
        reqid = reqid or self.new_reqid()
        held = self.locks.acquire([target.name for target in targets], script)
        ended: set[str] = set()  # hosts whose run is over (their answer is in)
        dispatched = False  # whether any request may have reached an agent
        try:
            context = self.tls_context()
            if held.stale:
                self._check_stale(held, targets, script, context)
            held.record(
                lock_holder(
                    reqid,
                    caller.front,
                    caller.username,
                    self._wall_clock(),
                    self._process_user(),
                )
            )
            log.event(
                "dispatch",
                log.INFO,
                SCRIPT=script,
                REQID=reqid,
                MODE="async" if run_async else "sync",
                HOSTS=",".join(target.name for target in targets),
            )
            request: dict[str, object] = {
                "script": script,
                "args": list(args),
                "reqid": reqid,
                "username": caller.username,
                "token": caller.token,
            }
            if run_async:
                request["async"] = True
            body = encode_json(request)
            if before_dispatch is not None:
                before_dispatch(reqid, list(targets))
            dispatched = True
            if run_async:
                one = self._submit_one
            elif follow is not None:

                def one(context, target, body, script, reqid):
                    return self._run_one(context, target, body, script, reqid, follow, on_fallback)

            else:
                one = self._run_one

            def done(result: results.HostResult) -> None:
                ended.add(result.host)
                if progress is not None:
                    progress(result)

            outcome = fan_out(
                targets,
                lambda target: one(context, target, body, script, reqid),
                self.settings.max_parallel,
                done,
            )
        except BaseException:
            # Interrupted (Ctrl-C) or failed mid-way: hosts that did not
            # answer may still be running the script; their records stay.
            running = {target.name for target in targets} - ended if dispatched else set()
            held.release(keep=running)
            raise
        held.release(keep=self._still_running_after(outcome, targets, run_async))
        return outcome

    def _still_running_after(
        self, outcome: list[results.HostResult], targets: Sequence[Target], run_async: bool
    ) -> set[str]:
        """Hosts whose synchronous run we stopped waiting for without its end
        (the script may still run there): their holder records stay."""
        if run_async:
            return set()
        return {
            target.name
            for target, result in zip(targets, outcome, strict=True)
            if (result.error or "").startswith("read timeout")
        }

    def _check_stale(
        self, held, targets: Sequence[Target], script: str, context: ssl.SSLContext
    ) -> None:
        """A previous holder of some locks stopped before its run ended: ask
        those agents whether that run still goes on. Still running, or no
        answer (fail closed): Locked. A 0.12 agent cannot say: go on, logged."""
        by_name = {target.name: target for target in targets}
        stale = [(by_name[host], record) for host, record in held.stale.items()]
        answers = fan_out(
            stale,
            lambda item: self._running_on(context, item[0]),
            self.settings.max_parallel,
        )
        conflicts: list[str] = []
        for (target, record), answer in zip(stale, answers, strict=True):
            old = str(record.get("reqid", ""))
            fields = {"HOST": target.name, "SCRIPT": script, "REQID": old or "(unknown)"}
            if answer == run_control.UNSUPPORTED:
                log.event("lock-stale", log.WARNING, RESULT="unverifiable", **fields)
                continue
            if isinstance(answer, str):
                log.event("lock-stale", log.WARNING, RESULT="no-answer", ERROR=answer, **fields)
                conflicts.append(f"{target.name}:{script}")
                continue
            mine = [entry for entry in answer if entry.get("script") == script]
            if (old and old in run_control.running_reqids(mine)) or (not old and mine):
                log.event("lock-stale", log.WARNING, RESULT="still-running", **fields)
                conflicts.append(f"{target.name}:{script}")
            else:
                log.event("lock-stale", log.INFO, RESULT="ended", **fields)
        if conflicts:
            conflicted = {conflict.rsplit(":", 1)[0] for conflict in conflicts}
            held.release(keep=conflicted)
            log.event("lock-conflict", log.WARNING, CONFLICTS=",".join(conflicts))
            raise Locked(conflicts)

    def _running_on(self, context: ssl.SSLContext, target: Target) -> list[dict] | str:
        """GET /running: our runs on that agent, UNSUPPORTED, or an error text."""
        reply, failure, _ = self._exchange(context, target, run_control.RUNNING_PATH, None)
        if failure is not None or reply is None:
            assert failure is not None
            return results.failure_text(failure, self.settings.read_timeout, "running")
        return run_control.read_running(reply.status, reply.body)

    def cancel(
        self,
        hosts: Sequence[str],
        reqid: str,
        *,
        caller: Caller,
        port: int | None = None,
        script: str = "",
    ) -> list[dict]:
        """POST /cancel of `reqid` to every host (auth hook action `cancel`);
        one `{host, reqid, status, detail}` per host, status one of
        cancelled, not-running, cannot-cancel (a 0.12 agent) or error."""
        _check_hosts(hosts, self.settings.max_hosts)
        if not RUN_REQID.matches(reqid):
            raise BadRequest(f"invalid reqid {reqid!r}: letters, digits, '_' and '-' only")
        targets = self.admit("cancel", hosts, caller, port, script=script, reqid=reqid)
        context = self.tls_context()
        body = encode_json({"reqid": reqid})
        return fan_out(
            targets,
            lambda target: self._cancel_one(context, target, body, reqid),
            self.settings.max_parallel,
        )

    def _cancel_one(self, context: ssl.SSLContext, target: Target, body: bytes, reqid: str) -> dict:
        reply, failure, rtt = self._exchange(context, target, run_control.CANCEL_PATH, body)
        if reply is None:
            assert failure is not None
            status = "error"
            detail = results.failure_text(failure, self.settings.read_timeout, "cancel")
        else:
            status, detail = run_control.read_cancel(reply.status, reply.body)
        level = log.INFO if status in (run_control.CANCELLED, run_control.NOT_RUNNING) else log.ERR
        log.event("cancel", level, TARGET=target.label, RESULT=status, RTT=rtt, REQID=reqid)
        return {"host": target.name, "reqid": reqid, "status": status, "detail": detail}

    def capabilities(self, targets: Sequence[Target]) -> list[results.HostResult]:
        """GET /capabilities from every target; one result per target. No
        auth hook here: `discover` is the gated front door."""
        context = self.tls_context()
        return fan_out(
            list(targets),
            lambda target: self._capabilities_one(context, target),
            self.settings.max_parallel,
        )

    def discover(
        self,
        hosts: Sequence[str],
        *,
        caller: Caller,
        port: int | None = None,
    ) -> list[results.HostResult]:
        """Discovery as 0.12 gates it (the `ping` action), then the agents'
        capabilities; each OK agent's tags are cached in the registry."""
        answers = self.capabilities(self.admit("ping", hosts, caller, port))
        for answer in answers:
            tags = answer.wire.get("tags")
            if not answer.failed and isinstance(tags, dict):
                self._cache_tags(answer.host, tags)
        return answers

    def fetch_results(self, targets: Sequence[Target], reqid: str) -> list[results.HostResult]:
        """GET /result/<reqid> from every target (an async run's progress)."""
        context = self.tls_context()
        return fan_out(
            list(targets),
            lambda target: self._fetch_one(context, target, reqid),
            self.settings.max_parallel,
        )

    # -- one host --------------------------------------------------------------

    def _exchange(
        self,
        context: ssl.SSLContext,
        target: Target,
        path: str,
        body: bytes | None,
        still_waiting: Callable[[], bool] | None = None,
    ) -> tuple[results.AgentReply | None, results.Failure | None, str]:
        """POST `body` to `path`, or GET it when there is no body."""
        method = "GET" if body is None else "POST"
        check_peer = self._peer_check(target)
        sessions = self._sessions
        resume = (
            None
            if sessions is None
            else sessions.slot((target.address, target.port, target.expect))
        )
        return self._timed(
            target,
            lambda: agent_client.exchange(
                context,
                target.address,
                target.port,
                method,
                path,
                body,
                self.settings.read_timeout,
                check_peer=check_peer,
                still_waiting=still_waiting,
                resume=resume,
            ),
        )

    def _timed(
        self,
        target: Target,
        call: Callable[[], results.AgentReply | results.Failure],
    ) -> tuple[results.AgentReply | None, results.Failure | None, str]:
        """One exchange with an agent: (reply, failure, rtt). A bug below is
        that host's failure, never the whole operation's."""
        started = self._clock()
        try:
            outcome = call()
        except Exception as exc:
            outcome = results.Failure(
                results.OTHER,
                target.address,
                target.port,
                f"internal error: {type(exc).__name__}: {exc}",
            )
        rtt = results.rtt_text(self._clock() - started)
        if isinstance(outcome, results.Failure):
            return None, outcome, rtt
        return outcome, None, rtt

    def _peer_check(self, target: Target) -> Callable[[bytes], str | None]:
        """The check every connection to an agent makes right after the
        handshake: the registered agent, with a certificate not revoked."""
        revoked = self.revoked.current()

        def check_peer(der: bytes) -> str | None:
            return peer_problem(target.expect, der, revoked)

        return check_peer

    def _run_one(
        self,
        context: ssl.SSLContext,
        target: Target,
        body: bytes,
        script: str,
        reqid: str,
        follow: Follow | None = None,
        on_fallback: Callable[[str], None] | None = None,
    ) -> results.HostResult:
        streamed = None
        if follow is not None:
            streamed = self._stream(context, target, body, script, reqid, follow)
            if streamed is None and on_fallback is not None:
                on_fallback(target.name)
        if streamed is not None:
            reply, failure, rtt = streamed
        else:
            reply, failure, rtt = self._exchange(
                context, target, "/run", body, self._waiter(context, target, script, reqid)
            )
        result = results.run_result(
            target.name, script, reqid, rtt, reply, failure, self.settings.read_timeout
        )
        answered = reply is not None and reply.ok and result.error != results.REQID_MISMATCH
        _log_host(
            "run",
            {"EXIT": result.exit_code} if answered else None,
            result.error,
            failure,
            SCRIPT=script,
            TARGET=target.label,
            RTT=rtt,
            REQID=reqid,
        )
        return result

    def _stream(
        self,
        context: ssl.SSLContext,
        target: Target,
        body: bytes,
        script: str,
        reqid: str,
        follow: Follow,
    ) -> tuple[results.AgentReply | None, results.Failure | None, str] | None:
        """POST /run-stream; None when the agent cannot stream (0.12's 404)."""
        reply, failure, rtt = self._timed(
            target,
            lambda: agent_stream.stream_run(
                context,
                target.address,
                target.port,
                body,
                self.settings.read_timeout,
                lambda stream, text: follow(target.name, stream, text),
                self._waiter(context, target, script, reqid),
                check_peer=self._peer_check(target),
            ),
        )
        if (
            reply is not None
            and reply.status == 404
            and run_control.read_running(404, reply.body) == run_control.UNSUPPORTED
        ):
            return None
        return reply, failure, rtt

    def _waiter(
        self, context: ssl.SSLContext, target: Target, script: str, reqid: str
    ) -> Callable[[], bool]:
        """Asked each time a synchronous run's agent has been silent for
        read_timeout: keep waiting while our agent says the script still
        runs (it ends it at its own limit for that script, so the wait is
        bounded). A 0.12 agent cannot say: give up, as 0.12. When the run is
        no longer listed, its answer may be on the way: one more period."""
        grace = [True]

        def still_waiting() -> bool:
            answer = self._running_on(context, target)
            if answer == run_control.UNSUPPORTED:
                return False
            if isinstance(answer, list) and reqid in run_control.running_reqids(answer):
                log.event("run-wait", log.INFO, SCRIPT=script, TARGET=target.label, REQID=reqid)
                return True
            waiting, grace[0] = grace[0], False
            return waiting

        return still_waiting

    def _submit_one(
        self, context: ssl.SSLContext, target: Target, body: bytes, script: str, reqid: str
    ) -> results.HostResult:
        reply, failure, rtt = self._exchange(context, target, "/run", body)
        result = results.async_submit_result(
            target.name, script, reqid, rtt, reply, failure, self.settings.read_timeout
        )
        status = result.status
        fields = {"SCRIPT": script, "TARGET": target.label, "RTT": rtt, "REQID": reqid}
        if status == "accepted":
            log.event("run-async", log.INFO, STATUS=status, **fields)
        elif status == "busy":
            log.event("run-async", log.WARNING, STATUS=status, **fields)
        else:
            log.event("run-async", log.ERR, ERROR=result.text("error"), **fields)
        return result

    def _capabilities_one(self, context: ssl.SSLContext, target: Target) -> results.HostResult:
        reply, failure, rtt = self._exchange(context, target, "/capabilities", None)
        result = results.capabilities_result(
            target.name, rtt, reply, failure, self.settings.read_timeout
        )
        scripts = result.wire.get("scripts")
        _log_host(
            "capabilities",
            {"SCRIPTS": len(scripts)}
            if isinstance(scripts, list) and result.status == "ok"
            else None,
            result.text("error"),
            failure,
            TARGET=target.label,
            RTT=rtt,
        )
        return result

    def _fetch_one(self, context: ssl.SSLContext, target: Target, reqid: str) -> results.HostResult:
        reply, failure, rtt = self._exchange(context, target, f"/result/{reqid}", None)
        result = results.fetch_result(
            target.name, reqid, rtt, reply, failure, self.settings.read_timeout
        )
        _log_host(
            "result",
            None if result.status == "error" else {"STATUS": result.wire.get("status")},
            result.text("error"),
            failure,
            TARGET=target.label,
            RTT=rtt,
            REQID=reqid,
        )
        return result

    def _cache_tags(self, name: str, tags: dict) -> None:
        """Discovery refreshes the registry's tag cache (`list-agents --tags`);
        a registry that cannot be written must not fail the discovery. Tags
        beyond what an agent can configure are not cached."""
        clean = {str(key): str(value) for key, value in tags.items()}
        if len(clean) > MAX_CACHED_TAGS or any(
            len(key) + len(value) > MAX_TAG_TEXT for key, value in clean.items()
        ):
            log.event("registry-fail", log.WARNING, HOST=name, ERROR="tags too large to cache")
            return

        def change(record: dict) -> None:
            record["tags"] = clean

        try:
            self.registry.update(name, change)
        except (CtrlExecError, OSError) as exc:
            log.event("registry-fail", log.WARNING, HOST=name, ERROR=str(exc)[:200])

    def _ping_one(
        self, context: ssl.SSLContext, target: Target, body: bytes, reqid: str
    ) -> results.HostResult:
        reply, failure, rtt = self._exchange(context, target, "/ping", body)
        result = results.ping_result(
            target.name, rtt, reply, failure, self.settings.read_timeout, reqid
        )
        _log_host(
            "ping",
            None if result.failed else {"RESULT": "ok"},
            result.text("error"),
            failure,
            TARGET=target.label,
            RTT=rtt,
            REQID=reqid,
        )
        return result


def _log_host(
    action: str,
    success: dict | None,
    error: object,
    failure: results.Failure | None = None,
    **fields: object,
) -> None:
    """One host's outcome: INFO with the `success` fields, or ERR with its
    error when `success` is None. A failed TLS handshake also gets DETAIL,
    why it failed (0.12's ERROR text does not say, and must stay as it is)."""
    if success is not None:
        log.event(action, log.INFO, **success, **fields)
        return
    reason = results.tls_reason(failure)
    if reason:
        fields["DETAIL"] = reason
    log.event(action, log.ERR, ERROR=error, **fields)


def lock_holder(reqid: str, caller: str, username: str, now: float, user: str) -> dict:
    """What `list-locks` shows of a run holding locks, and what the next
    taker checks when this process stops before its run ends."""
    return {
        "pid": os.getpid(),
        "user": user,
        "caller": caller,
        "username": username[:64],
        "since": iso_utc(now),
        "reqid": reqid,
    }


def _check_hosts(hosts: Sequence[str], limit: int = MAX_HOSTS) -> None:
    if not hosts:
        raise BadRequest("at least one host is needed")
    if len(hosts) > limit:
        raise BadRequest(f"too many hosts: {len(hosts)} (at most {limit} per operation)")
    for host in hosts:
        if not isinstance(host, str) or not host:
            raise BadRequest("hosts must be non-empty strings")
        name, colon, port = host.rpartition(":")
        # agent names never contain ':', so what follows one is a port
        if colon and not (port.isdigit() and 0 < int(port) < 65536 and name):
            raise BadRequest(f"invalid port in {host!r}: NAME:PORT takes a port from 1 to 65535")


def _check_run(script: str, args: Sequence[str]) -> None:
    if not is_script_name(script):
        raise BadRequest(f"invalid script name {script!r}: letters, digits, '_' and '-' only")
    if len(args) > MAX_ARGS:
        raise BadRequest(f"too many arguments: {len(args)} (at most {MAX_ARGS})")
    for number, arg in enumerate(args, start=1):
        if not isinstance(arg, str):
            raise BadRequest(f"argument {number} is not a string")
        if "\x00" in arg:
            raise BadRequest(f"argument {number} contains a NUL character")
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(f"argument {number} is not valid UTF-8 text") from None


def _client_context(settings: EngineSettings) -> ssl.SSLContext:
    for what, path in (
        ("certificate", settings.cert),
        ("key", settings.key),
        ("CA certificate", settings.ca),
    ):
        try:
            with open(path, "rb"):
                pass
        except FileNotFoundError:
            raise ConfigError(
                f"the dispatcher {what} {path} does not exist (set up the "
                "dispatcher first: ced setup-ca, ced setup-ctrl-exec)"
            ) from None
        except PermissionError:
            raise ConfigError(
                f"cannot read the dispatcher {what} {path}: permission denied "
                "(run as the dispatcher's service user or root)"
            ) from None
    try:
        return dispatcher_client_context(settings.cert, settings.key, settings.ca)
    except (ssl.SSLError, OSError):
        pass  # a rotation may have replaced the key between our two reads: once more
    try:
        return dispatcher_client_context(settings.cert, settings.key, settings.ca)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"the dispatcher certificate, key or CA cannot be used: {exc}") from None


def _files_signature(settings: EngineSettings) -> tuple[tuple[int, int, int] | None, ...]:
    signature: list[tuple[int, int, int] | None] = []
    for path in (settings.cert, settings.key, settings.ca):
        try:
            info = os.stat(path)
        except OSError:
            signature.append(None)
            continue
        signature.append((info.st_ino, info.st_mtime_ns, info.st_size))
    return tuple(signature)
