"""What only root may change (executor/rootonly.py). A local user (the
agent's own, say) who may write the executor socket's directory could swap
the socket, or put a link in its place between root's bind and chown and so
be handed any file: `executor serve` refuses such a directory (exit 78) and
binds nothing. One who may write agent.toml, scripts.toml or a script runs
what they like as root: the executor refuses to run anything on such a
configuration, and refuses such a script. Needs root (users, ownership)."""

from __future__ import annotations

import os

import pytest

from ctrlexec.core import exec_frames
from ctrlexec.executor import rootonly
from tests.support.agentproc import install_site
from tests.support.executorproc import (
    ExecutorProcess,
    require_root,
    run_as,
    shared_root,
    temporary_user,
)

AGENT_USER = f"ce-exsd-{os.getpid()}"


@pytest.fixture(scope="module")
def site(session_ca, pyz_for):
    require_root()
    with temporary_user(AGENT_USER) as user, shared_root("ce-exec-sockdir-") as base:
        ctl = pyz_for(base / "agent")
        install_site(session_ca, ctl.root, None, scripts={})
        yield ctl, user


def _serve(ctl, sock):
    return ctl.run("executor", "serve", "--agent-user", AGENT_USER, "--socket", str(sock))


@pytest.mark.parametrize("case", ["owned by the agent user", "world-writable", "group-writable"])
def test_a_socket_directory_another_user_may_change_is_refused(site, case):
    ctl, user = site
    directory = ctl.root / case.replace(" ", "-")
    directory.mkdir()
    if case == "owned by the agent user":
        os.chown(directory, user.pw_uid, user.pw_gid)
        reason = f"belongs to uid {user.pw_uid}, not root"
    elif case == "world-writable":
        directory.chmod(0o1777)  # sticky does not help the socket's own directory
        reason = "writable by others"
    else:
        os.chown(directory, 0, user.pw_gid)
        directory.chmod(0o775)
        reason = "writable by its group"
    sock = directory / "exec.sock"
    result = _serve(ctl, sock)
    assert result.returncode == 78, result.stderr
    assert "refusing to put the executor socket" in result.stderr and reason in result.stderr
    assert not sock.exists()


def test_a_directory_above_it_must_be_root_only_too(site):
    ctl, _ = site
    above = ctl.root / "above"
    (above / "run").mkdir(parents=True)
    above.chmod(0o777)  # anyone may rename `run` and put their own in its place
    result = _serve(ctl, above / "run" / "exec.sock")
    assert result.returncode == 78 and f"{above} is writable by others" in result.stderr


def test_root_only_directories_under_a_sticky_one_are_accepted(tmp_path):
    require_root()
    with shared_root("ce-exec-sockdir-ok-") as base:  # under /var/tmp (sticky, 1777)
        (base / "run").mkdir(mode=0o755)
        assert rootonly.who_else_can_change(base / "run", is_directory=True) is None
        (base / "run").chmod(0o777)
        assert "writable by others" in (
            rootonly.who_else_can_change(base / "run", is_directory=True) or ""
        )


def test_an_unsafe_directory_through_a_symlink_is_seen(tmp_path):
    require_root()
    with temporary_user(AGENT_USER + "l") as user, shared_root("ce-exec-sockdir-ln-") as base:
        real = base / "theirs"
        real.mkdir()
        os.chown(real, user.pw_uid, user.pw_gid)
        (base / "link").symlink_to(real)
        assert "not root" in (rootonly.who_else_can_change(base / "link", is_directory=True) or "")


# -- the configuration and the scripts ----------------------------------------------------

SEND = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(60)
s.connect(sys.argv[1])
s.sendall(bytes.fromhex(sys.argv[2]))
reply = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    reply += chunk
print(json.dumps(reply.hex()))
"""


@pytest.fixture
def served(session_ca, pyz_for):
    """A running executor whose scripts write a marker when they run."""
    require_root()
    with temporary_user(AGENT_USER + "s") as user, shared_root("ce-exec-files-") as base:
        ctl = pyz_for(base / "agent")
        outbox = base / "out"
        outbox.mkdir()
        outbox.chmod(0o777)
        site = install_site(session_ca, ctl.root, None, scripts={})
        for name in ("mine", "theirs"):
            site.add_script(name, f'#!/bin/sh\necho {name} >> "{outbox}/ran"\n', profile="root")
        sock = ctl.root / "run" / "exec.sock"
        site.settings["executor_socket"] = str(sock)
        site.write_config()
        config = site.layout.agent_config
        config.write_text(config.read_text() + '\n[profile.root]\nrun_as = "root"\n')
        site.write_allowlist()
        process = ExecutorProcess(ctl, sock, user.pw_name).start()
        try:
            yield {"ctl": ctl, "site": site, "user": user, "sock": sock, "ran": outbox / "ran"}
        finally:
            process.stop()


def _ask(served, script: str) -> tuple[exec_frames.ExecEnd | None, str]:
    frame = exec_frames.encode_request(exec_frames.ExecRequest("r-1", "d", script, b"", ()))
    reply = run_as(served["user"].pw_name, SEND, str(served["sock"]), frame.hex())
    parser = exec_frames.ResponseParser(1_048_576)
    end = parser.feed(bytes.fromhex(reply))
    return end, parser.stderr.decode()


def test_a_script_the_agent_user_may_change_is_not_run_as_root(served):
    """The agent's user owns one script of a root profile: it could put
    anything in it, so the executor refuses it (and still runs the other)."""
    user = served["user"]
    os.chown(served["site"].scripts_dir / "theirs.sh", user.pw_uid, user.pw_gid)
    end, stderr = _ask(served, "theirs")
    assert end is not None and end.exit == -1
    assert stderr == "executor: file not protected (writable by a user other than root)\n"
    assert _ask(served, "mine")[0] == exec_frames.ExecEnd(0)
    assert served["ran"].read_text() == "mine\n"
    log = served["ctl"].log_text()
    assert "ACTION=exec-deny" in log and f"belongs to uid {user.pw_uid}, not root" in log


@pytest.mark.parametrize("which", ["agent.toml", "scripts.toml", "their directory"])
def test_configuration_the_agent_user_may_change_stops_every_run(served, which):
    """Whoever may write agent.toml or scripts.toml chooses what runs as
    root: while either can be changed by another user, nothing runs."""
    layout, user = served["site"].layout, served["user"]
    target = {
        "agent.toml": layout.agent_config,
        "scripts.toml": layout.allowlist,
        "their directory": layout.agent_config.parent,
    }[which]
    os.chown(target, 0, user.pw_gid)
    target.chmod(target.stat().st_mode | 0o020)  # group-writable, the agent's group
    end, stderr = _ask(served, "mine")
    assert end is not None and end.exit == -1 and "file not protected" in stderr
    assert not served["ran"].exists()
    resolved = served["ctl"].run(
        "executor", "resolve", str(layout.agent_config), str(layout.allowlist), "mine"
    )
    assert resolved.stdout.splitlines() == ["DENY not-root-only"]


def test_executor_serve_refuses_to_start_on_unprotected_configuration(site):
    ctl, user = site
    config = ctl.root / "etc/ctrl-exec-agent/agent.toml"
    os.chown(config, user.pw_uid, user.pw_gid)
    try:
        result = _serve(ctl, ctl.root / "run" / "exec.sock")
    finally:
        os.chown(config, 0, 0)
    assert result.returncode == 78, result.stderr
    assert "refusing to serve" in result.stderr and "not root" in result.stderr
