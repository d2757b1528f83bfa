"""`ced ping`, `ced run` and `ced list-locks` through the pyz, as operators
run them: output formats, exit codes, refusals before any agent is
contacted, the progress line, and no `cryptography` on these paths.

The agent here is the 0.12 stand-in (tests/support/peer012.py), so what the
agent received can be inspected; tests/integration/test_execution_path.py
drives our real agents (the auth hook, locks, the token in the script's
stdin)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess

import pytest

from tests.support import agentproc, testpki
from tests.support.peer012 import Peer012, issued_at


@pytest.fixture
def disp(ctl, session_ca):
    """The pyz runner with a dispatcher installed under its root."""
    ctl.issued = testpki.install_dispatcher(session_ca, ctl.root)
    ctl.layout = testpki.layout_for(ctl.root)
    return ctl


@pytest.fixture
def peer(session_ca, tmp_path):
    with Peer012(session_ca, tmp_path / "peer") as running:
        yield running


def register(disp, session_ca, name: str, port: int) -> None:
    testpki.register_agent(disp.root, name, port, issued_at(session_ca, port, name), disp.issued)


# -- output and exit codes -------------------------------------------------------


def test_ping_text_and_json(disp, session_ca, peer):
    register(disp, session_ca, "vm", peer.port)
    text = disp.run("ced", "ping", "vm")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["HOST", "STATUS", "RTT", "CERT", "EXPIRY", "VERSION"]
    assert re.fullmatch(r"vm {28}  ok {6}  \d+ms +Feb 24 12:58:55 2029 GMT      0\.12\.3", lines[2])
    as_json = disp.run("ced", "--json", "ping", "vm")
    assert as_json.returncode == 0
    document = json.loads(as_json.stdout)
    assert document["ok"] == 1 and isinstance(document["ok"], int)
    [result] = document["results"]
    assert set(result) == {"host", "rtt", "reqid", "staged", "expiry", "status", "version"}


def test_ping_exits_1_when_any_host_fails(disp, session_ca, peer):
    register(disp, session_ca, "vm", peer.port)
    register(disp, session_ca, "down", agentproc.free_port())
    result = disp.run("ced", "ping", "vm", "down")
    assert result.returncode == 1
    assert "connection refused (agent not running, or wrong port?)" in result.stdout
    assert result.stdout.splitlines()[2].startswith("vm ")


def test_run_text_json_and_exit_codes(disp, session_ca, peer):
    register(disp, session_ca, "vm", peer.port)
    args = ["two words", "", "line\nbreak", "ünï ✓"]
    text = disp.run("ced", "run", "vm", "echo-args", "--", *args)
    assert text.returncode == 0, text.stderr
    reqid = peer.received[-1].json["reqid"]
    assert re.fullmatch(r"[0-9a-f]{16}", reqid)
    assert re.fullmatch(
        rf"==> vm  \[OK  exit:0  \d+ms  req:{reqid}\]\ntwo words\n\nline\nbreak\nünï ✓\n",
        text.stdout,
    )
    assert peer.received[-1].json["args"] == args
    as_json = disp.run("ced", "run", "--json", "vm", "echo-args", "--", "a")
    [result] = json.loads(as_json.stdout)["results"]
    assert set(result) == {"script", "stderr", "stdout", "exit", "reqid", "host", "rtt"}
    # the same reqid in the dispatcher's log lines
    assert f"REQID={result['reqid']}" in disp.log_text()


def test_run_exits_1_when_a_host_fails(disp, session_ca, failing_peer):
    register(disp, session_ca, "vm", failing_peer.port)
    result = disp.run("ced", "run", "vm", "fail", "--", "5")
    assert result.returncode == 1
    assert re.match(
        r"==> vm  \[FAIL  exit:5  \d+ms  req:[0-9a-f]{16}\]\nabout to fail\n"
        r"    STDERR: something went wrong\n$",
        result.stdout,
    )


@pytest.fixture
def failing_peer(session_ca, tmp_path):
    def fail(request):
        from tests.support.peer012 import http_response

        body = request.json
        return http_response(
            200,
            json.dumps(
                {
                    "exit": int(body["args"][0]),
                    "reqid": body["reqid"],
                    "stdout": "about to fail\n",
                    "stderr": "something went wrong\n",
                    "script": "fail",
                }
            ).encode(),
        )

    with Peer012(session_ca, tmp_path / "fail", behaviour=fail) as running:
        yield running


def test_output_survives_text_that_cannot_be_encoded(disp, session_ca, tmp_path):
    """JSON may carry a lone surrogate; printing it must not crash ced."""
    from tests.support.peer012 import http_response

    def answer(request):  # echoes the reqid, as every agent does
        reqid = request.json["reqid"].encode()
        body = b'{"exit":0,"stdout":"bad \\ud800 text\\n","stderr":"","script":"s","reqid":"'
        return http_response(200, body + reqid + b'"}')

    with Peer012(session_ca, tmp_path / "p", behaviour=answer) as odd:
        register(disp, session_ca, "vm", odd.port)
        for argv in (["run", "vm", "s"], ["--json", "run", "vm", "s"]):
            result = disp.run("ced", *argv)
            assert result.returncode == 0, result.stderr
            assert "bad ? text" in result.stdout


def test_unknown_agent(disp, session_ca, peer):
    register(disp, session_ca, "vm", peer.port)
    result = disp.run("ced", "run", "vm", "nosuch", "echo-args")
    assert result.returncode == 1
    assert "unknown agent(s): nosuch" in result.stderr
    assert "Only registered agents can be addressed" in result.stderr
    assert peer.received == []
    as_json = disp.run("ced", "--json", "ping", "nosuch")
    assert json.loads(as_json.stdout) == {
        "ok": 0,
        "error": "unknown agent",
        "detail": "not a registered agent: nosuch",
    }


@pytest.mark.parametrize(
    "argv", [["run", "vm"], ["run", "vm", "bad/name"], ["ping"], ["ping", "vm", "--port", "0"]]
)
def test_malformed_commands_exit_2(disp, argv):
    result = disp.run("ced", *argv)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.strip()


def test_missing_dispatcher_certificate_is_one_clear_line(ctl, session_ca, peer):
    testpki.register_agent(
        ctl.root, "vm", peer.port, peer.issued, session_ca.issue("ctrl-exec-dispatcher")
    )
    result = ctl.run("ced", "ping", "vm")
    assert result.returncode == 78
    assert "does not exist" in result.stderr and "ced setup-ctrl-exec" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# -- progress line, and the stdlib-only path -------------------------------------------


def test_progress_line_and_summary_on_a_terminal(disp, session_ca, peer):
    names = [f"node-{n:02d}" for n in range(12)]
    for name in names:
        register(disp, session_ca, name, peer.port)
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            disp.argv("ced", "ping", *names),
            env=disp.env(),
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
        )
        os.close(slave)
        stdout, _ = proc.communicate(timeout=60)
        seen = b""
        while select.select([master], [], [], 0)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0
    assert seen.startswith(b"\r[ 0/12] hosts done, 0 failed, 12 running, 0.")
    assert b"[12/12] hosts done, 0 failed, 0 running, " in seen
    _, _, summary = seen.rpartition(b"\r\x1b[K")
    assert re.fullmatch(rb"12 ok, 0 failed, 0 unreachable in \d+\.\d s\r?\n", summary), seen
    assert "hosts done" not in stdout and len(stdout.splitlines()) == 14


def test_no_progress_line_when_stderr_is_not_a_terminal(disp, session_ca, peer):
    names = [f"node-{n:02d}" for n in range(11)]
    for name in names:
        register(disp, session_ca, name, peer.port)
    result = disp.run("ced", "ping", *names)
    assert result.returncode == 0 and "hosts done" not in result.stderr
    assert "unreachable in" not in result.stderr and result.stderr == ""


def test_run_and_ping_never_import_cryptography(disp, session_ca, peer, tmp_path):
    """A cache dir others could write is refused by the native bootstrap, so
    any import of cryptography or cffi would fail the command. The
    PostgreSQL driver is not loaded either (the file backend is configured)."""
    register(disp, session_ca, "vm", peer.port)
    unsafe = tmp_path / "unsafe-cache"
    unsafe.mkdir()
    unsafe.chmod(0o777)
    env = {"CTRL_EXEC_CACHE_DIR": str(unsafe)}
    for argv in (["ping", "vm"], ["run", "vm", "echo-args", "--", "x"], ["list-locks"]):
        result = subprocess.run(
            [*disp.argv("ced", *argv)[:1], "-X", "importtime", *disp.argv("ced", *argv)[1:]],
            env=disp.env(env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        imported = {
            line.split("|")[-1].strip().split(".")[0]
            for line in result.stderr.splitlines()
            if line.startswith("import time:")
        }
        assert not imported & {"cryptography", "cffi", "_cffi_backend"}, argv
        assert not imported & {"pg8000", "scramp", "asn1crypto", "dateutil"}, argv
    assert list(unsafe.iterdir()) == []


# -- messages for common mistakes -----------------------------------------------------


def test_arguments_without_dashes_get_a_hint(disp, session_ca, peer):
    register(disp, session_ca, "vm", peer.port)
    completed = disp.run("ced", "run", "vm", "hello", "extra")
    assert completed.returncode == 1 and completed.stdout == ""
    assert "unknown agent(s): hello" in completed.stderr
    assert "Did you mean script 'hello' with arguments? They go after `--`: " in completed.stderr
    assert completed.stderr.endswith(" ced run vm hello -- extra\n")
    as_json = json.loads(disp.run("ced", "--json", "run", "vm", "hello", "a", "b").stdout)
    assert as_json["ok"] == 0 and as_json["hint"].endswith("ced run vm hello -- a b")
    assert peer.received == []


@pytest.mark.parametrize("host", ["vm:99999", "vm:0", "vm:http", "vm:"])
def test_a_bad_port_is_named_as_such(disp, session_ca, peer, host):
    register(disp, session_ca, "vm", peer.port)
    completed = disp.run("ced", "run", host, "echo-args")
    assert completed.returncode == 2
    assert f"invalid port in '{host}': NAME:PORT takes a port from 1 to 65535" in completed.stderr
    as_json = disp.run("ced", "--json", "ping", host)
    assert as_json.returncode == 2
    assert json.loads(as_json.stdout) == {
        "ok": 0,
        "error": f"invalid port in '{host}': NAME:PORT takes a port from 1 to 65535",
    }
