"""`agent serve` through the pyz, driven by a dispatcher-side mTLS client:
execution, the allowlist and script_dirs, the agent auth hook, trust and
revocation, SIGHUP reload, and concurrency."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support import testpki
from tests.support.agentproc import (
    AgentProcess,
    DispatcherClient,
    install_site,
    wait_for,
    write_script,
)

TOKEN = "t0k-Secret-4f9a"
ARGV_JSON = f"#!{sys.executable}\nimport json, sys\nsys.stdout.write(json.dumps(sys.argv[1:]))\n"


def hook_text(kind: str, record: str) -> str:
    """Auth hooks as real executables. `record` receives what the hook saw."""
    recorder = (
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"data = {{'env': {{k: v for k, v in os.environ.items() if k.startswith('ENVEXEC_')}},"
        f" 'stdin': sys.stdin.read(), 'pid': os.getpid()}}\n"
        f"open({record!r}, 'w').write(json.dumps(data))\n"
    )
    if kind == "allow":
        return recorder + "sys.exit(0)\n"
    if kind.startswith("exit-"):
        return recorder + f"sys.exit({int(kind[5:])})\n"
    if kind == "timeout":
        return recorder + "import time\ntime.sleep(60)\n"
    if kind == "crash":
        return recorder + "import signal\nos.kill(os.getpid(), signal.SIGKILL)\n"
    raise ValueError(kind)


@pytest.fixture(scope="module")
def env(tmp_path_factory, session_ca, pyz_for):
    base = tmp_path_factory.mktemp("agent-serve")
    dispatcher = testpki.install_dispatcher(session_ca, base / "dispatcher")
    hooks = base / "agent" / "hooks"
    hooks.mkdir(parents=True)
    site = install_site(
        session_ca,
        base / "agent",
        dispatcher,
        settings={
            "auth_hook": str(hooks / "auth-hook"),
            "auth_hook_timeout": 1,
            "max_output_bytes": 4096,
        },
    )
    write_script(hooks / "auth-hook", hook_text("allow", str(hooks / "record.json")))
    gate = site.scripts_dir / "release"
    site.add_script("argv-json", ARGV_JSON)
    site.add_script(
        "wait-gate", f"#!/bin/sh\nwhile [ ! -e {gate} ]; do sleep 0.02; done\necho released\n"
    )
    site.add_script("kill-self", "#!/bin/sh\necho before\nkill -9 $$\n")
    site.add_script("chatty", "#!/bin/sh\nhead -c 10000 /dev/zero | tr '\\0' x\n")
    site.add_script("slow", "#!/bin/sh\necho start\nsleep 60\n", timeout=1)
    site.allowlist["missing"] = str(site.scripts_dir / "missing.sh")
    write_script(site.scripts_dir / "noexec.sh", "#!/bin/sh\necho no\n", 0o644)
    site.allowlist["noexec"] = str(site.scripts_dir / "noexec.sh")
    outside = write_script(
        base / "elsewhere" / "evil.sh", f"#!/bin/sh\ntouch {base / 'elsewhere' / 'ran'}\n"
    )
    site.allowlist["outside"] = str(outside)
    (site.scripts_dir / "escape.sh").symlink_to(outside)
    site.allowlist["escape"] = str(site.scripts_dir / "escape.sh")
    (site.scripts_dir / "echo-args.sh.schema.json").write_text(
        json.dumps({"version": "1.0", "read_only": True, "description": "echo"})
    )
    (site.scripts_dir / "fail.sh.schema.json").write_text("[not an object]")
    site.write_allowlist()
    ctl = pyz_for(base / "agent")
    agent = AgentProcess(ctl, site).start()
    state = {
        "site": site,
        "agent": agent,
        "ctl": ctl,
        "base": base,
        "hooks": hooks,
        "gate": gate,
        "dispatcher": dispatcher,
        "client": DispatcherClient.for_dispatcher(base / "dispatcher"),
    }
    yield state
    assert agent.stop() == 0
    log = ctl.log_text()
    assert "ACTION=connection-error" not in log
    assert TOKEN not in log, "a token reached the log"


@pytest.fixture
def hook(env):
    """Set the auth hook to one behaviour; back to `allow` afterwards."""
    path = env["hooks"] / "auth-hook"
    record = env["hooks"] / "record.json"

    def set_hook(kind: str):
        record.unlink(missing_ok=True)
        tmp = path.with_suffix(".new")
        write_script(tmp, hook_text(kind, str(record)))
        os.replace(tmp, path)
        return record

    yield set_hook
    set_hook("allow")


def run(env, script, args=None, **fields):
    return env["client"].run(env["site"].port, script, args, **fields)


def log_lines(env, action: str) -> list[str]:
    return [line for line in env["ctl"].log_text().splitlines() if f"ACTION={action} " in line]


# --- execution -------------------------------------------------------------


def test_args_with_spaces_newlines_unicode_and_empty_strings(env):
    args = [
        "two words",
        "",
        "line1\nline2",
        "caf\u00e9 \u4e2d\u6587 \U0001f600",
        "  ",
        "$HOME",
        "'quoted\"",
        "--opt=a b",
        "*",
    ]
    result = run(env, "argv-json", args, reqid="args-1")
    assert result["exit"] == 0, result
    assert json.loads(result["stdout"]) == args
    assert set(result) == {"script", "exit", "stdout", "stderr", "reqid"}


def test_script_failure_is_reported_not_an_error(env):
    result = run(env, "fail", ["7"], reqid="f7")
    assert result == {
        "script": "fail",
        "exit": 7,
        "stdout": "about to fail\n",
        "stderr": "something went wrong\n",
        "reqid": "f7",
    }


@pytest.mark.parametrize("script", ["nosuch", "outside", "escape", "../fail", "fail;id", ""])
def test_not_permitted(env, script):
    result = run(env, script, reqid="np")
    assert result == {"script": script, "exit": -1, "error": "script not permitted", "reqid": "np"}


def test_deny_is_logged_without_dispatcher_or_reason(env):
    run(env, "outside", reqid="deny-log-1")
    assert any(
        line.endswith("ACTION=deny PEER=127.0.0.1 REQID=deny-log-1 SCRIPT=outside")
        for line in env["ctl"].log_text().splitlines()
    )


def test_scripts_outside_script_dirs_never_run(env):
    for script in ("escape", "outside"):
        assert run(env, script)["exit"] == -1
    assert not (env["base"] / "elsewhere" / "ran").exists()
    assert run(env, "missing")["exit"] == 127  # inside script_dirs but absent: exec fails


@pytest.mark.parametrize(
    "script, exit_code", [("missing", 127), ("noexec", 127), ("kill-self", 126)]
)
def test_exit_codes(env, script, exit_code):
    result = run(env, script)
    assert result["exit"] == exit_code


def test_script_timeout_kills_and_says_so(env):
    result = run(env, "slow", reqid="slow-1")
    assert result["exit"] == 126 and result["stdout"] == "start\n"
    assert "script timed out after 1 s" in result["stderr"]
    assert any("REQID=slow-1" in line and "TIMEOUT=1" in line for line in log_lines(env, "run"))


def test_output_cap(env):
    result = run(env, "chatty", reqid="cap")
    assert result["stdout"] == "x" * 4096
    assert "stdout truncated: 5904 bytes beyond the 4096-byte limit" in result["stderr"]


def test_token_reaches_the_script_and_never_the_log(env, hook):
    result = run(env, "show-context", ["a"], username="alice", token=TOKEN, reqid="tok-1")
    context = json.loads(result["stdout"])
    assert context["token"] == TOKEN and context["username"] == "alice"
    assert context["dispatcher"] == "test-dispatcher"
    assert TOKEN not in env["ctl"].log_text()


# --- schema sidecars -----------------------------------------------------------


def test_capabilities_carry_valid_sidecars_only(env):
    response = env["client"].request(env["site"].port, "GET", "/capabilities")
    scripts = {entry["name"]: entry for entry in response.json()["scripts"]}
    assert scripts["echo-args"]["schema"] == {
        "version": "1.0",
        "read_only": True,
        "description": "echo",
    }
    assert scripts["echo-args"]["schema_version"] == "1.0"
    assert "schema" not in scripts["fail"]
    assert scripts["noexec"]["executable"] is False and scripts["missing"]["executable"] is False
    assert any("SCRIPT=fail" in line for line in log_lines(env, "schema-skip"))


# --- agent auth hook -------------------------------------------------------------


def test_hook_gets_0_12_environment_and_stdin(env, hook):
    record = hook("allow")
    result = run(env, "echo-args", ["a b", "c"], username="alice", token=TOKEN, reqid="h1")
    assert result["exit"] == 0
    seen = json.loads(record.read_text())
    serial = format(env["dispatcher"].serial, "x")
    serial = "0" * (len(serial) % 2) + serial
    assert {k: v for k, v in seen["env"].items() if k != "ENVEXEC_TIMESTAMP"} == {
        "ENVEXEC_ACTION": "run",
        "ENVEXEC_SCRIPT": "echo-args",
        "ENVEXEC_HOSTS": "",
        "ENVEXEC_ARGS": "a b c",
        "ENVEXEC_ARGS_JSON": '["a b","c"]',
        "ENVEXEC_USERNAME": "alice",
        "ENVEXEC_TOKEN": TOKEN,
        "ENVEXEC_SOURCE_IP": "127.0.0.1",
        "ENVEXEC_DISPATCHER": "test-dispatcher",
        "ENVEXEC_DISPATCHER_SERIAL": serial,
        "ENVEXEC_REQID": "",
        "ENVEXEC_SUBMITTER": "",
        "ENVEXEC_SUBMITTER_IP": "",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", seen["env"]["ENVEXEC_TIMESTAMP"])
    stdin = json.loads(seen["stdin"])
    assert stdin == {
        "action": "run",
        "script": "echo-args",
        "hosts": [],
        "args": ["a b", "c"],
        "username": "alice",
        "token": TOKEN,
        "source_ip": "127.0.0.1",
        "dispatcher": "test-dispatcher",
        "dispatcher_serial": serial,
        "reqid": "",
        "submitter": None,
        "timestamp": seen["env"]["ENVEXEC_TIMESTAMP"],
    }


def test_hook_is_not_called_for_scripts_outside_the_allowlist(env, hook):
    record = hook("allow")
    run(env, "nosuch")
    assert not record.exists()


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("exit-1", "denied"),
        ("exit-2", "bad credentials"),
        ("exit-3", "insufficient privilege"),
        ("exit-9", "hook exited 9"),
        ("crash", "denied"),
        ("timeout", "denied"),
    ],
)
def test_hook_denials(env, hook, kind, reason):
    record = hook(kind)
    reqid = f"deny-{kind}"
    result = run(env, "echo-args", ["x"], reqid=reqid)
    assert result == {
        "script": "echo-args",
        "exit": -1,
        "error": f"not authorised: {reason}",
        "reqid": reqid,
    }
    assert any(
        f'REASON="{reason}"' in line or f"REASON={reason}" in line
        for line in log_lines(env, "deny")
        if f"REQID={reqid}" in line
    )
    if kind == "timeout":
        assert log_lines(env, "auth-hook-timeout")
        pid = json.loads(
            wait_for(lambda: record.exists() and record.read_text(), what="hook record")
        )["pid"]
        wait_for(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), what="hook killed")


def _zombie(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(") ", 1)[1].startswith(("Z", "X"))
    except OSError:
        return True


@pytest.mark.parametrize("how", ["missing", "not-executable"])
def test_hook_missing_or_not_executable_denies(env, hook, how):
    path = env["hooks"] / "auth-hook"
    if how == "missing":
        path.unlink()
    else:
        os.chmod(path, 0o644)
    result = run(env, "echo-args", reqid="nohook")
    assert result["exit"] == -1
    assert result["error"] == f"not authorised: auth hook not found or not executable: {path}"


def test_capabilities_hook_is_discovery(env, hook):
    record = hook("allow")
    response = env["client"].request(env["site"].port, "GET", "/capabilities")
    assert response.status == 200
    seen = json.loads(record.read_text())
    assert seen["env"]["ENVEXEC_ACTION"] == "discovery" and seen["env"]["ENVEXEC_SCRIPT"] == ""
    assert json.loads(seen["stdin"])["args"] == []
    hook("exit-1")
    response = env["client"].request(env["site"].port, "GET", "/capabilities")
    assert (response.status, response.json()) == (403, {"error": "not authorised"})


def test_ping_never_calls_the_hook(env, hook):
    record = hook("exit-1")
    response = env["client"].request(env["site"].port, "POST", "/ping", {"reqid": "p"})
    assert response.status == 200 and not record.exists()


# --- trust ---------------------------------------------------------------------------


def test_untrusted_dispatcher_gets_the_0_12_refusals(env, session_ca):
    stranger_root = env["base"] / "stranger"
    stranger = testpki.install_dispatcher(session_ca, stranger_root)
    client = DispatcherClient.for_dispatcher(stranger_root)
    port = env["site"].port
    for method, path in (
        ("POST", "/run"),
        ("POST", "/ping"),
        ("GET", "/result/abc"),
        ("POST", "/rotate-serial"),
    ):
        response = client.request(
            port, method, path, {"script": "echo-args"} if method == "POST" else None
        )
        assert (response.status, response.json()) == (
            403,
            {"error": "serial mismatch", "status": "forbidden"},
        ), path
    response = client.request(port, "GET", "/capabilities")
    assert (response.status, response.json()) == (403, {"error": "forbidden"})
    assert client.request(port, "GET", "/nope").status == 404
    hexed = format(stranger.serial, "x")
    hexed = "0" * (len(hexed) % 2) + hexed
    rejects = log_lines(env, "serial-reject")
    assert any(f"PEER_SERIAL={hexed} REQID=(none)" in line for line in rejects)
    assert any(f"PEER_SERIAL={hexed} REQID=abc" in line for line in rejects)
    assert any(
        f"PEER_SERIAL={hexed}" in line and "REASON=serial-mismatch" in line
        for line in log_lines(env, "capabilities-deny")
    )


def test_revoked_dispatcher_is_refused_at_once(env):
    """The revocation list is re-read when it changes: no SIGHUP needed."""
    serial = env["dispatcher"].serial
    colon = ":".join(f"{b:02X}" for b in serial.to_bytes((serial.bit_length() + 7) // 8, "big"))
    revoked = env["site"].layout.revoked_serials
    port = env["site"].port
    revoked.write_text(f"# revoked by the operator\n{colon}\n")
    try:
        for method, path in (("POST", "/ping"), ("POST", "/run"), ("GET", "/capabilities")):
            response = env["client"].request(port, method, path, {} if method == "POST" else None)
            assert (response.status, response.json()) == (403, {"error": "certificate revoked"})
        assert log_lines(env, "revoked-cert")
    finally:
        revoked.unlink()
    assert env["client"].request(port, "POST", "/ping", {}).status == 200


def test_empty_trust_map_fails_closed(env):
    trusted = env["site"].layout.trusted_dispatchers
    saved = trusted.read_text()
    trusted.write_text("# nothing trusted\n")
    try:
        response = env["client"].request(env["site"].port, "GET", "/capabilities")
        assert (response.status, response.json()) == (403, {"error": "forbidden"})
        assert any(
            'REASON="no trusted dispatchers stored"' in line
            for line in log_lines(env, "capabilities-deny")
        )
    finally:
        tmp = trusted.with_suffix(".new")
        tmp.write_text(saved)
        os.replace(tmp, trusted)
    assert env["client"].request(env["site"].port, "GET", "/capabilities").status == 200


# --- reload and concurrency ---------------------------------------------------------


def test_sighup_reloads_the_allowlist_and_keeps_it_when_broken(env):
    site = env["site"]
    site.add_script("late", "#!/bin/sh\necho late\n")
    site.write_allowlist()
    assert run(env, "late")["error"] == "script not permitted"  # not before the reload
    reloads = len(log_lines(env, "reload"))
    env["agent"].signal(signal.SIGHUP)
    wait_for(lambda: len(log_lines(env, "reload")) > reloads, what="reload")
    assert run(env, "late")["stdout"] == "late\n"
    good = site.layout.allowlist.read_text()
    site.layout.allowlist.write_text(good + "bad name = 1\n")
    try:
        failures = len(log_lines(env, "reload-fail"))
        env["agent"].signal(signal.SIGHUP)
        wait_for(lambda: len(log_lines(env, "reload-fail")) > failures, what="reload-fail")
        assert run(env, "late")["stdout"] == "late\n"
    finally:
        site.layout.allowlist.write_text(good)


def test_a_slow_script_blocks_nobody(env):
    env["gate"].unlink(missing_ok=True)
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(run, env, "wait-gate", reqid="gated")
        wait_for(lambda: _running(env, "wait-gate"), seconds=60, what="gated script running")
        for _ in range(3):
            assert env["client"].request(env["site"].port, "POST", "/ping", {}).status == 200
        assert run(env, "echo-args", ["meanwhile"])["stdout"] == "meanwhile\n"
        assert not slow.done()
        env["gate"].touch()
        assert slow.result(30)["stdout"] == "released\n"


def _running(env, script: str) -> bool:
    wanted = str(env["site"].scripts_dir / f"{script}.sh")
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if wanted.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return True
            except OSError:
                pass
    return False


def test_concurrent_runs_all_complete(env):
    def one(i: int) -> dict:
        return run(env, "echo-args", [f"n{i}"], reqid=f"c{i}")

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(32)))
    assert [r["stdout"] for r in results] == [f"n{i}\n" for i in range(32)]
    assert all(r["reqid"] == f"c{i}" for i, r in enumerate(results))
