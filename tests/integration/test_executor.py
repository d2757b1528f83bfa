"""The privileged executor with a real agent, as root: every run (sync and
async) goes through `executor serve`, and each profile is checked from
inside the script (ids from `id`, capability sets and NoNewPrivs from
/proc/self/status, writes attempted for real).

The agent's user is a user made for the test; the agent process itself runs
as root (root may use the socket too). Profiles and scripts are defined once
for the module: the executor re-reads them at every request."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support import testpki
from tests.support.agentproc import AgentProcess, DispatcherClient, install_site, wait_for
from tests.support.executorproc import (
    ExecutorProcess,
    require_root,
    run_as,
    shared_root,
    temporary_user,
)

AGENT_USER = f"ce-exec-{os.getpid()}"  # unique: suites may run side by side

IDENT = "#!/bin/sh\nid -u\nid -g\nid -G\ngrep -E '^(Cap|NoNewPrivs)' /proc/self/status\n"
WRITES = (
    "#!/bin/sh\n"
    'for p in "$@"; do\n'
    '  if ( : > "$p/probe" ) 2>/dev/null; then echo "ok $p"; else echo "fail $p"; fi\n'
    "done\n"
)
# Writes a line, records its pid in $1, waits for $1/go, writes another.
TWO_LINES = (
    '#!/bin/sh\necho first\necho $$ > "$1/pid"\n'
    'while [ ! -e "$1/go" ]; do sleep 0.02; done\necho second\n'
)
# Marks its start in $1, waits for $1/go, then answers.
GATED = (
    '#!/bin/sh\n: > "$1/started-$2"\nwhile [ ! -e "$1/go" ]; do sleep 0.02; done\necho "done $2"\n'
)


def _parse_ident(stdout: str) -> dict:
    lines = stdout.splitlines()
    facts = {
        "uid": int(lines[0]),
        "gid": int(lines[1]),
        "groups": sorted(map(int, lines[2].split())),
    }
    for line in lines[3:]:
        key, value = line.split(":", 1)
        facts[key] = value.strip()
    return facts


@pytest.fixture(scope="module")
def site(session_ca, pyz_for, tmp_path_factory):
    require_root()
    with temporary_user(AGENT_USER) as agent_user, shared_root("ce-exec-") as base:
        dispatcher_root = tmp_path_factory.mktemp("exec-dispatcher")
        dispatcher = testpki.install_dispatcher(session_ca, dispatcher_root)
        ctl = pyz_for(base / "agent")
        agent = install_site(session_ca, ctl.root, dispatcher, scripts={})
        sock = ctl.root / "run" / "exec.sock"
        srv = ctl.root / "srv" / "x"
        srv.mkdir(parents=True)
        gates = ctl.root / "gates"
        gates.mkdir()
        for name, text, profile in (
            ("ident-default", IDENT, "default"),
            ("ident-nobody", IDENT, "nobody"),
            ("ident-caps", IDENT, "chown"),
            ("ident-root", IDENT, "root"),
            ("ident-nnp-off", IDENT, "nnp-off"),
            ("writes-confined", WRITES, "writer"),
            ("writes-root", WRITES, "root"),
            ("gated", GATED, "root"),
            ("two-lines", TWO_LINES, "nobody"),
        ):
            agent.add_script(name, text, profile=profile)
        agent.settings["executor_socket"] = str(sock)
        agent.write_config()
        config = agent.layout.agent_config
        config.write_text(
            config.read_text()
            + '\n[profile.nobody]\nrun_as = "nobody"\n'
            + '\n[profile.chown]\nrun_as = "nobody"\ncaps = ["CAP_CHOWN"]\n'
            + '\n[profile.root]\nrun_as = "root"\n'
            + '\n[profile.nnp-off]\nrun_as = "nobody"\nno_new_privileges = false\n'
            + f'\n[profile.writer]\nrun_as = "root"\nwritable = ["{srv}"]\n'
        )
        agent.write_allowlist()
        executor = ExecutorProcess(ctl, sock, AGENT_USER).start()
        process = AgentProcess(ctl, agent).start()
        try:
            yield {
                "ctl": ctl,
                "agent": agent,
                "process": process,
                "executor": executor,
                "client": DispatcherClient.for_dispatcher(dispatcher_root),
                "socket": sock,
                "srv": srv,
                "gates": gates,
                "agent_user": agent_user,
            }
        finally:
            process.stop()
            executor.stop()


def _run(site, script, args=(), **fields):
    return site["client"].run(site["agent"].port, script, list(args), **fields)


def test_socket_belongs_to_the_agent_user_and_is_private(site):
    info = os.stat(site["socket"])
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == site["agent_user"].pw_uid


def test_run_as_nobody_has_nobodys_ids_and_groups(site):
    reply = _run(site, "ident-nobody")
    assert reply["exit"] == 0, reply
    facts = _parse_ident(reply["stdout"])
    assert (facts["uid"], facts["gid"]) == (65534, 65534)
    assert facts["groups"] == sorted(set(os.getgrouplist("nobody", 65534)))
    assert facts["CapEff"] == facts["CapPrm"] == facts["CapBnd"] == "0000000000000000"
    assert facts["NoNewPrivs"] == "1"
    assert "ACTION=exec-run" in site["ctl"].log_text()


def test_no_run_as_means_the_agent_user(site):
    facts = _parse_ident(_run(site, "ident-default")["stdout"])
    assert facts["uid"] == site["agent_user"].pw_uid
    assert facts["gid"] == site["agent_user"].pw_gid


def test_caps_hold_exactly_the_listed_capability_in_every_set(site):
    reply = _run(site, "ident-caps")
    assert reply["exit"] == 0, reply
    facts = _parse_ident(reply["stdout"])
    assert facts["uid"] == 65534
    for key in ("CapBnd", "CapPrm", "CapEff", "CapAmb", "CapInh"):
        assert facts[key] == "0000000000000001", (key, facts)


def test_root_run_as_gets_no_capabilities_it_did_not_ask_for(site):
    facts = _parse_ident(_run(site, "ident-root")["stdout"])
    assert facts["uid"] == 0
    assert facts["CapEff"] == facts["CapBnd"] == "0000000000000000"


def test_no_new_privileges_on_by_default_and_off_when_asked(site):
    assert _parse_ident(_run(site, "ident-nobody")["stdout"])["NoNewPrivs"] == "1"
    assert _parse_ident(_run(site, "ident-nnp-off")["stdout"])["NoNewPrivs"] == "0"


def test_writable_opens_only_the_listed_path(site):
    layout = site["agent"].layout
    probes = [
        site["srv"],
        layout.agent_etc,
        layout.agent_state,
        Path("/var/tmp"),
        site["gates"],
        Path("/tmp"),
    ]
    reply = _run(site, "writes-confined", [str(p) for p in probes])
    assert reply["exit"] == 0, reply
    assert reply["stdout"].splitlines() == [
        f"ok {site['srv']}",
        f"fail {layout.agent_etc}",
        f"fail {layout.agent_state}",
        "fail /var/tmp",
        f"fail {site['gates']}",
        "ok /tmp",  # a private /tmp
    ]
    assert (site["srv"] / "probe").exists()
    assert not Path("/tmp/probe").exists()
    assert not (site["gates"] / "probe").exists()


def test_agent_directories_are_read_only_even_to_root(site):
    layout = site["agent"].layout
    probes = [layout.agent_etc, layout.agent_state, site["gates"]]
    reply = _run(site, "writes-root", [str(p) for p in probes])
    assert reply["stdout"].splitlines() == [
        f"fail {layout.agent_etc}",
        f"fail {layout.agent_state}",
        f"ok {site['gates']}",
    ]
    assert not (layout.agent_etc / "probe").exists()


def test_async_run_goes_through_the_executor_with_its_profile(site):
    client, port = site["client"], site["agent"].port
    body = {"script": "ident-caps", "args": [], "reqid": "exec-async-1", "async": True}
    accepted = client.request(port, "POST", "/run", body)
    assert accepted.status == 202, accepted.body

    def done():
        record = client.request(port, "GET", "/result/exec-async-1").json()
        return record if record.get("status") == "done" else None

    record = wait_for(done, 60, "async result")
    assert record["exit"] == 0, record
    facts = _parse_ident(record["stdout"])
    assert facts["uid"] == 65534 and facts["CapAmb"] == "0000000000000001"


PEER_CODE = r"""
import json, socket, struct, sys
out = {}
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    out["connect"] = exc.strerror
else:
    out["connect"] = "ok"
    fields = [b"r1", b"d", b"ident-root", b"", ]
    body = b"".join(struct.pack(">I", len(f)) + f for f in fields) + struct.pack(">I", 0)
    try:
        s.sendall(struct.pack(">I", len(body)) + body)
    except OSError:
        pass
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:  # refused before its request was read
            break
        if not chunk:
            break
        data += chunk
    out["reply"] = data.decode("latin-1")
print(json.dumps(out))
"""


def test_another_uid_is_refused_at_the_socket(site):
    sock = str(site["socket"])
    # The file mode keeps other users out...
    assert run_as("nobody", PEER_CODE, sock) == {"connect": "Permission denied"}
    # ...and the peer check refuses them even when the mode would not.
    before = site["ctl"].log_text().count("ACTION=exec-run")
    os.chmod(sock, 0o666)
    try:
        answer = run_as("nobody", PEER_CODE, sock)
    finally:
        os.chmod(sock, 0o600)
    assert answer["connect"] == "ok"
    assert "executor: peer not allowed" in answer["reply"]
    wait_for(lambda: "ACTION=exec-peer-deny" in site["ctl"].log_text(), what="peer deny log")
    assert site["ctl"].log_text().count("ACTION=exec-run") == before
    # The agent's user gets an answer (the script runs as root by its profile).
    answer = run_as(AGENT_USER, PEER_CODE, sock)
    assert answer["connect"] == "ok"
    assert answer["reply"].startswith("o")  # a stdout record: it ran


def test_sighup_during_50_concurrent_runs_fails_none(site):
    gate = site["gates"] / "hup"
    gate.mkdir()
    client, port = site["client"], site["agent"].port

    def one(index: int) -> dict:
        return client.run(port, "gated", [str(gate), str(index)], reqid=f"hup-{index}")

    with ThreadPoolExecutor(50) as pool:
        futures = [pool.submit(one, i) for i in range(50)]
        wait_for(lambda: len(list(gate.glob("started-*"))) == 50, 120, "50 scripts running")
        log = site["ctl"].log_text
        for _ in range(3):  # one at a time: pending signals of one kind coalesce
            reloads, hups = log().count("ACTION=reload "), log().count("ACTION=exec-reload ")
            site["process"].signal(signal.SIGHUP)
            site["executor"].signal(signal.SIGHUP)
            wait_for(lambda n=reloads: log().count("ACTION=reload ") > n, 60, "agent reload")
            wait_for(lambda n=hups: log().count("ACTION=exec-reload ") > n, 60, "executor SIGHUP")
        (gate / "go").touch()
        replies = [future.result(timeout=120) for future in futures]
    assert [r["exit"] for r in replies] == [0] * 50, [r for r in replies if r["exit"]]
    assert sorted(r["stdout"] for r in replies) == sorted(f"done {i}\n" for i in range(50))
    assert site["executor"].alive() and site["process"].alive()


def test_executor_down_is_a_clear_run_error(site):
    sock = site["socket"]
    moved = sock.with_name("exec.sock.away")
    os.rename(sock, moved)
    try:
        reply = _run(site, "ident-nobody")
    finally:
        os.rename(moved, sock)
    assert reply["exit"] == -1
    assert reply["stderr"].startswith("executor unreachable:"), reply


def test_resolve_prints_the_decision(site):
    layout = site["agent"].layout
    ctl = site["ctl"]
    args = ("executor", "resolve", str(layout.agent_config), str(layout.allowlist))
    result = ctl.run(*args, "ident-caps", "--agent-user", AGENT_USER, check=True)
    lines = result.stdout.splitlines()
    path = os.path.realpath(site["agent"].allowlist["ident-caps"]["path"])
    assert lines[0] == f"OK path={path}|profile=chown|run_as=nobody|nnp=1|caps=CAP_CHOWN|writable="
    assert lines[1].startswith("user=nobody uid=65534 gid=65534 groups=")
    decided = json.loads(ctl.run(*args, "writes-confined", "--json", check=True).stdout)
    assert decided["writable"] == [str(site["srv"])] and decided["user"] == "root"
    assert str(layout.agent_etc) in decided["read_only"]
    assert ctl.run(*args, "nope", check=True).stdout.strip() == "DENY not-allowlisted"
    missing = ctl.run("executor", "resolve", "/nonexistent.toml", str(layout.allowlist), "x")
    assert missing.returncode == 2


def test_stopping_the_executor_removes_its_socket(site):
    # A second executor on another socket, stopped: its socket goes away.
    ctl = site["ctl"]
    other = site["socket"].with_name("second.sock")
    proc = ctl.popen("executor", "serve", "--agent-user", AGENT_USER, "--socket", str(other))
    try:
        wait_for(other.exists, 30, "second socket")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stderr.read()
        proc.stderr.close()
        proc.stdout.close()
    assert not other.exists()


def test_self_check_accepts_executor_profiles_and_sees_the_socket(site):
    result = site["ctl"].run("agent", "self-check", "--json", timeout=60)
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert result.returncode == 0, checks
    assert checks["executor"]["ok"] and not checks["executor"]["warning"]
    assert str(site["socket"]) in checks["executor"]["detail"]


def test_executor_refuses_to_serve_unless_root(site):
    """Without root it could apply no profile: exit 78 before binding."""
    ctl = site["ctl"]
    result = subprocess.run(
        ["/usr/bin/python3", str(ctl.path), "executor", "serve", "--socket", "/nonexistent/x"],
        user=65534,
        group=65534,
        extra_groups=[],
        env=ctl.env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert result.returncode == 78, result.stderr
    assert "the executor must run as root" in result.stderr


def _processes_with(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_stopping_the_agent_ends_its_scripts_in_the_executor(site):
    """The agent closes its executor connections on stop; the executor then
    kills those scripts. Runs last in this module: it restarts the agent."""
    gate = site["gates"] / "stop"
    gate.mkdir()
    client, port = site["client"], site["agent"].port
    body = {"script": "gated", "args": [str(gate), "0"], "reqid": "stop-1", "async": True}
    assert client.request(port, "POST", "/run", body).status == 202
    wait_for(lambda: (gate / "started-0").exists(), 60, "script started")
    assert _processes_with(str(gate))
    assert site["process"].stop() == 0
    wait_for(lambda: not _processes_with(str(gate)), 60, "script killed")
    site["process"].start()
    record = client.request(site["agent"].port, "GET", "/result/stop-1").json()
    assert record["status"] == "done" and record.get("interrupted") is True, record


# -- live output and cancel through the executor ----------------------------------------------


def _gate(site, name: str) -> Path:
    gate = site["gates"] / name
    gate.mkdir()
    gate.chmod(0o777)  # the script runs as nobody
    return gate


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_run_stream_sends_output_as_the_script_writes_it(site):
    gate = _gate(site, "stream")
    body = json.dumps({"script": "two-lines", "args": [str(gate)], "reqid": "s1"}).encode()
    conn = site["client"].connect(site["agent"].port, timeout=60)
    try:
        conn.sendall(
            b"POST /run-stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        # the first line arrives while the script still waits for its gate
        while b'"data":"first\\n"' not in received:
            chunk = conn.recv(65536)
            assert chunk, received
            received += chunk
        assert not (gate / "go").exists()
        assert b"application/x-ndjson" in received.split(b"\r\n\r\n", 1)[0]
        (gate / "go").touch()
        while chunk := conn.recv(65536):
            received += chunk
    finally:
        conn.close()
    frames = [json.loads(line) for line in received.split(b"\r\n\r\n", 1)[1].splitlines()]
    output = "".join(frame["data"] for frame in frames if frame.get("stream") == "stdout")
    assert output == "first\nsecond\n"
    assert frames[-1]["result"]["stdout"] == "first\nsecond\n"
    assert frames[-1]["result"]["exit"] == 0


def test_cancel_stops_a_run_in_the_executor(site):
    gate = _gate(site, "cancel")
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_run, site, "two-lines", [str(gate)], reqid="c1")
        wait_for(lambda: (gate / "pid").exists() and (gate / "pid").read_text().strip(), 30)
        pid = int((gate / "pid").read_text())
        assert _alive(pid)
        running = site["client"].request(site["agent"].port, "GET", "/running")
        assert [entry["reqid"] for entry in running.json()["running"]] == ["c1"]
        cancelled = site["client"].request(site["agent"].port, "POST", "/cancel", {"reqid": "c1"})
        assert cancelled.status == 200, cancelled.body
        result = pending.result(60)
    assert result["exit"] == 126, result
    assert result["stdout"] == "first\n"
    assert result["stderr"].endswith("ctrl-exec-agent: cancelled by the dispatcher\n")
    wait_for(lambda: not _alive(pid), 10, "the script to be gone")
    assert not (gate / "go").exists()
