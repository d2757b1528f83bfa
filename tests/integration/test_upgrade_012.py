"""In-place upgrade from ctrl-exec 0.12: a host directory in 0.12's layout and
formats (`.conf` files, RSA PEMs made by openssl as 0.12 makes them, the
openssl serial counter, the trusted-dispatcher map, a registry record, a
revocation list) is served by our agent and driven by our `ced` without any
of those files changing; `import-config` then writes TOML that loads to the
same settings, and everything works again from the TOML."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from ctrlexec.config import load
from tests.support import agentproc, openssl, testpki

AGENT = "web-01"
DISPATCHER_ID = "old-disp"


def _rsa_cert(directory: Path, name: str, cn: str) -> None:
    openssl.run(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
        "-subj", f"/CN={cn}", "-out", f"{name}.csr", cwd=directory,
    )  # fmt: skip
    openssl.run(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAserial", "ca.serial", "-days", "825", "-out", f"{name}.crt", cwd=directory,
    )  # fmt: skip
    (directory / f"{name}.csr").unlink()


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def build_012_host(root: Path, agent_port: int) -> None:
    """Dispatcher and agent of one 0.12 host pair, file by file."""
    etc, state = root / "etc/ctrl-exec", root / "var/lib/ctrl-exec"
    agent_etc, agent_state = root / "etc/ctrl-exec-agent", root / "var/lib/ctrl-exec-agent"
    for directory in (etc, state / "agents", state / "pairing", agent_etc, agent_state):
        directory.mkdir(parents=True, exist_ok=True)
    openssl.run(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
        "-subj", "/CN=ctrl-exec CA", "-days", "3650", "-out", "ca.crt", cwd=etc,
    )  # fmt: skip
    (etc / "ca.serial").write_text("01\n")
    _rsa_cert(etc, "dispatcher", "ctrl-exec-dispatcher")
    _rsa_cert(etc, "agent", AGENT)
    for name in ("agent.crt", "agent.key"):
        os.replace(etc / name, agent_etc / name)
    (agent_etc / "ca.crt").write_bytes((etc / "ca.crt").read_bytes())
    for path in (etc / "ca.key", etc / "dispatcher.key", agent_etc / "agent.key"):
        path.chmod(0o600)
    [serial] = openssl.canonical_serial_keys([openssl.serial_text(etc / "dispatcher.crt")])
    expiry = openssl.run("x509", "-in", str(agent_etc / "agent.crt"), "-noout", "-enddate")
    _write(
        etc / "ctrl-exec.conf",
        "# /etc/ctrl-exec/ctrl-exec.conf (0.12)\n"
        f"cert = {etc}/dispatcher.crt\n"
        f"key = {etc}/dispatcher.key\n"
        f"ca = {etc}/ca.crt\n"
        "\n# seconds to wait for each agent\n"
        "read_timeout = 30\n"
        f"dispatcher_id = {DISPATCHER_ID}\n"
        "  max_parallel = 1\n",  # indented: 0.12 never reads it
        0o640,
    )
    _write(
        agent_etc / "agent.conf",
        "# /etc/ctrl-exec-agent/agent.conf (0.12)\n"
        f"port = {agent_port}\n"
        f"cert = {agent_etc}/agent.crt\n"
        f"key = {agent_etc}/agent.key\n"
        f"ca = {agent_etc}/ca.crt\n"
        f"script_dirs = {root}/opt/ctrl-exec-scripts\n"
        "allowed_ips = 127.0.0.1\n"
        "rate_limit_disable = 1\n"
        f"revoked_serials = {agent_etc}/revoked-serials\n"
        f"trusted_dispatchers_path = {agent_state}/ctrl-exec-dispatchers\n"
        f"async_runs_dir = {agent_state}/runs\n"
        "\n[tags]\nenv = prod\n\n# every referenced profile must be defined\n"
        "[profile default]\nno_new_privileges = yes\n",
        0o640,
    )
    scripts = root / "opt/ctrl-exec-scripts"
    agentproc.write_script(scripts / "echo-args.sh", agentproc.APPENDIX_C_SCRIPTS["echo-args"])
    _write(
        agent_etc / "scripts.conf",
        "# allowlist (0.12)\n"
        f"echo-args = {scripts}/echo-args.sh\n"
        f"# old-entry = {scripts}/gone.sh\n"
        f"echo-again = profile=default {scripts}/echo-args.sh\n",
        0o640,
    )
    _write(agent_etc / "revoked-serials", "# revoked dispatcher serials\n", 0o644)
    _write(agent_state / "ctrl-exec-dispatchers", f"{serial} {DISPATCHER_ID}\n", 0o644)
    record = {
        "hostname": AGENT,
        "ip": "127.0.0.1",
        "paired": "2026-01-05T10:00:00Z",
        "expiry": expiry.strip().split("=", 1)[1],
        "reqid": "0123456789abcdef",
        "lookup_by": "ip",
        "port": agent_port,
        "tags": {},
        "dispatcher_serial": serial,
        "serial_status": "current",
        "serial_broadcast": "",
        "serial_confirmed": "",
    }
    _write(state / "agents" / f"{AGENT}.json", json.dumps(record), 0o644)


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            files[str(path.relative_to(root))] = (
                path.read_bytes(),
                stat.S_IMODE(path.stat().st_mode),
            )
    return files


@pytest.fixture
def host(ctl):
    port = agentproc.free_port()
    build_012_host(ctl.root, port)
    ctl.agent_port = port
    return ctl


def _serve(ctl):
    proc = ctl.popen("agent", "serve", stdout=None)
    pidfile = ctl.root / "var/lib/ctrl-exec-agent/agent.pid"
    assert agentproc.await_pidfile(proc, pidfile, 30, "agent"), proc.stderr.read()
    return proc


def _run_and_ping(ctl) -> None:
    ping = ctl.run("ced", "ping", AGENT)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    run = ctl.run("ced", "run", AGENT, "echo-args", "--", "one", "two words")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.endswith("\none\ntwo words\n")
    again = ctl.run("ced", "--json", "run", AGENT, "echo-again", "--", "x")
    assert again.returncode == 0 and json.loads(again.stdout)["results"][0]["stdout"] == "x\n"


def test_012_host_is_served_and_driven_with_no_file_changed(host):
    before = snapshot(host.root)
    agent = _serve(host)
    try:
        _run_and_ping(host)
    finally:
        agentproc.stop_process(agent)
    after = snapshot(host.root)
    changed = [name for name, value in before.items() if after.get(name) != value]
    assert not changed, f"0.12 files changed or removed: {changed}"
    logged = host.log_text()
    agent_conf = host.root / "etc/ctrl-exec-agent/agent.conf"
    assert f"ACTION=config-read FILE={agent_conf} FORMAT=0.12" in logged
    assert f"FILE={host.root}/etc/ctrl-exec/ctrl-exec.conf FORMAT=0.12" in logged


def test_import_config_output_loads_matches_and_serves(host):
    layout = testpki.layout_for(host.root)
    legacy_agent = load.load_agent(layout)
    legacy_scripts = load.load_allowlist(layout, None, legacy_agent.profiles)
    legacy_dispatcher = load.load_dispatcher(layout)
    assert legacy_dispatcher.read_timeout == 30 and legacy_dispatcher.max_parallel == 64

    # docs/upgrade.md's first step: show the TOML, write nothing
    dry = host.run("ced", "import-config", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "read_timeout = 30" in dry.stdout and not layout.dispatcher_config.exists()
    for role in ("ced", "agent"):
        result = host.run(role, "import-config")
        assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout
    for toml, conf in (
        (layout.agent_config, layout.legacy_agent_config),
        (layout.allowlist, layout.legacy_allowlist),
        (layout.dispatcher_config, layout.legacy_dispatcher_config),
    ):
        assert toml.exists() and stat.S_IMODE(toml.stat().st_mode) == 0o640
        for line in conf.read_text().splitlines():
            if line.startswith("#"):
                assert line in toml.read_text()  # comments kept
    new_agent = load.load_agent(layout)
    assert new_agent.source == layout.agent_config
    assert new_agent.settings.as_dict() == legacy_agent.settings.as_dict()
    assert new_agent.tags == legacy_agent.tags and new_agent.profiles == legacy_agent.profiles
    assert load.load_allowlist(layout, None, new_agent.profiles) == legacy_scripts
    assert load.load_dispatcher(layout).as_dict() == legacy_dispatcher.as_dict()

    second = host.run("agent", "import-config")
    assert second.returncode == 0 and "kept" in second.stdout  # never overwrites

    agent = _serve(host)
    try:
        _run_and_ping(host)
    finally:
        agentproc.stop_process(agent)
