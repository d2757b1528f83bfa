"""The execution path end to end, through the pyz as operators run it: a
dispatcher root and two real agents (`agent serve`) under their own
`--root`, on loopback. `ced ping` and `ced run` with every kind of argument,
script failures and refusals, the dispatcher auth hook, the token reaching
the script and no log, and host:script locks."""

from __future__ import annotations

import json
import os
import pwd
import re
from pathlib import Path

import pytest

from tests.support import agentproc, hookscripts, testpki
from tests.support.fleet import running_fleet

TOKEN = "tok-5e1f-never-logged"
NAMES = ("agent-01", "agent-02")

BLOCK = agentproc.BLOCK


@pytest.fixture(scope="module")
def fleet(session_ca, pyz_for, tmp_path_factory):
    base = tmp_path_factory.mktemp("fleet")

    def prepare(site, runner):
        outside = agentproc.write_script(
            runner.root / "elsewhere" / "outside.sh", "#!/bin/sh\necho outside\n"
        )
        site.allowlist["outside"] = str(outside)
        escape = site.scripts_dir / "escape.sh"
        escape.symlink_to(outside)
        site.allowlist["escape"] = str(escape)
        site.write_allowlist()

    scripts = dict(agentproc.APPENDIX_C_SCRIPTS, block=BLOCK)
    with running_fleet(session_ca, pyz_for, base, NAMES, scripts, prepare) as fleet:
        yield fleet


@pytest.fixture(autouse=True)
def default_config(fleet):
    fleet.layout.dispatcher_config.unlink(missing_ok=True)
    yield


def results_of(completed) -> list[dict]:
    document = json.loads(completed.stdout)
    assert document["ok"] == 1
    return document["results"]


# -- ping and run ----------------------------------------------------------------------


def test_ping_two_agents(fleet):
    completed = fleet.ced("--json", "ping", *NAMES)
    assert completed.returncode == 0, completed.stderr
    results = results_of(completed)
    assert [r["host"] for r in results] == list(NAMES)
    for result in results:
        assert result["status"] == "ok" and result["staged"] is False
        assert re.fullmatch(r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4} GMT", result["expiry"])
        assert re.fullmatch(r"\d+ms", result["rtt"]) and result["version"]
    assert len({r["reqid"] for r in results}) == 1
    # the agents call themselves by this machine's name, shown after the registry's
    text = fleet.ced("ping", *NAMES)
    rows = text.stdout.splitlines()[2:]
    assert len(rows) == 2 and all(
        re.match(rf"{name}( \(\S+\))? +ok +\d+ms ", row)
        for name, row in zip(NAMES, rows, strict=True)
    ), text.stdout


ARGS = [
    "plain",
    "two words",
    "",
    "line one\nline two",
    "ünïcødé ✓ 日本",
    "'single' \"double\"",
    "$HOME;echo no-shell",
    "--looks-like-an-option",
    " leading and trailing ",
]


def test_run_on_two_agents_with_awkward_arguments(fleet):
    completed = fleet.ced("--json", "run", *NAMES, "echo-args", "--", *ARGS)
    assert completed.returncode == 0, completed.stderr
    results = results_of(completed)
    expected = "".join(arg + "\n" for arg in ARGS)
    for name, result in zip(NAMES, results, strict=True):
        assert result == {
            "script": "echo-args",
            "exit": 0,
            "stdout": expected,
            "stderr": "",
            "reqid": results[0]["reqid"],
            "host": name,
            "rtt": result["rtt"],
        }
    reqid = results[0]["reqid"]
    assert re.fullmatch(r"[0-9a-f]{16}", reqid)
    # one REQID in the dispatcher's lines and in each agent's run line
    assert (
        f"ACTION=dispatch HOSTS={','.join(NAMES)} MODE=sync REQID={reqid}"
        in fleet.dispatcher.log_text()
    )
    for name in NAMES:
        assert re.search(rf"ACTION=run .*REQID={reqid}", fleet.agent_log(name))


def test_run_text_output(fleet):
    completed = fleet.ced("run", "agent-01", "echo-args", "--", "hello", "two words")
    assert completed.returncode == 0, completed.stderr
    assert re.fullmatch(
        r"==> agent-01  \[OK  exit:0  \d+ms  req:[0-9a-f]{16}\]\nhello\ntwo words\n",
        completed.stdout,
    )


def test_script_failure(fleet):
    completed = fleet.ced("run", "agent-01", "agent-02", "fail", "--", "5")
    assert completed.returncode == 1
    blocks = completed.stdout.split("==> ")[1:]
    for name, block in zip(NAMES, blocks, strict=True):
        assert re.fullmatch(
            rf"{name}  \[FAIL  exit:5  \d+ms  req:[0-9a-f]{{16}}\]\n"
            r"about to fail\n    STDERR: something went wrong\n",
            block,
        )


@pytest.mark.parametrize("script", ["nosuch", "outside", "escape"])
def test_refused_scripts(fleet, script):
    completed = fleet.ced("--json", "run", "agent-01", script)
    assert completed.returncode == 1
    [result] = json.loads(completed.stdout)["results"]
    assert result["exit"] == -1 and result["error"] == "script not permitted"
    assert result["host"] == "agent-01" and re.fullmatch(r"[0-9a-f]{16}", result["reqid"])
    assert "outside\n" not in completed.stdout


def test_token_reaches_the_script_and_no_log(fleet):
    completed = fleet.ced(
        "--json",
        "run",
        "agent-02",
        "show-context",
        "--username",
        "alice",
        "--",
        "a b",
        "",
        env={"ENVEXEC_TOKEN": TOKEN},
    )
    assert completed.returncode == 0, completed.stderr
    [result] = results_of(completed)
    context = json.loads(result["stdout"])
    assert context["token"] == TOKEN and context["username"] == "alice"
    assert context["args"] == ["a b", ""] and context["reqid"] == result["reqid"]
    assert context["script"] == "show-context" and context["dispatcher"] == "test-dispatcher"
    assert context["peer_ip"] == "127.0.0.1"
    again = fleet.ced("run", "agent-01", "show-context", "--token", TOKEN)
    assert json.loads(again.stdout.split("\n", 1)[1])["token"] == TOKEN
    assert TOKEN not in fleet.all_logs()


def test_untrusted_dispatcher_is_refused(fleet, session_ca, ctl):
    """A dispatcher certified by the same CA but not in the agents' trusted
    map gets 0.12's 403 body, reported as 0.12's error string."""
    issued = testpki.install_dispatcher(session_ca, ctl.root)
    site = fleet.agents["agent-01"][1].site
    testpki.register_agent(ctl.root, "agent-01", site.port, site.issued, issued)
    completed = ctl.run("ced", "--json", "run", "agent-01", "echo-args")
    assert completed.returncode == 1
    [result] = json.loads(completed.stdout)["results"]
    assert result["error"] == "forbidden: serial mismatch" and result["exit"] == -1
    ping = ctl.run("ced", "--json", "ping", "agent-01")
    assert json.loads(ping.stdout)["results"][0]["error"] == "forbidden: serial mismatch"
    assert ping.returncode == 1


# -- the dispatcher auth hook ------------------------------------------------------------


def test_hook_allows_and_sees_the_0_12_contract(fleet, tmp_path):
    record = tmp_path / "calls"
    fleet.configure(auth_hook=str(hookscripts.write_hook(tmp_path / "hook", 0, record)))
    port = fleet.agents["agent-01"][1].site.port
    args = ["x y", "", "a\nb"]
    completed = fleet.ced(
        "run",
        f"agent-01:{port}",
        "agent-02",
        "show-context",
        "--",
        *args,
        env={"ENVEXEC_TOKEN": TOKEN, "USER": "carol"},
    )
    assert completed.returncode == 0, completed.stderr
    ping = fleet.ced("ping", "agent-02", "--token", TOKEN, "--username", "dave")
    assert ping.returncode == 0
    (env, stdin), (ping_env, ping_stdin) = hookscripts.calls(record)
    assert env["ENVEXEC_ACTION"] == "run" and env["ENVEXEC_SCRIPT"] == "show-context"
    assert env["ENVEXEC_HOSTS"] == f"agent-01:{port},agent-02"  # as the operator wrote them
    assert env["ENVEXEC_ARGS"] == "x y  a\nb" and json.loads(env["ENVEXEC_ARGS_JSON"]) == args
    assert env["ENVEXEC_TOKEN"] == TOKEN and env["ENVEXEC_USERNAME"] == "carol"
    assert env["ENVEXEC_SOURCE_IP"] == "127.0.0.1" and env["ENVEXEC_DISPATCHER"] == ""
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", env["ENVEXEC_TIMESTAMP"])
    assert set(stdin) == {
        "action",
        "script",
        "hosts",
        "args",
        "username",
        "token",
        "source_ip",
        "dispatcher",
        "dispatcher_serial",
        "reqid",
        "submitter",
        "timestamp",
    }
    assert stdin["hosts"] == [f"agent-01:{port}", "agent-02"] and stdin["args"] == args
    assert ping_env["ENVEXEC_ACTION"] == "ping" and ping_env["ENVEXEC_SCRIPT"] == ""
    assert ping_env["ENVEXEC_TOKEN"] == TOKEN and ping_env["ENVEXEC_USERNAME"] == "dave"
    assert ping_stdin["hosts"] == ["agent-02"] and ping_stdin["args"] == []
    # the token went on to both agents and their scripts
    contexts = [json.loads(block.split("\n", 1)[1]) for block in completed.stdout.split("==> ")[1:]]
    assert [context["token"] for context in contexts] == [TOKEN, TOKEN]
    assert (
        "ACTION=auth AUTHACTION=run IP=127.0.0.1 RESULT=pass USER=carol"
        in fleet.dispatcher.log_text()
    )
    assert TOKEN not in fleet.all_logs()


@pytest.mark.parametrize(
    "behaviour, reason, code",
    [
        (1, "denied", 1),
        (2, "bad credentials", 2),
        (3, "insufficient privilege", 3),
        (9, "hook exited 9", 9),
        ("hang", "denied", 1),
        ("crash", "denied", 1),
        ("missing", "auth hook not found or not executable: {hook}", 1),
    ],
)
def test_hook_denies(fleet, tmp_path, behaviour, reason, code):
    hook = tmp_path / "hook"
    if behaviour != "missing":
        hookscripts.write_hook(hook, behaviour)
    fleet.configure(auth_hook=str(hook), auth_hook_timeout=1)
    reason = reason.format(hook=hook)
    before = {name: fleet.agent_log(name).count("ACTION=run ") for name in NAMES}
    text = fleet.ced("run", *NAMES, "echo-args", env={"ENVEXEC_TOKEN": TOKEN})
    assert (text.returncode, text.stdout) == (1, "")
    denied, hint = text.stderr.splitlines()  # 0.12's line, then what to do
    assert denied == f"Denied: {reason}"
    if behaviour == "missing":
        assert hint == "Fix auth_hook in ctrl-exec.toml: it must name an executable file."
    else:
        assert f"auth_hook in ctrl-exec.toml) refused it with exit {code}" in hint
        assert "--token (default $ENVEXEC_TOKEN)" in hint
    as_json = fleet.ced("--json", "ping", *NAMES, env={"ENVEXEC_TOKEN": TOKEN})
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout) == {"ok": 0, "error": reason, "code": code}
    # nothing reached the agents
    assert {name: fleet.agent_log(name).count("ACTION=run ") for name in NAMES} == before
    assert TOKEN not in fleet.all_logs()


def test_hook_timeout_ends_what_the_hook_left_in_another_session(fleet, tmp_path):
    # `ced` kills a timed-out hook with everything it started, even a child
    # that left the hook's session with setsid (issue 12, item 5).
    hook = tmp_path / "hook"
    hook.write_text(
        "#!/bin/sh\n"
        f"setsid sh -c 'echo $$ > {tmp_path}/c.tmp && mv {tmp_path}/c.tmp {tmp_path}/child.pid;"
        " exec sleep 300' </dev/null >/dev/null 2>&1 &\n"
        f"while [ ! -e {tmp_path}/child.pid ]; do sleep 0.01; done\n"
        "while :; do sleep 1; done\n"
    )
    hook.chmod(0o755)
    fleet.configure(auth_hook=str(hook), auth_hook_timeout=3)
    text = fleet.ced("run", "agent-01", "echo-args")
    child = int((tmp_path / "child.pid").read_text())
    try:
        assert (text.returncode, text.stderr.splitlines()[0]) == (1, "Denied: denied")

        def gone() -> bool:
            try:
                stat = Path(f"/proc/{child}/stat").read_text()
            except FileNotFoundError:
                return True
            return stat[stat.rfind(")") + 2] in "ZX"

        agentproc.wait_for(gone, 10, f"the hook's setsid child {child} to be killed")
    finally:
        try:
            os.kill(child, 9)
        except OSError:
            pass


# -- locks --------------------------------------------------------------------------------


def test_lock_conflict_while_a_run_is_in_progress(fleet, tmp_path):
    gate = tmp_path / "gate"
    gate.mkdir()
    gate.chmod(0o777)  # the script runs as the agent's user
    first = fleet.dispatcher.popen("ced", "run", "agent-01", "block", "--", str(gate))
    try:
        agentproc.wait_for(
            lambda: (gate / "started").exists() or first.poll() is not None,
            30,
            "the first run to start",
        )
        assert first.poll() is None, first.communicate()
        second = fleet.ced("run", "agent-01", "block", "--", str(gate))
        locked, hint = second.stderr.splitlines()  # 0.12's line, then what to do
        assert (second.returncode, locked) == (1, "Locked: already running: agent-01:block")
        assert "list-locks' shows it; wait for it to end, or stop it with '" in hint
        assert hint.endswith(" cancel REQID'.")
        as_json = fleet.ced("--json", "run", "agent-02", "agent-01", "block", "--", str(gate))
        assert json.loads(as_json.stdout) == {
            "ok": 0,
            "error": "locked",
            "code": 4,
            "conflicts": ["agent-01:block"],
        }
        text = fleet.ced("list-locks").stdout.splitlines()
        assert text[0].split() == ["HOST", "SCRIPT", "STATE", "PID", "USER", "SINCE", "REQID"]
        row = text[2].split()
        assert row[:4] == ["agent-01", "block", "held", str(first.pid)]
        listed = json.loads(fleet.ced("--json", "list-locks").stdout)
        [lock] = listed["locks"]
        assert listed["ok"] == 1 and lock == {
            "host": "agent-01",
            "script": "block",
            "state": "held",
            "pid": first.pid,
            "user": pwd.getpwuid(os.getuid()).pw_name,
            "caller": "cli",
            "username": lock["username"],
            "since": lock["since"],
            "reqid": row[6],
        }
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", lock["since"])
        # another script on the same agent, and the same script elsewhere, are free
        other = fleet.ced("run", "agent-01", "echo-args", "--", "free")
        assert other.returncode == 0 and "free" in other.stdout
    finally:
        (gate / "go").touch()
        stdout, stderr = first.communicate(timeout=60)
    assert first.returncode == 0, stderr
    assert "released" in stdout
    assert fleet.ced("list-locks").stdout == "No locks currently held.\n"
    assert "ACTION=lock-conflict CONFLICTS=agent-01:block" in fleet.dispatcher.log_text()
    after = fleet.ced("run", "agent-01", "block", "--", str(gate))
    assert after.returncode == 0
