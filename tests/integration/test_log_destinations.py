"""Where log lines go when operators run commands as they do: `ced run` on a
terminal (a real pty) prints its results and no ACTION line, with syslog
(a socket the test binds, named by CTRL_EXEC_SYSLOG_SOCKET) and without it
(then the lines are in the dispatcher's state directory); daemons without
syslog log to stderr; non-root commands print no Python warnings."""

from __future__ import annotations

import json
import os
import pty
import pwd
import select
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support import agentproc, testpki
from tests.support.peer012 import Peer012


@pytest.fixture
def disp(ctl, session_ca, tmp_path):
    ctl.issued = testpki.install_dispatcher(session_ca, ctl.root)
    ctl.layout = testpki.layout_for(ctl.root)
    peer = Peer012(session_ca, tmp_path / "peer").__enter__()
    testpki.register_agent(ctl.root, "vm", peer.port, peer.issued, ctl.issued)
    yield ctl
    peer.__exit__(None, None, None)


def _env_without_log_target(disp, syslog_socket) -> dict[str, str]:
    # the default destination is under test
    return disp.env({"CTRL_EXEC_LOG_TARGET": "auto", "CTRL_EXEC_SYSLOG_SOCKET": str(syslog_socket)})


def _run_on_terminal(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run with stdin, stdout and stderr on one pty; return what the
    terminal showed."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(argv, env=env, stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        shown = b""
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            if not ready:
                proc.kill()
                raise AssertionError(f"no output or end within 60s; so far {shown!r}")
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        return proc.wait(timeout=30), shown.decode("utf-8", "replace")
    finally:
        os.close(master)


def test_ced_run_on_a_terminal_without_syslog_logs_to_the_state_directory(disp, tmp_path):
    env = _env_without_log_target(disp, tmp_path / "no-syslog-here")
    code, shown = _run_on_terminal(disp.argv("ced", "run", "vm", "echo-args", "--", "hi"), env)
    assert code == 0, shown
    assert "==> vm" in shown and "hi" in shown
    assert "ACTION=" not in shown
    logged = (disp.layout.dispatcher_state / "ctrl-exec-dispatcher.log").read_text()
    assert "ACTION=dispatch " in logged and "ACTION=run " in logged
    assert "SCRIPT=echo-args" in logged


def test_ced_run_on_a_terminal_with_syslog_logs_to_syslog(disp, tmp_path):
    path = tmp_path / "syslog.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sink:
        sink.bind(str(path))
        env = _env_without_log_target(disp, path)
        code, shown = _run_on_terminal(disp.argv("ced", "run", "vm", "echo-args", "--", "hi"), env)
        assert code == 0, shown
        assert "ACTION=" not in shown and "hi" in shown
        sink.setblocking(False)
        messages = []
        while True:
            try:
                messages.append(sink.recv(65536).decode())
            except BlockingIOError:
                break
    # daemon.info is priority 30; the tag is the 0.12 ident with the pid
    runs = [m for m in messages if " ACTION=run " in m]
    assert runs and runs[0].startswith("<30>"), messages
    assert "ctrl-exec-dispatcher[" in runs[0]
    assert not (disp.layout.dispatcher_state / "ctrl-exec-dispatcher.log").exists()


def test_json_log_format_is_one_object_per_line(disp, tmp_path):
    env = _env_without_log_target(disp, tmp_path / "no-syslog-here")
    result = subprocess.run(
        disp.argv("ced", "--log-format", "json", "run", "vm", "echo-args", "--", "a\nb"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # stderr is not a terminal here: still no log lines on it
    assert "ACTION" not in result.stderr
    lines = (disp.layout.dispatcher_state / "ctrl-exec-dispatcher.log").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert {r["ACTION"] for r in records} >= {"dispatch", "run"}
    assert all(r["ident"] == "ctrl-exec-dispatcher" for r in records)


def test_agent_daemon_without_syslog_logs_to_stderr(ctl, session_ca, tmp_path):
    site = agentproc.install_site(session_ca, ctl.root, None)
    proc = ctl.popen(
        "agent",
        "serve",
        env={"CTRL_EXEC_LOG_TARGET": "auto", "CTRL_EXEC_SYSLOG_SOCKET": str(tmp_path / "none")},
        stdout=subprocess.DEVNULL,
    )
    try:
        assert agentproc.await_pidfile(proc, site.pidfile, 30, "agent")
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert "ctrl-exec-agent: ACTION=start " in stderr and f"PORT={site.port}" in stderr
    assert not (site.layout.agent_state / "ctrl-exec-agent.log").exists()


def test_non_root_commands_print_no_python_warnings(pyz, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to run a command as another user")
    nobody = pwd.getpwnam("nobody")
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, nobody.pw_uid, nobody.pw_gid)
    tmp_path.chmod(0o755)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "CTRL_EXEC_CACHE_DIR": str(home / "cache"),
    }  # no XDG_RUNTIME_DIR: an ssh or su session without a login manager

    def as_nobody():
        os.setgid(nobody.pw_gid)
        os.setgroups([])
        os.setuid(nobody.pw_uid)

    # The program names too (argv[0] picks the role), as a service user
    # without a home directory runs them; `-W error` turns any warning,
    # even one Python would print only once, into a failure.
    # (in /tmp itself: the test's own directory is not open to other users)
    links = Path(tempfile.mkdtemp(prefix="ctrl-exec-names-", dir="/tmp"))
    links.chmod(0o755)
    for name in ("ced", "ctrl-exec-agent"):
        (links / name).symlink_to(pyz)
    commands = [
        [str(pyz), "ced", "list-agents"],
        [str(pyz), "agent", "self-check"],
        [str(pyz), "ced", "--help"],
        [str(pyz), "agent", "--help"],
        [str(pyz), "--version"],
        [str(links / "ced"), "--help"],
        [str(links / "ced"), "list-agents"],
        [str(links / "ctrl-exec-agent"), "--help"],
    ]
    try:
        _run_all_as(commands, env, home, as_nobody)
    finally:
        shutil.rmtree(links)


def _run_all_as(commands, env, home, as_nobody) -> None:
    for home_dir in (str(home), "/nonexistent"):
        for warnings in ([], ["-W", "error"]):
            for argv in commands:
                result = subprocess.run(
                    ["python3", *warnings, *argv],
                    env={**env, "HOME": home_dir},
                    capture_output=True,
                    text=True,
                    timeout=60,
                    preexec_fn=as_nobody,
                    cwd="/",
                )
                where = (argv[1:], home_dir, warnings, result.stderr)
                assert "Warning" not in result.stderr, where
                assert "Traceback" not in result.stderr, where
                assert result.returncode in (0, 1), where  # 1: self-check's findings
