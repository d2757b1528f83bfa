"""Agent requests to replies: routing, the serial gate's answers, the auth
hook, the allowlist and script execution. No sockets here: the server hands
in a parsed request, the peer's identity and a state snapshot, and writes
back the Reply.

Order per request, as 0.12 (protocol.md §3.1, §3.2): the peer's identity
was settled by the server before any byte was read (revoked peers never get
here); untrusted peers get only `refuse()`; a trusted peer's request is
routed, then /run checks its body, the allowlist, the agent hook (action
`run`), and runs the script. `/capabilities` calls the hook with action
`discovery`; `/ping` has no hook. With no hook configured the agent allows
and logs no `auth` line (0.12).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from .. import hooks, log
from ..core import agent_wire, lifecycle, run_control
from ..core.http import Request
from ..core.routing import Reply
from ..core.timefmt import iso_utc
from ..errors import CancelRejected, CtrlExecError, NotAllowlisted, RotateRejected, RunRejected
from ..pki import revocation
from . import capabilities, renewal, streaming, trust
from .async_runs import AsyncRuns
from .jobs import CANCEL_NOTE, RunningJobs
from .runner import ScriptExecutor, default_runner, job_for
from .state import AgentState

# Request-supplied text in log lines is cut to this many characters.
LOG_TEXT_MAX = 128
ASYNC_UNAVAILABLE = "async runs are not available on this agent"
STREAM_NOT_ASYNC = "a streamed run is synchronous: use /run for async runs"


@dataclass(frozen=True)
class Peer:
    ip: str
    key: str  # canonical trust key of the cert serial
    serial_hex: str  # the serial as 0.12 logs it
    dispatcher: str | None = None  # resolved id; None when untrusted


def _short(text: str) -> str:
    return text if len(text) <= LOG_TEXT_MAX else text[:LOG_TEXT_MAX] + "..."


class Endpoints:
    def __init__(
        self,
        runner: ScriptExecutor | None = None,
        now: Callable[[], float] = time.time,
        async_runs: AsyncRuns | None = None,
        trust_changed: Callable[[], None] | None = None,
        jobs: RunningJobs | None = None,
    ):
        self.runner = runner or default_runner()
        self.now = now
        self.async_runs = async_runs  # None: async runs are refused
        # Called after /rotate-serial rewrote the map (AgentRuntime.trust_changed).
        self.trust_changed = trust_changed
        # One view of every running script, async ones included (/running, /cancel).
        if jobs is None:
            jobs = async_runs.jobs if async_runs is not None else RunningJobs(now)
        self.jobs = jobs

    def shutdown(self) -> int:
        """The agent is stopping: kill every running script (async jobs are
        recorded interrupted); the number of scripts killed."""
        if self.async_runs is not None:
            self.async_runs.interrupt()
        killed = self.runner.kill_all()
        if self.async_runs is not None:
            self.async_runs.wait()
        return killed

    # --- untrusted peers ---------------------------------------------------

    def refuse(self, method: str, path: str, peer: Peer, state: AgentState) -> Reply:
        """The answer to a peer whose serial is not trusted, from its request
        line alone (headers and body are never read)."""
        found = agent_wire.route(method, path)
        if not found.gated:
            return Reply(404, dict(agent_wire.NOT_FOUND))
        status, body = agent_wire.gate_refusal(found)
        if found.name == agent_wire.CAPABILITIES:
            reason = "serial-mismatch" if state.trusted else "no trusted dispatchers stored"
            log.event(
                "capabilities-deny",
                log.WARNING,
                PEER=peer.ip,
                PEER_SERIAL=peer.serial_hex,
                REASON=reason,
            )
        else:
            log.event(
                "serial-reject",
                log.WARNING,
                PEER=peer.ip,
                PEER_SERIAL=peer.serial_hex,
                REQID=found.arg or "(none)",
            )
        return Reply(status, body)

    # --- trusted peers -----------------------------------------------------

    def handle(self, request: Request, peer: Peer, state: AgentState) -> Reply:
        found = agent_wire.route(request.method, request.path)
        if found.name == agent_wire.RUN:
            return self.run(request.body, peer, state)
        if found.name == agent_wire.RUN_STREAM:
            return self.run_stream(request.body, peer, state)
        if found.name == agent_wire.PING:
            return self.ping(request.body, peer, state)
        if found.name == agent_wire.CAPABILITIES:
            return self.capabilities(peer, state)
        if found.name == agent_wire.RESULT:
            return self.result(found.arg, peer)
        if found.name == agent_wire.ROTATE_SERIAL and peer.dispatcher:
            return self.rotate_serial(request.body, peer, state)
        if found.name == agent_wire.REVOKE_SERIAL and peer.dispatcher:
            return self.revoke_serial(request.body, peer, state)
        if found.name == agent_wire.RENEW:
            return self.renew(request.body, peer, state)
        if found.name == agent_wire.RENEW_COMPLETE:
            return self.renew_complete(request.body, peer, state)
        if found.name == agent_wire.RUNNING:
            return self.running(peer)
        if found.name == agent_wire.CANCEL:
            return self.cancel(request.body, peer)
        return Reply(404, dict(agent_wire.NOT_FOUND))

    def _authorise(
        self,
        state: AgentState,
        peer: Peer,
        action: str,
        script: str = "",
        args: tuple[str, ...] = (),
        username: str = "",
        token: str = "",
    ) -> hooks.AuthDecision:
        hook = state.config.auth_hook
        if not hook:
            return hooks.AuthDecision.allow()
        request = hooks.AuthRequest(
            action=action,
            script=script,
            args=list(args),
            username=username,
            token=token,
            source_ip=peer.ip,
            dispatcher=peer.dispatcher or "",
            dispatcher_serial=peer.serial_hex,
        )
        return hooks.authorise(request, hook, state.config.auth_hook_timeout, hooks.CALLER_AGENT)

    def _prepare(self, body: bytes, peer: Peer, state: AgentState):
        """A /run body checked in 0.12's order: a refusal Reply, or
        (request, job, log fields) for a script that may run."""
        try:
            request = agent_wire.parse_run(body)
        except RunRejected as rejected:
            return Reply(200, rejected.body)
        fields: dict[str, object] = {
            "SCRIPT": _short(request.script),
            "PEER": peer.ip,
            "REQID": _short(request.reqid),
        }
        try:
            resolved = state.allowlist.resolve(request.script)
        except NotAllowlisted:
            log.event("deny", log.WARNING, **fields)
            return Reply(200, agent_wire.run_refused(request, "script not permitted"))
        fields["DISPATCHER"] = peer.dispatcher
        decision = self._authorise(
            state, peer, "run", request.script, request.args, request.username, request.token
        )
        if not decision.allowed:
            log.event("deny", log.WARNING, REASON=decision.reason, **fields)
            return Reply(200, agent_wire.run_refused(request, f"not authorised: {decision.reason}"))
        context = agent_wire.script_context(
            request, peer.ip, peer.dispatcher or "", iso_utc(self.now())
        )
        job = job_for(
            resolved,
            request.args,
            context,
            state.config,
            {"SCRIPT": request.script, "REQID": fields["REQID"]},
            reqid=request.reqid,
            dispatcher=peer.dispatcher or "",
        )
        return request, job, fields

    def run(self, body: bytes, peer: Peer, state: AgentState) -> Reply:
        prepared = self._prepare(body, peer, state)
        if isinstance(prepared, Reply):
            return prepared
        request, job, fields = prepared
        if request.run_async:
            if self.async_runs is None:
                return Reply(200, agent_wire.run_refused(request, ASYNC_UNAVAILABLE))
            return Reply(*self.async_runs.submit(request, peer.dispatcher or "", job, fields))
        answer, release = self._execute(request, job, fields, peer)
        return Reply(200, answer, on_sent=release)

    def run_stream(self, body: bytes, peer: Peer, state: AgentState):
        """POST /run-stream: a synchronous run whose output is sent as the
        script writes it (agent/streaming.py); refusals as /run's."""
        prepared = self._prepare(body, peer, state)
        if isinstance(prepared, Reply):
            return prepared
        request, job, fields = prepared
        if request.run_async:
            return Reply(200, agent_wire.run_refused(request, STREAM_NOT_ASYNC))

        def finish(outcome: tuple[dict, Callable[[], None]]) -> dict:
            body, release = outcome
            release()  # the body is built: the output it held is accounted there
            return body

        return streaming.stream(
            job, lambda streamed: self._execute(request, streamed, fields, peer), finish
        )

    def _execute(self, request, job, fields: dict, peer: Peer) -> tuple[dict, Callable[[], None]]:
        """Run a synchronous job, tracked for /running and /cancel: /run's
        body, and what gives back its output budget once the body is sent."""
        with self.jobs.track(
            peer.dispatcher or "", request.reqid, request.script, run_control.SYNC, job.timeout
        ) as tracked:
            result = self.runner.run(
                dataclasses.replace(job, on_start=tracked.started, on_stoppable=tracked.stoppable)
            )
        extra: dict[str, object] = {}
        if result.timed_out:
            extra["TIMEOUT"] = f"{job.timeout:g}"
        if result.truncated:
            extra["TRUNCATED"] = ",".join(result.truncated)
        stderr = result.stderr
        if tracked.cancelled:
            extra["CANCELLED"] = 1
            stderr += ("" if not stderr or stderr.endswith("\n") else "\n") + CANCEL_NOTE
        log.event("run", log.INFO, EXIT=result.exit, **fields, **extra)
        body = agent_wire.run_result(request, result.exit, result.stdout, stderr)
        return body, lambda: self.runner.release(result)

    def running(self, peer: Peer) -> Reply:
        """The caller's own scripts running now (GET /running)."""
        entries = self.jobs.owned_by(peer.dispatcher or "")
        log.event("running", log.INFO, PEER=peer.ip, DISPATCHER=peer.dispatcher, COUNT=len(entries))
        return Reply(200, run_control.running_body(entries))

    def cancel(self, body: bytes, peer: Peer) -> Reply:
        """Stop the caller's own runs of a reqid (POST /cancel): SIGTERM to
        the process group, SIGKILL after the grace."""
        try:
            reqid = run_control.parse_cancel(body)
        except CancelRejected as rejected:
            return Reply(400, rejected.body)
        found = self.jobs.cancel(peer.dispatcher or "", reqid)
        if not found:
            log.event(
                "cancel-miss", log.INFO, PEER=peer.ip, DISPATCHER=peer.dispatcher, REQID=reqid
            )
            return Reply(404, run_control.cancel_unknown(reqid))
        return Reply(200, run_control.cancel_body(reqid, [(job.script, job.mode) for job in found]))

    def ping(self, body: bytes, peer: Peer, state: AgentState) -> Reply:
        reqid = agent_wire.ping_reqid(body)
        log.event("ping", log.INFO, PEER=peer.ip, DISPATCHER=peer.dispatcher, REQID=_short(reqid))
        staged = os.path.isfile(state.config.cert_staging_path)
        return Reply(
            200, agent_wire.ping_body(state.host, state.version, state.expiry, staged, reqid)
        )

    def capabilities(self, peer: Peer, state: AgentState) -> Reply:
        decision = self._authorise(state, peer, "discovery")
        if not decision.allowed:
            log.event(
                "capabilities-deny",
                log.WARNING,
                PEER=peer.ip,
                DISPATCHER=peer.dispatcher,
                REASON=decision.reason,
            )
            return Reply(403, dict(agent_wire.CAPABILITIES_NOT_AUTHORISED))
        scripts = capabilities.script_entries(
            state.allowlist, state.sidecars, state.config.script_timeout
        )
        log.event(
            "capabilities", log.INFO, PEER=peer.ip, DISPATCHER=peer.dispatcher, SCRIPTS=len(scripts)
        )
        return Reply(
            200, agent_wire.capabilities_body(state.host, state.version, state.config.tags, scripts)
        )

    def result(self, reqid: str, peer: Peer) -> Reply:
        """The caller's async run record; with no async store every id is
        unknown (0.12's answer for an id it never ran)."""
        fields = {"PEER": peer.ip, "DISPATCHER": peer.dispatcher, "REQID": _short(reqid)}
        if self.async_runs is None:
            log.event("result-miss", log.INFO, **fields)
            return Reply(404, agent_wire.result_unknown(reqid))
        return Reply(*self.async_runs.result(reqid, peer.dispatcher, fields))

    # --- certificate lifecycle ---------------------------------------------

    def renew(self, body: bytes, peer: Peer, state: AgentState) -> Reply:
        """Step 1 of a renewal: a CSR from the existing key (no gate, no hook)."""
        reqid = lifecycle.text_field(lifecycle.json_object(body), "reqid")
        fields = {"PEER": peer.ip, "REQID": _short(reqid)}
        if not os.path.isfile(state.config.key):
            log.event("renew", log.ERR, ERROR="agent key not available", **fields)
            return Reply(200, lifecycle.status_error("agent key not available"))
        try:
            csr_pem = renewal.make_csr(state.config, state.host)
        except Exception as exc:  # a key or crypto problem: 0.12's answer, reason logged
            log.event("renew", log.ERR, ERROR=f"could not generate CSR: {exc}"[:200], **fields)
            return Reply(200, lifecycle.status_error("could not generate CSR"))
        log.event("renew", log.INFO, STATUS="csr-generated", **fields)
        return Reply(200, lifecycle.renew_ok(csr_pem, reqid))

    def renew_complete(self, body: bytes, peer: Peer, state: AgentState) -> Reply:
        """Step 2: check the renewed certificate and stage it; the listener
        presents it from the next connection on (agent.identity)."""
        data = lifecycle.json_object(body)
        reqid = lifecycle.text_field(data, "reqid")
        fields = {"PEER": peer.ip, "REQID": _short(reqid)}
        cert_pem = lifecycle.text_field(data, "cert")
        if not cert_pem:
            log.event("renew-complete", log.ERR, ERROR="cert required", **fields)
            return Reply(200, lifecycle.status_error("cert required"))
        try:
            renewal.stage(state.config, cert_pem, self.now())
        except renewal.RenewalRejected as exc:
            log.event("renew-complete", log.ERR, ERROR=str(exc)[:200], **fields)
            return Reply(200, lifecycle.status_error(str(exc)))
        except Exception as exc:
            log.event("renew-complete", log.ERR, ERROR=f"{type(exc).__name__}: {exc}"[:200])
            return Reply(200, lifecycle.status_error("could not stage cert"))
        log.event("renew-complete", log.INFO, STATUS="cert-staged", **fields)
        return Reply(200, lifecycle.renew_complete_ok(reqid))

    def rotate_serial(self, body: bytes, peer: Peer, state: AgentState) -> Reply:
        """Add or remove a serial of the calling dispatcher in the trusted
        map. The caller is who its certificate says, never the body."""
        caller = peer.dispatcher or ""
        try:
            request = lifecycle.parse_rotate(body)
        except RotateRejected as rejected:
            log.event("rotate-fail", log.ERR, DISPATCHER=caller, ERROR=str(rejected))
            return Reply(200, rejected.body)
        decision = self._authorise(
            state, peer, "rotate", args=(request.action, request.serial), token=request.token
        )
        if not decision.allowed:
            log.event("rotate-deny", log.WARNING, DISPATCHER=caller, REASON=decision.reason)
            return Reply(403, {"error": f"not authorised: {decision.reason}"})
        path = state.config.trusted_dispatchers_path
        try:
            if request.action == lifecycle.ADD:
                trust.add_dispatcher(path, request.key, caller)
            elif request.key == peer.key:
                raise ValueError("cannot remove the serial this connection presents")
            else:
                trust.remove_dispatcher(path, request.key, caller)
        except (ValueError, OSError, CtrlExecError) as exc:
            message = getattr(exc, "strerror", None) or str(exc)
            log.event("rotate-fail", log.ERR, DISPATCHER=caller, ERROR=message)
            return Reply(200, lifecycle.status_error(message))
        if self.trust_changed is not None:
            self.trust_changed()
        log.event(
            "rotate",
            log.INFO,
            DISPATCHER=caller,
            SERIAL_ACTION=request.action,
            SERIAL=request.key,
            PEER=peer.ip,
        )
        return Reply(200, lifecycle.rotate_ok(request, caller))

    def revoke_serial(self, body: bytes, peer: Peer, state: AgentState) -> Reply:
        """A trusted dispatcher adds a serial to this agent's revocation list
        (`ced revoke --push`); refused from the next connection on."""
        caller = peer.dispatcher or ""
        try:
            request = lifecycle.parse_revoke(body)
        except RotateRejected as rejected:
            return Reply(200, rejected.body)
        decision = self._authorise(
            state, peer, "revoke", args=(request.serial,), token=request.token
        )
        if not decision.allowed:
            log.event("revoke-deny", log.WARNING, DISPATCHER=caller, REASON=decision.reason)
            return Reply(403, {"error": f"not authorised: {decision.reason}"})
        try:
            added = revocation.add(
                state.config.revoked_serials,
                lifecycle.list_line(request.key),
                f"pushed by {caller} from {peer.ip}",
            )
        except (ValueError, OSError, CtrlExecError) as exc:
            message = getattr(exc, "strerror", None) or str(exc)
            log.event("revoke-fail", log.ERR, DISPATCHER=caller, ERROR=message)
            return Reply(200, lifecycle.status_error(f"could not record: {message}"))
        log.event("revoke", log.WARNING, DISPATCHER=caller, SERIAL=request.key, PEER=peer.ip)
        return Reply(
            200,
            {"status": "ok", "serial": request.serial, "revoked": True, "new": added},
        )
