"""`agent serve` start and stop, its refusals, what it loads, its
connection-level limits, and `self-check` / `self-ping`; each test with an
agent of its own, through the pyz."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
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


@pytest.fixture
def deployment(tmp_path, session_ca, pyz_for):
    """An installed (not started) agent and a trusted dispatcher."""
    dispatcher = testpki.install_dispatcher(session_ca, tmp_path / "dispatcher")
    site = install_site(session_ca, tmp_path / "agent", dispatcher)
    ctl = pyz_for(tmp_path / "agent")
    agents = []

    def start(**settings) -> AgentProcess:
        site.settings.update(settings)
        site.write_config()
        agent = AgentProcess(ctl, site).start()
        agents.append(agent)
        return agent

    yield {
        "site": site,
        "ctl": ctl,
        "start": start,
        "tmp": tmp_path,
        "client": DispatcherClient.for_dispatcher(tmp_path / "dispatcher"),
    }
    for agent in agents:
        agent.stop()


def ping(deployment, reqid="p") -> int:
    return (
        deployment["client"]
        .request(deployment["site"].port, "POST", "/ping", {"reqid": reqid})
        .status
    )


# --- refusing to start --------------------------------------------------------------


@pytest.mark.parametrize(
    "line, key, message",
    [
        ('colour = "blue"', "colour", "unknown key"),
        ('max_children = "many"', "max_children", "must be an integer, not a string"),
        ("stdin_timeout = 0", "stdin_timeout", "must be between 1 and 3600, not 0"),
        ('script_dirs = ["relative/dir"]', "script_dirs", "must hold absolute paths"),
    ],
)
def test_config_error_exits_78_with_one_line(deployment, line, key, message):
    site = deployment["site"]
    config = site.layout.agent_config
    config.write_text(f"port = {site.port}\n# a comment\n{line}\n")
    result = deployment["ctl"].run("agent", "serve", timeout=30)
    assert result.returncode == 78
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{config}:3, key '{key}': {message}" in lines[0]
    assert not site.pidfile.exists()


def test_allowlist_error_and_undefined_profile_exit_78(deployment):
    site = deployment["site"]
    site.allowlist["echo-args"] = {"path": site.allowlist["echo-args"], "profile": "ops"}
    site.write_allowlist()
    result = deployment["ctl"].run("agent", "serve", timeout=30)
    assert result.returncode == 78
    assert "uses profile 'ops', which agent.toml does not define" in result.stderr
    assert f"{site.layout.allowlist}:" in result.stderr


def test_not_paired_exits_78(deployment):
    os.unlink(deployment["site"].layout.agent_cert)
    result = deployment["ctl"].run("agent", "serve", timeout=30)
    assert result.returncode == 78
    assert "not paired yet" in result.stderr and "request-pairing" in result.stderr


def test_unusable_auth_hook_exits_78(deployment):
    hook = write_script(deployment["tmp"] / "hook", "#!/bin/sh\nexit 0\n", 0o644)
    deployment["site"].settings["auth_hook"] = str(hook)
    deployment["site"].write_config()
    result = deployment["ctl"].run("agent", "serve", timeout=30)
    assert result.returncode == 78 and "key 'auth_hook'" in result.stderr


def test_port_in_use_is_one_clear_line(deployment):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        deployment["site"].port = taken.getsockname()[1]
        deployment["site"].write_config()
        result = deployment["ctl"].run("agent", "serve", timeout=30)
    assert result.returncode == 1
    assert "cannot listen on 127.0.0.1:" in result.stderr and "Traceback" not in result.stderr


def test_allowlist_and_pidfile_options(deployment):
    site = deployment["site"]
    other = deployment["tmp"] / "other-scripts.toml"
    only = write_script(site.scripts_dir / "only-here.sh", "#!/bin/sh\necho only\n")
    other.write_text(f'only-here = {{ path = "{only}", profile = "ops" }}\n')
    config = site.layout.agent_config
    config.write_text(config.read_text() + "\n[profile.ops]\nno_new_privileges = true\n")
    pidfile = deployment["tmp"] / "run" / "agent.pid"
    agent = AgentProcess(
        deployment["ctl"], site, ("--allowlist", str(other), "--pidfile", str(pidfile)), pidfile
    ).start()
    try:
        assert pidfile.read_text().strip() == str(agent.pid)
        client = deployment["client"]
        assert client.run(site.port, "only-here")["stdout"] == "only\n"
        assert client.run(site.port, "echo-args")["error"] == "script not permitted"
    finally:
        assert agent.stop() == 0
    assert not pidfile.exists()


@pytest.mark.parametrize(
    "setting", ['run_as = "nobody"', 'caps = ["CAP_CHOWN"]', 'writable = ["/srv"]']
)
def test_profile_needing_the_executor_without_one_exits_78(deployment, setting):
    """A control the agent cannot apply stops it; it is never accepted and ignored."""
    site = deployment["site"]
    config = site.layout.agent_config
    config.write_text(config.read_text() + f"\n[profile.ops]\n{setting}\n")
    result = deployment["ctl"].run("agent", "serve", timeout=30)
    key = setting.split(" ")[0]
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 78 and len(lines) == 1, result.stderr
    assert f"key 'profile.ops.{key}': profile 'ops' sets {key}" in lines[0]
    assert "executor_socket is unset" in lines[0]
    assert not site.pidfile.exists()
    check = deployment["ctl"].run("agent", "self-check", "--json", timeout=30)
    assert check.returncode == 1
    failed = [c for c in json.loads(check.stdout)["checks"] if not c["ok"]]
    assert [c["name"] for c in failed] == ["profile ops"], failed


def test_undefined_default_profile_exits_78(deployment):
    """A script without `profile` uses `default`, which must be defined too."""
    site = deployment["site"]
    config = site.layout.agent_config
    config.write_text(config.read_text().replace("[profile.default]", ""))
    result = deployment["ctl"].run("agent", "serve", timeout=30)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 78 and len(lines) == 1, result.stderr
    assert "uses profile 'default', which agent.toml does not define" in lines[0]
    check = deployment["ctl"].run("agent", "self-check", timeout=30)
    assert check.returncode == 1
    assert "uses profile 'default'" in check.stdout


# --- what the request path loads -------------------------------------------------------


def test_request_path_never_imports_cryptography(deployment, pyz_for, tmp_path):
    """A fresh native cache stays empty, and no cryptography library is
    mapped into the serving process after every kind of request."""
    ctl = deployment["ctl"]
    cache = tmp_path / "fresh-native-cache"
    ctl.cache = cache
    agent = deployment["start"]()
    port = deployment["site"].port
    client = deployment["client"]
    assert client.request(port, "POST", "/ping", {}).status == 200
    assert client.run(port, "echo-args", ["x"])["exit"] == 0
    assert client.request(port, "GET", "/capabilities").status == 200
    assert client.request(port, "POST", "/run", b"nope").status == 200
    layout = testpki.layout_for(deployment["site"].root)
    stranger = DispatcherClient(layout.agent_cert, layout.agent_key, layout.agent_ca)
    assert stranger.request(port, "POST", "/ping", {}).status == 403
    agent.signal(signal.SIGHUP)
    wait_for(lambda: "ACTION=reload " in ctl.log_text(), what="reload")
    maps = Path(f"/proc/{agent.pid}/maps").read_text()
    assert "cryptography" not in maps and "_rust" not in maps and "cffi" not in maps
    assert not cache.exists() or not any(cache.iterdir())


# --- stopping -------------------------------------------------------------------


def test_sigterm_lets_the_running_request_finish(deployment):
    site = deployment["site"]
    gate = site.scripts_dir / "go"
    site.add_script(
        "wait-gate", f"#!/bin/sh\nwhile [ ! -e {gate} ]; do sleep 0.02; done\necho ok\n"
    )
    site.write_allowlist()
    agent = deployment["start"]()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(deployment["client"].run, site.port, "wait-gate")
        wait_for(lambda: _has_child(agent.pid), what="script started")
        assert _listens(agent.pid, site.port)
        agent.signal(signal.SIGTERM)
        wait_for(lambda: "ACTION=stop ACTIVE=1" in deployment["ctl"].log_text(), what="stop")
        # The agent's own listening socket is gone (asked of the kernel, not by
        # connecting: another process on this host may bind the freed port).
        assert not _listens(agent.pid, site.port)
        gate.touch()
        assert pending.result(30)["stdout"] == "ok\n"
    assert agent.proc.wait(30) == 0
    assert not site.pidfile.exists()


def _listens(pid: int, port: int) -> bool:
    """Whether process `pid` holds a listening TCP socket on `port`."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "0A" and fields[9] in inodes:
                return True
    return False


def _has_child(pid: int) -> bool:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    if children:
        return True
    return any(
        Path(f"/proc/{pid}/task/{t}/children").read_text().split()
        for t in os.listdir(f"/proc/{pid}/task")
    )


# --- connection limits ------------------------------------------------------------


def test_over_max_children_is_closed_unanswered(deployment):
    """`max_children` counts trusted dispatchers' requests only: two that
    finished the handshake and are still sending hold both slots; a third
    trusted connection is closed unanswered (0.12's overload). Idle strangers
    never take these slots (tests/hostile/test_idle_flood.py)."""
    agent = deployment["start"](max_children=2)
    port = deployment["site"].port
    busy = [deployment["client"].connect(port) for _ in range(2)]
    try:
        for conn in busy:
            conn.sendall(b"POST /ping HTTP/1.0\r\nContent-Length: 2\r\n\r\n")  # no body yet
        wait_for(lambda: _established(agent.pid, port) >= 2, what="two requests held")
        with pytest.raises((ssl.SSLError, OSError, AssertionError)):
            reply = deployment["client"].request(port, "POST", "/ping", {})
            raise RuntimeError(f"answered over the limit: {reply}")
        wait_for(
            lambda: "ACTION=overload MAX=2 PEER=127.0.0.1" in deployment["ctl"].log_text(),
            what="overload logged",
        )
    finally:
        for conn in busy:
            conn.close()
    wait_for(lambda: _try_ping(deployment), what="serving again")


def _established(pid: int, port: int) -> int:
    """Established connections to `port` (from /proc/net/tcp)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] == "01":
            count += 1
    return count


def _try_ping(deployment) -> bool:
    try:
        return ping(deployment) == 200
    except (ssl.SSLError, OSError):
        return False
    except AssertionError:
        # closed unanswered: the agent has not yet seen the held connections
        # close, so both slots still count as busy; ask again
        return False


def test_the_volume_rule_counts_strangers_not_the_trusted_dispatcher(deployment, session_ca):
    deployment["start"](rate_limit_disable=False, rate_limit_volume="3/60/300")
    assert [ping(deployment) for _ in range(10)] == [200] * 10  # never counted
    # a certificate from our CA that is not in the trusted map: counted
    stranger_root = deployment["site"].root.parent / "stranger"
    testpki.install_dispatcher(session_ca, stranger_root)
    stranger = DispatcherClient.for_dispatcher(stranger_root)
    port = deployment["site"].port
    assert [stranger.request(port, "POST", "/ping", {}).status for _ in range(3)] == [403] * 3
    with pytest.raises((ssl.SSLError, OSError)):
        ping(deployment)  # the address is blocked, whoever connects from it
    assert "ACTION=rate-block PEER=127.0.0.1 REASON=volume" in deployment["ctl"].log_text()


def test_allowed_ips_closes_other_addresses_before_tls(deployment):
    deployment["start"](allowed_ips=["10.11.12.0/24", "192.0.2.7"])
    with pytest.raises((ssl.SSLError, OSError)):
        ping(deployment)
    log = deployment["ctl"].log_text()
    assert "ACTION=ip-block PEER=127.0.0.1" in log and "ACTION=tls-failure" not in log


# --- self-check and self-ping -----------------------------------------------------------


def test_self_check_passes_on_a_good_agent(deployment):
    result = deployment["ctl"].run("agent", "self-check", timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Script 'echo-args': " in result.stdout and "[ok]" in result.stdout
    assert "key matches, signed by the CA" in result.stdout
    assert result.stdout.rstrip().endswith("Self-check passed.")


def test_self_check_fails_on_any_problem(deployment, session_ca):
    site = deployment["site"]
    os.chmod(site.scripts_dir / "fail.sh", 0o644)
    site.layout.trusted_dispatchers.unlink()
    other = testpki.SessionCA("another CA")
    site.layout.agent_ca.write_bytes(other.cert_pem)
    result = deployment["ctl"].run("agent", "self-check", "--json", timeout=30)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    failed = {check["name"] for check in report["checks"] if not check["ok"]}
    assert failed == {"script fail", "trusted dispatchers", "certificate chain"}
    assert report["ok"] is False


def test_self_ping_against_the_running_agent(deployment):
    result = deployment["ctl"].run("agent", "self-ping", timeout=30)
    assert result.returncode == 1 and "not listening" in result.stdout
    deployment["start"]()
    result = deployment["ctl"].run("agent", "self-ping", timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Ping response: 403 serial mismatch (expected" in result.stdout
    assert "Paired: yes (cert expires " in result.stdout
    result = deployment["ctl"].run("agent", "self-ping", "--json", timeout=30)
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["status"] == 403


def test_help_explains_serve(deployment):
    result = deployment["ctl"].run("agent", "serve", "--help", timeout=30)
    assert result.returncode == 0
    assert "SIGHUP reloads" in result.stdout and "78" in result.stdout
