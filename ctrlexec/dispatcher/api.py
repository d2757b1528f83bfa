"""API requests to replies: the auth gates and each endpoint. No sockets
here: the server hands in a parsed request and the client's address, and
writes back the Reply.

Per request, as 0.12 (protocol.md §7.2-7.4):

1. the `api` gate: the auth hook (or `api_auth_default` when there is none)
   with action `api`, the body's `token` and the client's address; a no is
   403. `GET /health` skips it when `health_open` is set (0.12's code gates
   it, its documentation says it is open: operators choose);
2. the route (404 for anything else);
3. the endpoint's own action: `ping` for /ping, /discovery and
   /openapi-live.json (its token from `Authorization: Bearer`), `run` for
   /run, `status` for /status/<reqid>; the engine calls the hook for the
   first ones, this module for the last.

`/openapi-live.json` is built from the discovery cache (what the agents
last said in /discovery), asking again only agents whose answer is stale.

`/status` answers 404 alike for an unknown reqid, an expired one and one the
`status` check refuses. Unlike 0.12, which polls the agents first, the
check comes before anything is fetched: a caller who is refused causes no
agent traffic and no rewrite of the record.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import log
from ..core import api_wire, run_record, sse
from ..core.caller import Caller
from ..core.results import SUBMIT, HostResult
from ..core.routing import Reply, Route
from ..core.timefmt import parse_openssl_notafter
from ..errors import (
    ApiError,
    BadRequest,
    CtrlExecError,
    Locked,
    PolicyDenied,
    StateError,
    UnknownAgents,
)
from . import api_stream, metrics
from .api_stream import EventStream
from .discovery_cache import DiscoveryCache
from .engine import Engine
from .metrics import Metrics
from .runstore import RunStore, aggregate


@dataclass(frozen=True)
class ApiRequest:
    method: str
    path: str
    body: bytes
    authorization: str  # the Authorization header, or ""
    peer: str  # the client's IP
    accept: str = ""  # the Accept header: text/event-stream streams a /run


class Api:
    def __init__(
        self,
        engine: Engine,
        store: RunStore,
        spec: bytes,
        version: str,
        deny_generic: bool = False,
        health_open: bool = False,
        clock: Callable[[], float] = time.time,
        discovered: DiscoveryCache | None = None,
        metrics_open: bool = False,
        pairing_dir: Path | None = None,
    ):
        self.engine = engine
        self.store = store
        self.spec = spec
        self.version = version
        self.deny_generic = deny_generic
        self.health_open = health_open
        self.clock = clock
        self.discovered = discovered or DiscoveryCache()
        self.metrics_open = metrics_open
        self.pairing_dir = pairing_dir
        self.metrics = Metrics()

    def handle(self, request: ApiRequest) -> Reply | EventStream:
        started = time.monotonic()
        found = api_wire.route(request.method, request.path)
        reply = self._handle(found, request)
        self.metrics.request(
            request.method.upper()[:16], found.name, reply.status, time.monotonic() - started
        )
        return reply

    def _open(self, found: Route) -> bool:
        return (found.name == api_wire.HEALTH and self.health_open) or (
            found.name == api_wire.METRICS and self.metrics_open
        )

    def _handle(self, found: Route, request: ApiRequest) -> Reply | EventStream:
        try:
            if not self._open(found):
                token = api_wire.gate_token(request.body)
                if found.name == api_wire.METRICS and not token:
                    token = api_wire.bearer_token(request.authorization)  # scrapers send a header
                self.engine.authorise(
                    "api",
                    [],
                    caller=Caller.api(request.peer, token=token),
                )
            return self._endpoint(found, request)
        except ApiError as exc:
            return api_wire.error_reply(exc)
        except PolicyDenied as exc:
            self.metrics.denial(exc.reason)
            return api_wire.denied(exc.reason, exc.code, self.deny_generic)
        except UnknownAgents as exc:
            return api_wire.unknown_agents(exc.names)
        except Locked as exc:
            return api_wire.locked(exc.conflicts)
        except BadRequest as exc:
            return api_wire.error_reply(api_wire.bad_request(str(exc)))
        except CtrlExecError as exc:  # the operator reads why in the log, not the client
            log.event("api-error", log.ERR, PATH=request.path[:200], ERROR=str(exc)[:300])
            return api_wire.server_error("internal error")

    def _endpoint(self, found: Route, request: ApiRequest) -> Reply | EventStream:
        name = found.name
        if name == api_wire.INDEX:
            return Reply(200, api_wire.index_body(self.version))
        if name == api_wire.HEALTH:
            return Reply(200, api_wire.health_body(self.version))
        if name == api_wire.PING:
            return self._ping(request)
        if name == api_wire.RUN:
            return self._run(request)
        if name == api_wire.DISCOVERY:
            return self._discovery(request)
        if name == api_wire.STATUS:
            return self._status(found.arg, request)
        if name == api_wire.OPENAPI:
            return Reply(200, self.spec)
        if name == api_wire.METRICS:
            return Reply(200, self._scrape(), metrics.CONTENT_TYPE)
        if name == api_wire.OPENAPI_LIVE:
            return self._openapi_live(request)
        return api_wire.no_route(request.method, request.path)

    def _selected(self, hosts: list[str], selector: api_wire.Selector | None) -> list[str]:
        """`hosts` as given, then what the optional selector adds."""
        if selector is None:
            return hosts
        chosen = list(hosts)
        for host in self.engine.select(list(selector.hosts), selector.tags):
            if host not in chosen:
                chosen.append(host)
        return chosen

    def _ping(self, request: ApiRequest) -> Reply:
        ping = api_wire.parse_ping(request.body)
        results = self.engine.ping(
            self._selected(ping.hosts, ping.select),
            caller=Caller.api(request.peer, ping.username, ping.token),
        )
        return Reply(200, {"ok": True, "results": _wire(results)})

    def _run(self, request: ApiRequest) -> Reply | EventStream:
        run = api_wire.parse_run(request.body)
        hosts = self._selected(run.hosts, run.select)
        reqid = self.engine.new_reqid()
        submitter = {"username": run.username, "source_ip": request.peer}
        if not run.run_async and sse.wants_event_stream(request.accept):
            return self._run_streamed(run, hosts, reqid, submitter, request.peer)

        def record_pending(reqid: str, targets) -> None:
            # before any agent is asked: a crash after this leaves a record
            # whose hosts /status will ask (and find running, done or expired)
            pending = [
                HostResult(SUBMIT, {"host": target.name, "status": "accepted"})
                for target in targets
            ]
            self.store.record_async(reqid, run.script, pending, submitter)

        results = self.engine.run(
            hosts,
            run.script,
            run.args,
            caller=Caller.api(request.peer, run.username, run.token),
            reqid=reqid,
            run_async=run.run_async,
            before_dispatch=record_pending if run.run_async else None,
        )
        self.metrics.runs(results)
        try:
            if run.run_async:
                self.store.record_async(reqid, run.script, results, submitter)
            else:
                self.store.record_sync(reqid, run.script, hosts, results, submitter)
        except StateError:
            pass  # logged run-store-fail; the run happened and its answer stands (0.12)
        if run.run_async:
            return Reply(
                202, {"ok": True, "reqid": reqid, "async": True, "results": _wire(results)}
            )
        return Reply(200, {"ok": True, "reqid": reqid, "results": _wire(results)})

    def _run_streamed(
        self, run: api_wire.RunRequest, hosts: list[str], reqid: str, submitter: dict, peer: str
    ) -> EventStream:
        """A synchronous run as an event stream (dispatcher.api_stream)."""

        def execute(**callbacks) -> list[HostResult]:
            return self.engine.run(
                hosts,
                run.script,
                run.args,
                caller=Caller.api(peer, run.username, run.token),
                reqid=reqid,
                **callbacks,
            )

        def started(targets: list) -> dict:
            record = api_stream.in_progress_record(
                reqid, run.script, hosts, targets, int(self.clock()), submitter
            )
            try:
                self.store.save(record)
            except StateError:
                pass  # logged run-store-fail; the run goes on, as a plain sync run would
            return {"reqid": reqid, "script": run.script, "hosts": [t.name for t in targets]}

        def finish(results: list[HostResult]) -> dict:
            self.metrics.runs(results)
            try:
                self.store.record_sync(reqid, run.script, hosts, results, submitter)
            except StateError:
                pass  # logged run-store-fail
            return {"ok": True, "reqid": reqid, "results": _wire(results)}

        return api_stream.start(execute, started, finish)

    def _discovery(self, request: ApiRequest) -> Reply:
        wanted = api_wire.parse_discovery(request.body)
        hosts = wanted.hosts or self.engine.registry.names()
        if not hosts:
            return Reply(200, {"ok": True, "hosts": {}})
        results = self.engine.discover(
            hosts,
            caller=Caller.api(request.peer, wanted.username, wanted.token),
        )
        self.discovered.store(results)
        return Reply(
            200, {"ok": True, "hosts": {result.host: result.to_wire() for result in results}}
        )

    def _status(self, reqid: str, request: ApiRequest) -> Reply:
        try:
            record = self.store.load(reqid)
        except (StateError, OSError):
            return api_wire.server_error("cannot read result")
        if record is None:
            return api_wire.status_unknown(reqid)
        submitter = record.get("submitter")
        try:
            self.engine.authorise(
                "status",
                [],
                caller=Caller.api(request.peer, token=api_wire.bearer_token(request.authorization)),
                reqid=reqid,
                submitter=submitter if isinstance(submitter, dict) else None,
            )
        except PolicyDenied:
            return api_wire.status_unknown(reqid)
        try:
            record = aggregate(self.store, self.engine, reqid)
        except (StateError, OSError):
            return api_wire.server_error("cannot read result")
        if record is None:  # purged between the two reads
            return api_wire.status_unknown(reqid)
        return Reply(200, {"ok": True, **run_record.public(record)})

    def _scrape(self) -> bytes:
        return self.metrics.render(
            lambda: metrics.state_gauges(
                self.engine.registry.records(),
                self.pairing_dir,
                self.store.directory,
                self.clock(),
                parse_openssl_notafter,
                self.engine.state.counts() if self.engine.state is not None else None,
            )
        )

    def _openapi_live(self, request: ApiRequest) -> Reply:
        names = self.engine.registry.names()
        if names:  # the gate /discovery applies, and like it only when there are agents
            self.engine.authorise(
                "ping",
                names,
                caller=Caller.api(request.peer, token=api_wire.bearer_token(request.authorization)),
            )
        capabilities = self.discovered.results(
            names, lambda stale: self.engine.capabilities(self.engine.resolve(stale))
        )
        document = api_wire.live_spec(json.loads(self.spec), names, capabilities, int(self.clock()))
        return Reply(200, document)


def _wire(results: list[HostResult]) -> list[dict]:
    """Per-host results as 0.12's JSON objects."""
    return [result.to_wire() for result in results]
