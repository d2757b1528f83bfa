"""A local user who may write the executor socket's directory could swap the
socket, or put a link in its place between root's bind and chown and so be
handed any file. `executor serve` refuses such a directory (exit 78) and
binds nothing. Needs root (users, ownership)."""

from __future__ import annotations

import os

import pytest

from ctrlexec.executor import socket_dir
from tests.support.agentproc import install_site
from tests.support.executorproc import require_root, shared_root, temporary_user

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
        assert socket_dir.unsafe_directory(base / "run") is None
        (base / "run").chmod(0o777)
        assert "writable by others" in (socket_dir.unsafe_directory(base / "run") or "")


def test_an_unsafe_directory_through_a_symlink_is_seen(tmp_path):
    require_root()
    with temporary_user(AGENT_USER + "l") as user, shared_root("ce-exec-sockdir-ln-") as base:
        real = base / "theirs"
        real.mkdir()
        os.chown(real, user.pw_uid, user.pw_gid)
        (base / "link").symlink_to(real)
        assert "not root" in (socket_dir.unsafe_directory(base / "link") or "")
