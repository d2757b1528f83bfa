"""The dispatcher HTTP API end to end, through the pyz as operators run it:
`dispatcher serve` under a dispatcher root, two real agents (`agent serve`)
on loopback, a client made of raw sockets that checks every answer against
the shipped OpenAPI document, and curl as a client that knows nothing of
this code base.

Blocking runs use the `block DIR` script: it creates DIR/started and waits
for DIR/go, so the tests await events instead of sleeping."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import threading
import time

import pytest
from openapi_spec_validator import validate as validate_openapi

from tests.support import agentproc, apiproc, hookscripts, openapi_check, testpki
from tests.support.agentproc import in_thread
from tests.support.fleet import running_fleet

NAMES = ("agent-01", "agent-02")
REQID = re.compile(r"[0-9a-f]{16}")


def record_of(fleet, reqid: str) -> dict:
    return json.loads((fleet.layout.runs_dir / f"{reqid}.json").read_text())


@pytest.fixture(scope="module")
def fleet(session_ca, pyz_for, tmp_path_factory):
    base = tmp_path_factory.mktemp("api-fleet")

    def prepare(site, runner):
        site.tags = {"env": "test", "name": site.name}
        site.write_config()

    scripts = dict(agentproc.APPENDIX_C_SCRIPTS, block=agentproc.BLOCK)
    with running_fleet(session_ca, pyz_for, base, NAMES, scripts, prepare) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def api(fleet):
    """The API as the observed 0.12 deployment ran it: no hook, allow."""
    process = apiproc.ApiProcess(fleet.dispatcher, api_auth_default="allow").start()
    yield process.client()
    process.stop()


def await_file(path, what: str = "file"):
    agentproc.wait_for(path.exists, 30, f"{what} {path}")


def blocked_run(client, fleet, host: str):
    """A synchronous /run of `block` on `host`, in progress: (its gate, the
    pending answer). Touch gate/go to let it finish."""
    gate = fleet.gate()
    pending = in_thread(
        lambda: client.post("/run", {"hosts": [host], "script": "block", "args": [str(gate)]})
    )
    await_file(gate / "started")
    return gate, pending


# -- index, health, documents ----------------------------------------------------------------------


def test_index_and_health(api):
    index = api.get("/")
    assert index.status == 200
    assert index.json["name"] == "ctrl-exec-api" and index.json["spec"] == "/openapi.json"
    assert [(e["method"], e["path"]) for e in index.json["endpoints"]] == [
        ("GET", "/health"),
        ("POST", "/ping"),
        ("POST", "/run"),
        ("GET", "/discovery"),
        ("POST", "/discovery"),
        ("GET", "/status/{reqid}"),
        ("GET", "/openapi.json"),
        ("GET", "/openapi-live.json"),
    ]
    health = api.get("/health")
    assert health.status == 200 and health.json == {"ok": True, "version": index.json["version"]}
    assert health.phrase == "OK"


def test_openapi_document_is_served_verbatim_and_valid(api):
    response = api.get("/openapi.json")
    assert response.status == 200
    assert response.body == openapi_check.DOCUMENT.read_bytes()
    validate_openapi(response.json)
    assert response.json["openapi"] == "3.1.0"


def test_openapi_live_lists_agents_and_scripts(api):
    before = int(time.time())
    response = api.get("/openapi-live.json")
    assert response.status == 200
    document = response.json
    validate_openapi(document)
    schemas = document["components"]["schemas"]
    for name in ("PingRequest", "RunRequest", "DiscoveryRequest"):
        assert schemas[name]["properties"]["hosts"]["items"]["enum"] == list(NAMES)
    assert schemas["RunRequest"]["properties"]["script"]["enum"] == [
        "block",
        "echo-args",
        "fail",
        "show-context",
        "sleep",
    ]
    assert document["x-ctrl-exec-scripts"]["echo-args"] == [{"hosts": list(NAMES)}]
    base, _, stamp = document["info"]["version"].partition("+")
    assert base == openapi_check.document()["info"]["version"] and int(stamp) >= before


# -- ping, run, discovery --------------------------------------------------------------------------


def test_ping(api):
    response = api.post("/ping", {"hosts": list(NAMES)})
    assert response.status == 200 and response.json["ok"] is True
    results = response.json["results"]
    assert [r["host"] for r in results] == list(NAMES)
    assert all(r["status"] == "ok" and r["staged"] is False for r in results)
    assert len({r["reqid"] for r in results}) == 1


def test_sync_run_is_recorded_for_status(api, fleet):
    response = api.post(
        "/run",
        {
            "hosts": list(NAMES),
            "script": "echo-args",
            "args": ["hello", "two words"],
            "username": "alice",
            "token": "t0k",
        },
    )
    assert response.status == 200
    reqid = response.json["reqid"]
    assert REQID.fullmatch(reqid)
    for name, result in zip(NAMES, response.json["results"], strict=True):
        assert result == {
            "host": name,
            "script": "echo-args",
            "exit": 0,
            "stdout": "hello\ntwo words\n",
            "stderr": "",
            "reqid": reqid,
            "rtt": result["rtt"],
        }
    path = fleet.layout.runs_dir / f"{reqid}.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    record = record_of(fleet, reqid)
    assert record["submitter"] == {"username": "alice", "source_ip": "127.0.0.1"}
    assert "t0k" not in path.read_text()
    status = api.get(f"/status/{reqid}")
    assert status.status == 200
    assert status.json == {
        "ok": True,
        "reqid": reqid,
        "script": "echo-args",
        "mode": "sync",
        "hosts": list(NAMES),
        "results": response.json["results"],
        "completed": record["completed"],
        "complete": True,
    }


def test_script_failure_and_refusal_are_200(api):
    failed = api.post("/run", {"hosts": ["agent-01"], "script": "fail", "args": ["7"]})
    assert failed.status == 200
    [result] = failed.json["results"]
    assert result["exit"] == 7 and result["stdout"] == "about to fail\n"
    refused = api.post("/run", {"hosts": ["agent-01"], "script": "rm-rf"})
    assert refused.status == 200
    [result] = refused.json["results"]
    assert result["exit"] == -1 and result["error"] == "script not permitted"


def test_discovery_get_and_post_refresh_tags(api, fleet):
    registry = fleet.layout.registry_dir / "agent-02.json"
    record = json.loads(registry.read_text())
    record["tags"] = {}
    registry.write_text(json.dumps(record))
    every = api.get("/discovery")
    assert every.status == 200 and sorted(every.json["hosts"]) == list(NAMES)
    one = api.post("/discovery", {"hosts": ["agent-02"]})
    assert one.status == 200 and list(one.json["hosts"]) == ["agent-02"]
    capabilities = one.json["hosts"]["agent-02"]
    assert capabilities["status"] == "ok" and capabilities["tags"] == {
        "env": "test",
        "name": "agent-02",
    }
    assert [s["name"] for s in capabilities["scripts"]] == [
        "block",
        "echo-args",
        "fail",
        "show-context",
        "sleep",
    ]
    assert json.loads(registry.read_text())["tags"] == {"env": "test", "name": "agent-02"}
    unparsable = api.post("/discovery", b"not json")
    assert unparsable.status == 200 and sorted(unparsable.json["hosts"]) == list(NAMES)


# -- 400, 404, 409, 413, 431 -----------------------------------------------------------------------

BAD = [
    ("/run", None, "request body required"),
    ("/run", b"{not json", "invalid JSON body"),
    ("/run", b"[1,2]", "invalid JSON body"),
    ("/run", {"script": "echo-args"}, "hosts must be a non-empty array"),
    ("/run", {"hosts": [], "script": "echo-args"}, "hosts must be a non-empty array"),
    (
        "/run",
        {"hosts": ["agent-01"], "script": "../etc/passwd"},
        "script name required (alphanumeric and hyphens only)",
    ),
    ("/run", {"hosts": ["agent-01"]}, "script name required (alphanumeric and hyphens only)"),
    ("/run", {"hosts": ["agent-01"], "script": "echo-args", "args": "x"}, "args must be an array"),
    ("/run", {"hosts": ["agent-01"], "script": "echo-args", "args": [1]}, "args must be strings"),
    (
        "/run",
        {"hosts": ["agent-01"] * 501, "script": "echo-args"},
        "too many hosts: 501 (at most 500 per operation)",
    ),
    ("/ping", None, "request body required"),
    ("/ping", {"hosts": "agent-01"}, "hosts must be a non-empty array"),
    ("/ping", {"hosts": [7]}, "hosts must be non-empty strings"),
    ("/ping", {"hosts": ["agent-01"], "token": 5}, "token must be a string"),
]


@pytest.mark.parametrize("path,body,detail", BAD)
def test_bad_requests(api, path, body, detail):
    if body is None:
        response = api.raw(f"POST {path} HTTP/1.0\r\n\r\n".encode(), "POST", path)
    else:
        response = api.post(path, body)
    assert response.status == 400
    assert response.json == {"ok": False, "error": "bad request", "detail": detail}


def test_unknown_agent(api):
    for path, body in (
        ("/run", {"hosts": ["agent-01", "nosuch", "other:7443"], "script": "echo-args"}),
        ("/ping", {"hosts": ["nosuch"]}),
        ("/discovery", {"hosts": ["nosuch"]}),
    ):
        response = api.post(path, body)
        assert response.status == 404
        assert response.json["error"] == "unknown agent"
    assert response.json["detail"] == "not a registered agent: nosuch"


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/nope"),
        ("GET", "/ping"),
        ("POST", "/health"),
        ("GET", "/health?x=1"),
        ("GET", "/status/ABC"),
        ("DELETE", "/run"),
    ],
)
def test_no_route(api, method, path):
    response = api.request(method, path)
    assert response.status == 404
    assert response.json == {
        "ok": False,
        "error": "not found",
        "detail": f"no route for {method} {path}",
    }


def test_unknown_status(api):
    response = api.get("/status/0123456789abcdef")
    assert response.status == 404
    assert response.json == {
        "ok": False,
        "error": "not found",
        "detail": "no result for reqid 0123456789abcdef",
    }


def test_unreadable_record_is_500(api, fleet):
    reqid = api.post("/run", {"hosts": ["agent-01"], "script": "echo-args"}).json["reqid"]
    record = fleet.layout.runs_dir / f"{reqid}.json"
    record.write_text('{"reqid": "trunc')
    try:
        response = api.get(f"/status/{reqid}")
    finally:
        record.unlink()
    assert response.status == 500 and response.phrase == "Internal Server Error"
    assert response.json == {"ok": False, "error": "server error", "detail": "cannot read result"}


def test_framing_limits(api):
    empty = api.raw(b"\r\n\r\n", "", "")  # no request line: no operation
    assert (empty.status, empty.json) == (
        400,
        {"ok": False, "error": "bad request", "detail": "empty request"},
    )
    headers = "".join(f"X-H{n}: v\r\n" for n in range(33))
    many = api.raw(f"GET /health HTTP/1.0\r\n{headers}\r\n".encode(), "GET", "/health")
    assert many.status == 431 and many.phrase == "Request Header Fields Too Large"
    assert many.json == {
        "ok": False,
        "error": "request header fields too large",
        "detail": "more than 32 header lines",
    }
    large = api.raw(b"POST /run HTTP/1.0\r\nContent-Length: 1048577\r\n\r\n", "POST", "/run")
    assert large.status == 413 and large.json == {
        "ok": False,
        "error": "payload too large",
        "detail": "body exceeds 1048576 bytes",
    }
    exactly = api.raw(b"GET /health HTTP/1.0\r\n" + b"X-H: v\r\n" * 32 + b"\r\n", "GET", "/health")
    assert exactly.status == 200


def test_lock_conflict_while_a_run_holds_the_lock(api, fleet):
    gate, first = blocked_run(api, fleet, "agent-01")
    conflict = api.post(
        "/run", {"hosts": ["agent-01", "agent-02"], "script": "block", "args": [str(gate)]}
    )
    assert conflict.status == 409 and conflict.phrase == "Conflict"
    assert conflict.json == {
        "ok": False,
        "error": "locked",
        "code": 4,
        "conflicts": ["agent-01:block"],
    }
    (gate / "go").touch()
    done = first()
    assert done.status == 200 and done.json["results"][0]["stdout"] == "released\n"


# -- async runs, /status, ced status / wait --------------------------------------------------------


def test_async_run_pending_then_complete(api, fleet):
    gate = fleet.gate()
    submitted = api.post(
        "/run",
        {
            "hosts": list(NAMES),
            "script": "block",
            "args": [str(gate)],
            "async": True,
            "username": "bob",
        },
    )
    assert submitted.status == 202 and submitted.phrase == "Accepted"
    reqid = submitted.json["reqid"]
    assert submitted.json["ok"] is True and submitted.json["async"] is True
    for name, result in zip(NAMES, submitted.json["results"], strict=True):
        assert result == {
            "host": name,
            "script": "block",
            "status": "accepted",
            "reqid": reqid,
            "rtt": result["rtt"],
        }
    await_file(gate / "started")
    pending = api.get(f"/status/{reqid}")
    assert pending.status == 200
    assert pending.json["complete"] is False and pending.json["pending"] == list(NAMES)
    assert pending.json["mode"] == "async" and "submitter" not in pending.json
    assert pending.json["hosts"] == {name: {"status": "running"} for name in NAMES}
    shown = fleet.dispatcher.run("ced", "status", reqid)
    assert shown.returncode == 0
    assert shown.stdout == (
        f"Request {reqid}  (script: block)  [PENDING]\n"
        "==> agent-01  [running]\n==> agent-02  [running]\n"
    )
    (gate / "go").touch()

    def finished():
        response = api.get(f"/status/{reqid}")
        return response if response.json["complete"] else None

    done = agentproc.wait_for(finished, 30, "async run to complete")
    assert done.json["pending"] == []
    assert done.json["hosts"] == {
        name: {"status": "done", "exit": 0, "stdout": "released\n", "stderr": ""} for name in NAMES
    }
    assert record_of(fleet, reqid)["submitter"] == {"username": "bob", "source_ip": "127.0.0.1"}
    waited = fleet.dispatcher.run("ced", "wait", reqid)
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout.startswith(
        f"Request {reqid}  (script: block)  [COMPLETE]\n==> agent-01  [done  exit:0]\nreleased\n"
    )
    as_json = json.loads(fleet.dispatcher.run("ced", "--json", "status", reqid).stdout)
    assert as_json["ok"] == 1 and as_json["complete"] is True


def test_async_busy_and_wait_exit_codes(api, fleet):
    gate = fleet.gate()
    first = fleet.dispatcher.run(
        "ced", "--json", "run", "--async", "agent-01", "block", "--", str(gate)
    )
    assert first.returncode == 0, first.stderr
    submitted = json.loads(first.stdout)
    assert submitted["ok"] == 1 and submitted["results"][0]["status"] == "accepted"
    reqid = submitted["reqid"]
    await_file(gate / "started")
    # still running: wait gives up with 2
    pending = fleet.dispatcher.run("ced", "wait", reqid, "--timeout", "0.3", "--interval", "0.1")
    assert pending.returncode == 2, pending.stderr
    assert f"Request {reqid}  (script: block)  [PENDING]" in pending.stdout
    assert pending.stderr.startswith("Still running after 0.3s (--timeout): wait again with '")
    assert pending.stderr.rstrip().endswith(f" cancel {reqid}'.")
    # the agent refuses a second copy of the script: busy, a failure for wait
    busy = api.post(
        "/run", {"hosts": ["agent-01"], "script": "block", "args": [str(gate)], "async": True}
    )
    assert busy.status == 202
    [result] = busy.json["results"]
    assert result["status"] == "busy" and result["error"] == "script already running"
    waited_busy = fleet.dispatcher.run("ced", "wait", busy.json["reqid"])
    assert waited_busy.returncode == 1
    assert "==> agent-01  [BUSY]\n    script already running\n" in waited_busy.stdout
    (gate / "go").touch()
    done = fleet.dispatcher.run("ced", "wait", reqid, "--interval", "0.1")
    assert done.returncode == 0, done.stdout + done.stderr
    failing = fleet.dispatcher.run("ced", "run", "--async", "agent-02", "fail", "--", "3")
    assert failing.returncode == 0
    assert re.fullmatch(
        r"Submitted async run  req:([0-9a-f]{16})\n==> agent-02  \[accepted  \d+ms\]\n"
        r"Check progress with: (ctrl-exec )?ced status \1\n",
        failing.stdout,
    ), failing.stdout
    failed_reqid = failing.stdout.split("req:", 1)[1][:16]
    failed = fleet.dispatcher.run("ced", "wait", failed_reqid, "--interval", "0.1")
    assert failed.returncode == 1
    assert (
        "==> agent-02  [done  exit:3]\nabout to fail\n    STDERR: something went wrong\n"
        in failed.stdout
    )


def test_status_and_wait_of_unknown_reqid(fleet):
    for mode in ("status", "wait"):
        text = fleet.dispatcher.run("ced", mode, "feedfacefeedface")
        assert text.returncode == 1 and text.stderr == "No such request: feedfacefeedface\n"
        as_json = fleet.dispatcher.run("ced", "--json", mode, "feedfacefeedface")
        assert as_json.returncode == 1
        assert json.loads(as_json.stdout) == {
            "ok": 0,
            "error": "not found",
            "reqid": "feedfacefeedface",
        }


# -- curl: a client that knows nothing of this code ------------------------------------------------


def curl(*args: str) -> tuple[int, dict]:
    completed = subprocess.run(
        ["curl", "-sS", "--max-time", "60", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )
    body, _, code = completed.stdout.rpartition("\n")
    return int(code), json.loads(body)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_sync_and_async_run(api, fleet):
    url = f"http://127.0.0.1:{api.port}"
    post = ["-X", "POST", "-H", "Content-Type: application/json", "--data"]
    code, body = curl(
        *post,
        json.dumps({"hosts": ["agent-02"], "script": "echo-args", "args": ["from curl", "ü"]}),
        f"{url}/run",
    )
    assert code == 200 and body["results"][0]["stdout"] == "from curl\nü\n"
    openapi_check.check_response("POST", "/run", code, body)
    code, status = curl(f"{url}/status/{body['reqid']}")
    assert code == 200 and status["complete"] is True
    openapi_check.check_response("GET", "/status/x", code, status)

    gate = fleet.gate()
    code, body = curl(
        *post,
        json.dumps({"hosts": ["agent-02"], "script": "block", "args": [str(gate)], "async": True}),
        f"{url}/run",
    )
    assert code == 202 and body["results"][0]["status"] == "accepted"
    openapi_check.check_response("POST", "/run", code, body)
    await_file(gate / "started")
    code, status = curl(f"{url}/status/{body['reqid']}")
    assert code == 200 and status["complete"] is False
    openapi_check.check_response("GET", "/status/x", code, status)
    (gate / "go").touch()

    def finished():
        code, status = curl(f"{url}/status/{body['reqid']}")
        openapi_check.check_response("GET", "/status/x", code, status)
        return status if status["complete"] else None

    status = agentproc.wait_for(finished, 30, "async run seen by curl")
    assert status["hosts"]["agent-02"]["stdout"] == "released\n"


# -- auth gates ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hooked(fleet):
    """An API with a real auth hook that records each call."""
    hook = fleet.base / "hook"
    record = fleet.base / "hook-calls"

    def behave(behaviour):
        shutil.rmtree(record, ignore_errors=True)
        hookscripts.write_hook(hook, behaviour, record)

    behave(0)
    process = apiproc.ApiProcess(fleet.dispatcher, auth_hook=str(hook)).start()
    yield process.client(), behave, lambda: hookscripts.calls(record)
    process.stop()


def test_hook_sees_api_then_run(hooked):
    client, behave, calls = hooked
    behave(0)
    response = client.post(
        "/run",
        {
            "hosts": ["agent-01"],
            "script": "echo-args",
            "args": ["a b", "c"],
            "username": "alice",
            "token": "s3cret",
        },
    )
    assert response.status == 200
    (api_env, api_stdin), (run_env, run_stdin) = calls()
    assert api_env["ENVEXEC_ACTION"] == "api" and api_env["ENVEXEC_TOKEN"] == "s3cret"
    assert api_env["ENVEXEC_USERNAME"] == "" and api_env["ENVEXEC_HOSTS"] == ""
    assert api_env["ENVEXEC_SOURCE_IP"] == "127.0.0.1" and api_stdin["hosts"] == []
    assert run_env["ENVEXEC_ACTION"] == "run" and run_env["ENVEXEC_SCRIPT"] == "echo-args"
    assert run_env["ENVEXEC_HOSTS"] == "agent-01" and run_env["ENVEXEC_USERNAME"] == "alice"
    assert run_env["ENVEXEC_TOKEN"] == "s3cret" and run_env["ENVEXEC_ARGS"] == "a b c"
    assert json.loads(run_env["ENVEXEC_ARGS_JSON"]) == ["a b", "c"]
    assert run_stdin["action"] == "run" and run_stdin["args"] == ["a b", "c"]

    behave(0)
    reqid = response.json["reqid"]
    status = client.get(f"/status/{reqid}", headers={"Authorization": "Bearer sesame"})
    assert status.status == 200
    (api_env, _), (status_env, status_stdin) = calls()
    assert api_env["ENVEXEC_ACTION"] == "api" and api_env["ENVEXEC_TOKEN"] == ""
    assert status_env["ENVEXEC_ACTION"] == "status" and status_env["ENVEXEC_REQID"] == reqid
    assert status_env["ENVEXEC_TOKEN"] == "sesame"
    assert status_env["ENVEXEC_SUBMITTER"] == "alice"
    assert status_env["ENVEXEC_SUBMITTER_IP"] == "127.0.0.1"
    assert status_stdin["submitter"] == {"username": "alice", "source_ip": "127.0.0.1"}

    behave(0)
    assert client.post("/discovery", {"hosts": ["agent-02"], "token": "d"}).status == 200
    assert client.post("/ping", {"hosts": ["agent-02"], "username": "p"}).status == 200
    actions = [(env["ENVEXEC_ACTION"], env["ENVEXEC_HOSTS"]) for env, _ in calls()]
    assert actions == [("api", ""), ("ping", "agent-02"), ("api", ""), ("ping", "agent-02")]


def test_openapi_live_passes_the_discovery_gate_and_serves_from_the_cache(hooked, fleet):
    client, behave, calls = hooked
    behave({"ping": 1})
    denied = client.get("/openapi-live.json", headers={"Authorization": "Bearer live"})
    assert denied.status == 403
    _, (ping_env, _) = calls()
    assert ping_env["ENVEXEC_ACTION"] == "ping" and ping_env["ENVEXEC_TOKEN"] == "live"

    def asked() -> int:
        return sum(
            runner.log_text().count("ACTION=capabilities ") for runner, _ in fleet.agents.values()
        )

    behave(0)
    before = asked()
    assert client.get("/openapi-live.json").status == 200
    first = asked()
    assert first - before <= len(NAMES)
    for _ in range(3):
        document = client.get("/openapi-live.json").json
        assert document["x-ctrl-exec-scripts"]["echo-args"] == [{"hosts": list(NAMES)}]
    assert asked() == first  # served from the cache: no agent asked again


@pytest.mark.parametrize(
    "behaviour,path,body,error,code",
    [
        ({"api": 1}, "/health", None, "denied", 1),
        ({"api": 2}, "/nope", None, "bad credentials", 2),
        (
            {"run": 3},
            "/run",
            {"hosts": ["agent-01"], "script": "echo-args"},
            "insufficient privilege",
            3,
        ),
        ({"ping": 7}, "/ping", {"hosts": ["agent-01"]}, "hook exited 7", 7),
        ({"ping": "crash"}, "/discovery", None, "denied", 1),
    ],
)
def test_hook_refusals(hooked, behaviour, path, body, error, code):
    client, behave, _calls = hooked
    behave(behaviour)
    response = client.post(path, body) if body is not None else client.get(path)
    assert response.status == 403 and response.phrase == "Forbidden"
    assert response.json == {"ok": False, "error": error, "code": code}


def test_status_refused_looks_unknown(hooked, fleet):
    client, behave, calls = hooked
    behave(0)
    reqid = client.post("/run", {"hosts": ["agent-01"], "script": "echo-args"}).json["reqid"]
    behave({"status": 1})
    refused = client.get(f"/status/{reqid}")
    unknown = client.get("/status/00000000deadbeef")
    assert refused.status == unknown.status == 404
    assert refused.json == {
        "ok": False,
        "error": "not found",
        "detail": f"no result for reqid {reqid}",
    }
    assert unknown.json["detail"] == "no result for reqid 00000000deadbeef"
    assert [env["ENVEXEC_ACTION"] for env, _ in calls()] == ["api", "status", "api"]


def test_generic_denials(fleet):
    hook = hookscripts.write_hook(fleet.base / "deny-run", {"run": 3})
    process = apiproc.ApiProcess(
        fleet.dispatcher, auth_hook=str(hook), auth_deny_generic=True
    ).start()
    try:
        client = process.client()
        response = client.post("/run", {"hosts": ["agent-01"], "script": "echo-args"})
        assert response.status == 403 and response.json == {"ok": False, "error": "forbidden"}
        assert client.get("/health").status == 200
    finally:
        process.stop()


@pytest.mark.parametrize("health_open", [False, True])
def test_no_hook_denies_by_default(fleet, health_open):
    process = apiproc.ApiProcess(fleet.dispatcher, health_open=health_open).start()
    try:
        client = process.client()
        denied = {"ok": False, "error": "no auth hook configured", "code": 1}
        health = client.get("/health")
        if health_open:
            assert health.status == 200 and health.json["ok"] is True
        else:
            assert (health.status, health.json) == (403, denied)
        index = client.get("/")
        assert (index.status, index.json) == (403, denied)
        assert "REASON=no-hook-deny" in fleet.dispatcher.log_text()
    finally:
        process.stop()


# -- server behaviour: 503, TLS, SIGTERM, kill -9, config errors -----------------------------------


def test_overload_answers_503(fleet):
    process = apiproc.ApiProcess(
        fleet.dispatcher, api_auth_default="allow", api_max_children=1
    ).start()
    try:
        client = process.client()
        gate, busy = blocked_run(client, fleet, "agent-02")
        overloaded = client.get("/health")
        assert overloaded.status == 503 and overloaded.phrase == "Service Unavailable"
        assert overloaded.json == {
            "ok": False,
            "error": "service unavailable",
            "detail": "too many concurrent requests",
        }
        (gate / "go").touch()
        assert busy().status == 200
        assert agentproc.wait_for(lambda: client.get("/health").status == 200, 30, "a free slot")
        assert "ACTION=api-overload MAX=1 PEER=127.0.0.1" in fleet.dispatcher.log_text()
    finally:
        process.stop()


def test_tls_api(fleet, session_ca):
    issued = session_ca.issue("localhost")
    cert, key = fleet.base / "api.crt", fleet.base / "api.key"
    cert.write_bytes(issued.cert_pem)
    key.write_bytes(issued.key_pem)
    key.chmod(0o600)
    ca = fleet.layout.ca_cert
    process = apiproc.ApiProcess(
        fleet.dispatcher, api_auth_default="allow", api_cert=str(cert), api_key=str(key)
    ).start()
    try:
        client = process.client(tls_ca=ca)
        assert client.get("/health").status == 200
        assert (
            process.proc.stdout.readline()
            == f"ctrl-exec API listening on 127.0.0.1:{process.port} (TLS)\n"
        )
        # a plain-HTTP client fails its own request, and the server carries on
        plain = apiproc.ApiClient(process.port)
        with pytest.raises((OSError, AssertionError, ValueError)):
            plain.get("/health")
        if shutil.which("curl"):
            code, body = curl(
                "--cacert",
                str(ca),
                "--resolve",
                f"localhost:{process.port}:127.0.0.1",
                f"https://localhost:{process.port}/health",
            )
            assert code == 200 and body["ok"] is True
        response = client.post(
            "/run", {"hosts": ["agent-01"], "script": "echo-args", "args": ["over tls"]}
        )
        assert response.status == 200 and response.json["results"][0]["stdout"] == "over tls\n"
    finally:
        process.stop()


def test_sigterm_lets_requests_in_progress_finish(fleet):
    process = apiproc.ApiProcess(fleet.dispatcher, api_auth_default="allow").start()
    client = process.client()
    gate, running = blocked_run(client, fleet, "agent-01")
    process.proc.send_signal(15)

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", process.port), timeout=5).close()
        except ConnectionRefusedError:
            return True
        except ConnectionResetError:
            pass  # queued while the listener closed: try again
        return False

    agentproc.wait_for(refused, 30, "the listener to close")
    assert process.proc.poll() is None  # still answering the run in progress
    (gate / "go").touch()
    response = running()
    assert response.status == 200 and response.json["results"][0]["stdout"] == "released\n"
    assert process.proc.wait(30) == 0  # exits by itself once the run was answered
    process.stop()
    assert not process.pidfile.exists()
    assert "ACTION=api-stop" in fleet.dispatcher.log_text()


def test_kill_9_mid_request_leaves_no_partial_record(fleet):
    process = apiproc.ApiProcess(fleet.dispatcher, api_auth_default="allow").start()
    client = process.client()
    gate, blocked = blocked_run(client, fleet, "agent-02")
    stop = threading.Event()

    def hammer():
        n = 0
        while not stop.is_set():
            n += 1
            body = {
                "hosts": ["agent-01"],
                "script": "echo-args",
                "args": ["x" * 4096] * 16,
                "async": n % 2 == 0,
            }
            try:
                client.post("/run", body, timeout=10)
            except (OSError, AssertionError, ValueError):
                return  # the server died under us

    workers = [threading.Thread(target=hammer, daemon=True) for _ in range(4)]
    for worker in workers:
        worker.start()
    runs = fleet.layout.runs_dir
    before = len(list(runs.glob("*.json")))
    agentproc.wait_for(
        lambda: len(list(runs.glob("*.json"))) >= before + 6, 60, "records being written"
    )
    process.kill()
    stop.set()
    for worker in workers:
        worker.join(30)
    with pytest.raises((OSError, AssertionError, ValueError)):
        blocked()
    (gate / "go").touch()
    for path in runs.iterdir():
        if path.name.endswith(".json") and not path.name.startswith("."):
            record = json.loads(path.read_text())  # whole, or it would not parse
            assert record["reqid"] == path.name[:-5] and record["mode"] in ("sync", "async")
            assert stat.S_IMODE(path.stat().st_mode) == 0o640
        else:
            assert path.name == ".lock" or (
                path.name.startswith(".") and path.name.endswith(".tmp")
            ), path.name
    # a leftover temp file of the killed writer is removed once it is old
    leftovers = [p for p in runs.iterdir() if p.name.endswith(".tmp")]
    stale = runs / ".feedfacefeedface.json.x.tmp"
    stale.write_text('{"reqid":')
    for path in [*leftovers, stale]:
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    again = apiproc.ApiProcess(fleet.dispatcher, api_auth_default="allow").start()  # purges
    try:
        agentproc.wait_for(
            lambda: not [p for p in runs.iterdir() if p.name.endswith(".tmp")],
            30,
            "the purge at start",
        )
    finally:
        again.stop()


@pytest.mark.parametrize(
    "config,message",
    [
        ({"api_cert": "/nonexistent/api.crt"}, "key 'api_key': must be set too"),
        (
            {"api_cert": "/nonexistent/api.crt", "api_key": "/nonexistent/api.key"},
            "cannot read the API certificate /nonexistent/api.crt",
        ),
        ({"api_port": 0}, "api_port"),
        ({"api_max_children": "many"}, "api_max_children"),
        ({"health_open": 1}, "health_open"),
        ({"cert": "/nonexistent/dispatcher.crt"}, "does not exist"),
    ],
)
def test_configuration_errors_exit_78(fleet, config, message):
    apiproc.write_config(fleet.dispatcher.root, **config)
    try:
        completed = fleet.dispatcher.run("dispatcher", "serve", timeout=60)
    finally:
        fleet.layout.dispatcher_config.unlink()
    assert completed.returncode == 78, completed.stderr
    assert message in completed.stderr and "Traceback" not in completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1


def test_ctrl_exec_api_program_name_serves(fleet, tmp_path):
    """0.12's `ctrl-exec-api` has no modes; under that name the archive serves."""
    (tmp_path / "ctrl-exec-api").symlink_to(fleet.dispatcher.path)
    bad = tmp_path / "api.toml"
    bad.write_text('api_key = "/nonexistent/api.key"\n')
    completed = subprocess.run(
        [str(tmp_path / "ctrl-exec-api"), "--config", str(bad)],
        env=fleet.dispatcher.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 78
    assert completed.stderr == (
        f"ctrl-exec-api: {bad}, key 'api_cert': must be set too: "
        "TLS needs both api_cert and api_key\n"
    )
    version = subprocess.run(
        [str(tmp_path / "ctrl-exec-api"), "--version"],
        env=fleet.dispatcher.env(),
        capture_output=True,
        text=True,
    )
    assert version.returncode == 0 and version.stdout.startswith("ctrl-exec-api ")


def test_empty_registry(ctl, session_ca):
    """No agents yet: discovery answers before any hook, the live document
    has no host or script enums (and stays valid)."""
    testpki.install_dispatcher(session_ca, ctl.root)
    hook = hookscripts.write_hook(ctl.root / "hook", {"ping": 1}, ctl.root / "calls")
    process = apiproc.ApiProcess(ctl, auth_hook=str(hook)).start()
    try:
        client = process.client()
        assert client.get("/discovery").json == {"ok": True, "hosts": {}}
        assert [env["ENVEXEC_ACTION"] for env, _ in hookscripts.calls(ctl.root / "calls")] == [
            "api"
        ]
        live = client.get("/openapi-live.json").json
        validate_openapi(live)
        assert (
            "enum"
            not in live["components"]["schemas"]["RunRequest"]["properties"]["hosts"]["items"]
        )
        assert "enum" not in live["components"]["schemas"]["RunRequest"]["properties"]["script"]
        assert "x-ctrl-exec-scripts" not in live
    finally:
        process.stop()
