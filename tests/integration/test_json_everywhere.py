"""`--json` on every `ced` and `agent` command, checked against the table in
docs/running.md: each command is run through the pyz, once as it succeeds
and once as it fails, on real hosts (a dispatcher with a CA, a running agent,
a pairing exchange between them).

The command list comes from the role parsers, so a new command without a
row in the table, or without a case here, fails. Each output must be one
JSON value on one line; an error is one object with a false `ok` and an
`error` text; the exit code must be one the row lists; the keys a success
holds must be named in the row.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ctrlexec.cli import agent as agent_role
from ctrlexec.cli import ced as ced_role
from ctrlexec.cli import roles
from tests.support import agentproc, apiproc, testpki
from tests.support.fleet import Fleet, running_fleet

REPO = Path(__file__).resolve().parents[2]
MISSING_CONFIG = "/nonexistent/ctrl-exec-json-test.toml"
SCRIPTS = {"echo-args": agentproc.APPENDIX_C_SCRIPTS["echo-args"]}


def parser_commands() -> set[tuple[str, str]]:
    found = set()
    for name, module in (("ced", ced_role), ("agent", agent_role)):
        parser = roles.build_parser(
            name, name, module.DESCRIPTION, module.TOPICS, module.COMPAT_MODES
        )
        for action in parser._actions:  # argparse has no public walk
            if isinstance(action, argparse._SubParsersAction):
                found.update((name, mode) for mode in action.choices)
    return found


def documented_rows() -> dict[tuple[str, str], list[str]]:
    text = (REPO / "docs" / "running.md").read_text()
    section = text[text.index("## `--json` and exit codes") :]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `(ced|agent) ([a-z-]+)` \|", line)
        if match:
            cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
            assert len(cells) == 4, line
            rows[(match.group(1), match.group(2))] = cells
    return rows


@dataclass
class Case:
    success_keys: tuple[str, ...]
    success: list[subprocess.CompletedProcess] = field(default_factory=list)
    success_exit: int = 0
    error: subprocess.CompletedProcess | None = None
    error_exit: int = 1


CASES: dict[tuple[str, str], Case] = {
    ("ced", "run"): Case(("ok", "results")),
    ("ced", "ping"): Case(("ok", "results")),
    ("ced", "list-locks"): Case(("ok", "locks")),
    ("ced", "cancel"): Case(("ok", "results"), error_exit=2),
    ("ced", "status"): Case(("ok", "reqid", "mode", "complete")),
    ("ced", "wait"): Case(("ok", "reqid", "mode", "complete")),
    ("ced", "setup-ca"): Case(("ok", "cert", "fingerprint")),
    ("ced", "setup-ctrl-exec"): Case(("ok", "cert", "serial", "expiry")),
    ("ced", "pairing-mode"): Case(("ok", "pid", "port")),
    ("ced", "list-requests"): Case(("reqid", "hostname", "code"), error_exit=78),
    ("ced", "approve"): Case(("ok", "hostname", "cert_serial")),
    ("ced", "deny"): Case(("ok", "reqid", "hostname")),
    ("ced", "list-agents"): Case(("hostname", "ip", "port"), error_exit=78),
    ("ced", "edit-agent"): Case(("hostname", "port")),
    ("ced", "unpair"): Case(("ok", "hostname", "expiry")),
    ("ced", "import-config"): Case(("ok", "files"), error_exit=78),
    ("ced", "rotate-cert"): Case(("ok", "new_serial", "old_serial", "updated", "failed")),
    ("ced", "serial-status"): Case(("state", "agents"), error_exit=78),
    ("ced", "maintain"): Case(("ok", "agents", "pinged"), error_exit=78),
    ("ced", "revoke"): Case(("ok", "serials", "pushed"), error_exit=2),
    ("ced", "completion"): Case(("ok", "script"), error_exit=2),
    ("ced", "db"): Case(("ok", "database", "version", "applied"), error_exit=78),
    ("agent", "serve"): Case(("ok", "pid", "port"), error_exit=78),
    ("agent", "self-check"): Case(("ok", "checks")),
    ("agent", "self-ping"): Case(("ok", "stage", "status")),
    ("agent", "request-pairing"): Case(("ok", "status", "reqid", "code")),
    ("agent", "pairing-status"): Case(("ok", "paired", "expiry", "subject", "serial")),
    ("agent", "paired"): Case(("ok", "paired")),
    ("agent", "import-config"): Case(("ok", "files"), error_exit=78),
    ("agent", "promote-cert"): Case(("ok", "status"), error_exit=0),
    ("agent", "cert-staged"): Case(("ok", "staged", "path")),
}


def one_json(completed: subprocess.CompletedProcess):
    lines = completed.stdout.splitlines()
    assert len(lines) == 1, (completed.args, completed.stdout, completed.stderr)
    return json.loads(lines[0])


class Hosts:
    """The runners: `d` a dispatcher with a running agent `json-01` (`a`),
    `f` a dispatcher set up by `ced` itself that pairs `g` and `h`."""

    def __init__(self, fleet: Fleet, pyz_for):
        self.base = fleet.base
        self.pyz_for = pyz_for
        self.d = fleet.dispatcher
        self.issued = fleet.issued
        self.a = fleet.runner("json-01")
        self.site = fleet.site("json-01")

    def fresh(self, name: str):
        return self.pyz_for(self.base / name)


def ced(runner, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return runner.run("ced", "--json", *args, timeout=timeout)


def agent(runner, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return runner.run("agent", "--json", *args, timeout=timeout)


def exercise_dispatcher(hosts: Hosts) -> None:
    d = hosts.d
    case = CASES
    case["ced", "run"].success.append(ced(d, "run", "json-01", "echo-args", "--", "hi"))
    case["ced", "run"].error = ced(d, "run", "nosuch", "echo-args")
    case["ced", "ping"].success.append(ced(d, "ping", "json-01"))
    case["ced", "ping"].error = ced(d, "ping", "nosuch")
    case["ced", "list-locks"].success.append(ced(d, "list-locks"))
    broken = hosts.fresh("locks-not-a-directory")
    locks = testpki.layout_for(broken.root).locks_dir
    locks.parent.mkdir(parents=True)
    locks.write_text("")
    case["ced", "list-locks"].error = ced(broken, "list-locks")
    case["ced", "cancel"].success.append(ced(d, "cancel", "0123456789abcdef", "json-01"))
    case["ced", "cancel"].error = ced(d, "cancel", "ffeeddccbbaa9988")
    submitted = one_json(ced(d, "run", "--async", "json-01", "echo-args", "--", "later"))
    reqid = submitted["reqid"]
    case["ced", "wait"].success.append(ced(d, "wait", reqid, "--interval", "0.1"))
    case["ced", "wait"].error = ced(d, "wait", "0000000000000000", "--timeout", "1")
    case["ced", "status"].success.append(ced(d, "status", reqid))
    case["ced", "status"].error = ced(d, "status", "0000000000000000")
    case["ced", "list-agents"].success.append(ced(d, "list-agents"))
    case["ced", "list-agents"].error = ced(d, "list-agents", "--config", MISSING_CONFIG)
    port = str(hosts.site.port)
    case["ced", "edit-agent"].success.append(ced(d, "edit-agent", "json-01", "--agent-port", port))
    case["ced", "edit-agent"].error = ced(d, "edit-agent", "json-01")
    case["ced", "maintain"].success.append(ced(d, "maintain"))
    case["ced", "maintain"].error = ced(d, "maintain", "--config", MISSING_CONFIG)
    case["ced", "revoke"].success.append(ced(d, "revoke", "7a31c0ffee"))
    case["ced", "revoke"].error = ced(d, "revoke")
    case["ced", "completion"].success.append(ced(d, "completion", "bash"))
    case["ced", "completion"].error = ced(d, "completion", "fish")
    old = hosts.fresh("old-dispatcher")
    (old.root / "etc/ctrl-exec").mkdir(parents=True)
    (old.root / "etc/ctrl-exec/ctrl-exec.conf").write_text(
        "cert = /etc/ctrl-exec/dispatcher.crt\nkey = /etc/ctrl-exec/dispatcher.key\n"
        "ca = /etc/ctrl-exec/ca.crt\nread_timeout = 30\n"
    )
    case["ced", "import-config"].success.append(ced(old, "import-config", "--dry-run"))
    case["ced", "import-config"].error = ced(hosts.fresh("no-config"), "import-config")


def exercise_pairing(hosts: Hosts) -> None:
    f = hosts.fresh("f")
    case = CASES
    case["ced", "setup-ca"].success.append(ced(f, "setup-ca"))
    case["ced", "setup-ca"].error = ced(f, "setup-ca")
    case["ced", "setup-ctrl-exec"].success.append(ced(f, "setup-ctrl-exec"))
    case["ced", "setup-ctrl-exec"].error = ced(hosts.fresh("no-ca"), "setup-ctrl-exec")
    started = ced(f, "pairing-mode", "start", "--port", "0", "--timeout", "300")
    case["ced", "pairing-mode"].success.append(started)
    case["ced", "pairing-mode"].error = ced(f, "pairing-mode", "start", "--timeout", "0")
    try:
        port = str(one_json(started)["port"])
        g, h = hosts.fresh("g"), hosts.fresh("h")
        request = ("request-pairing", "--dispatcher", "127.0.0.1", "--background")
        asked = agent(g, *request, "--port", port, "--hostname", "json-new", "--timeout", "120")
        case["agent", "request-pairing"].success.append(asked)
        closed = str(agentproc.free_port())
        case["agent", "request-pairing"].error = agent(
            hosts.fresh("nowhere"), *request, "--port", closed, "--timeout", "5"
        )
        denied = agent(h, *request, "--port", port, "--hostname", "json-deny", "--timeout", "120")
        case["ced", "list-requests"].success.append(ced(f, "list-requests"))
        case["ced", "list-requests"].error = ced(f, "list-requests", "--config", MISSING_CONFIG)
        case["ced", "approve"].success.append(ced(f, "approve", one_json(asked)["reqid"]))
        case["ced", "approve"].error = ced(f, "approve", "0000000000000000")
        case["ced", "deny"].success.append(ced(f, "deny", one_json(denied)["reqid"]))
        case["ced", "deny"].error = ced(f, "deny", "0000000000000000")
    finally:
        stopped = ced(f, "pairing-mode", "stop")
    case["ced", "pairing-mode"].success.append(stopped)
    case["ced", "unpair"].success.append(ced(f, "unpair", "json-new"))
    case["ced", "unpair"].error = ced(f, "unpair", "json-new")
    case["ced", "rotate-cert"].success.append(ced(f, "rotate-cert"))
    case["ced", "rotate-cert"].error = ced(f, "rotate-cert")
    case["ced", "serial-status"].success.append(ced(f, "serial-status"))
    case["ced", "serial-status"].error = ced(f, "serial-status", "--config", MISSING_CONFIG)


def exercise_agent(hosts: Hosts, session_ca) -> None:
    a, case = hosts.a, CASES
    unpaired = hosts.fresh("unpaired")
    case["agent", "self-check"].success.append(agent(a, "self-check"))
    gone = hosts.base / "gone.toml"
    gone.write_text(f'"gone" = "{hosts.site.scripts_dir}/gone.sh"\n')
    case["agent", "self-check"].error = agent(a, "self-check", "--allowlist", str(gone))
    case["agent", "self-ping"].success.append(agent(a, "self-ping"))
    case["agent", "self-ping"].error = agent(unpaired, "self-ping")
    case["agent", "pairing-status"].success.append(agent(a, "pairing-status"))
    case["agent", "pairing-status"].error = agent(unpaired, "pairing-status")
    case["agent", "paired"].success.append(agent(a, "paired"))
    case["agent", "paired"].error = agent(unpaired, "paired")
    old = hosts.fresh("old-agent")
    (old.root / "etc/ctrl-exec-agent").mkdir(parents=True)
    (old.root / "etc/ctrl-exec-agent/agent.conf").write_text(
        "port = 7443\ncert = /etc/ctrl-exec-agent/agent.crt\n"
        "key = /etc/ctrl-exec-agent/agent.key\nca = /etc/ctrl-exec-agent/ca.crt\n"
    )
    case["agent", "import-config"].success.append(agent(old, "import-config", "--dry-run"))
    case["agent", "import-config"].error = agent(unpaired, "import-config")
    case["agent", "promote-cert"].success.append(agent(a, "promote-cert"))
    case["agent", "promote-cert"].error = agent(a, "promote-cert", "--config", MISSING_CONFIG)
    staged = hosts.site.layout.agent_state / "agent.crt.staged"
    staged.write_bytes(hosts.site.layout.agent_cert.read_bytes())
    try:
        case["agent", "cert-staged"].success.append(agent(a, "cert-staged"))
    finally:
        staged.unlink()
    case["agent", "cert-staged"].error = agent(a, "cert-staged")
    # serve: a second paired host; its one line comes once it listens
    s = hosts.fresh("serve-host")
    agentproc.install_site(session_ca, s.root, hosts.issued, name="json-02", scripts=SCRIPTS)
    proc = s.popen("agent", "--json", "serve", "--pidfile", str(s.root / "serve.pid"))
    try:
        line = proc.stdout.readline()
    finally:
        proc.terminate()
        proc.wait(30)
    case["agent", "serve"].success.append(
        subprocess.CompletedProcess(proc.args, 0, line, proc.stderr.read())
    )
    case["agent", "serve"].error = agent(a, "serve", "--config", MISSING_CONFIG)


@pytest.fixture(scope="module")
def exercised(session_ca, pyz_for, tmp_path_factory):
    base = tmp_path_factory.mktemp("json-everywhere")
    with running_fleet(session_ca, pyz_for, base, ("json-01",), SCRIPTS, ca_key=True) as fleet:
        hosts = Hosts(fleet, pyz_for)
        exercise_dispatcher(hosts)
        exercise_pairing(hosts)
        exercise_agent(hosts, session_ca)
    return CASES


def test_every_command_has_a_row_and_a_case():
    commands = parser_commands()
    assert set(documented_rows()) == commands, "docs/running.md's --json table"
    assert set(CASES) == commands, "CASES in this file"


# `ced db` needs a PostgreSQL server: its row is checked by its own test.
NEEDS_DATABASE = {("ced", "db")}


@pytest.mark.parametrize("command", sorted(set(CASES) - NEEDS_DATABASE), ids=" ".join)
def test_json_row(command, exercised):
    check_row(command, exercised[command])


def test_json_row_ced_db(pg_server, pg_database, pyz_for, tmp_path):
    node = pyz_for(tmp_path / "node")
    url = pg_server.url(pg_database)
    password = pg_server.password_file(tmp_path)
    apiproc.write_config(node.root, state_backend=url, state_password_file=str(password))
    case = Case(CASES["ced", "db"].success_keys, error_exit=CASES["ced", "db"].error_exit)
    case.success.append(ced(node, "db", "migrate"))
    case.error = ced(pyz_for(tmp_path / "files-backend"), "db", "status")
    check_row(("ced", "db"), case)
    status = one_json(ced(node, "db", "status"))
    assert status["ok"] == 1 and status["up_to_date"] is True, status


def check_row(command: tuple[str, str], case: Case) -> None:
    _, success_cell, error_cell, exits_cell = documented_rows()[command]
    listed_exits = {int(code) for code in re.findall(r"\b(\d+)\b", exits_cell)}
    assert case.success, "no success run"
    for completed in case.success:
        assert completed.returncode == case.success_exit, (completed.args, completed.stderr)
        value = one_json(completed)
        objects = value if isinstance(value, list) else [value]
        assert objects, f"{command}: success printed an empty list"
        for item in objects:
            assert isinstance(item, dict)
            assert item.get("ok", 1), (command, item)
            assert "error" not in item, (command, item)
    first = one_json(case.success[0])
    keys = set((first[0] if isinstance(first, list) else first).keys())
    for key in case.success_keys:
        assert key in keys, (command, key, first)
        assert f'"{key}"' in success_cell or f"`{key}`" in success_cell, (command, key)
    assert case.success_exit in listed_exits, (command, exits_cell)
    assert case.error is not None, "no error run"
    error = one_json(case.error)
    assert isinstance(error, dict), error
    assert error["ok"] in (0, False), (command, error)
    assert isinstance(error["error"], str) and error["error"], (command, error)
    assert case.error.returncode == case.error_exit, (command, case.error.returncode, error)
    assert case.error_exit in listed_exits, (command, exits_cell)
    assert '"error"' in error_cell or "`error`" in error_cell, command


def test_self_check_says_missing_and_shows_the_subject(exercised):
    case = exercised["agent", "self-check"]
    checks = {check["name"]: check for check in one_json(case.success[0])["checks"]}
    assert re.fullmatch(r"CN=json-01, \d+ days left", checks["certificate"]["detail"])
    failed = one_json(case.error)
    [gone] = [check for check in failed["checks"] if check["name"] == "script gone"]
    assert gone["ok"] is False and gone["detail"].endswith("[MISSING]")
    assert failed["error"] == "failed: script gone"
