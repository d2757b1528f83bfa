"""Interactive pairing mode, driven through a real pseudo-terminal: the
operator sees each request with its code and types a, d2, list, quit."""

from __future__ import annotations

import os
import re
import select
import subprocess
import time

from tests.support import openssl
from tests.support.agentproc import wait_for
from tests.support.pairing import agent_env, setup_dispatcher


class Terminal:
    """A child process on a pty, with expect-style reading."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
        os.close(slave)
        self.text = ""
        self.mark = 0

    def expect(self, pattern: str, timeout: float = 20) -> re.Match:
        """Wait for `pattern` in the output after the previous match."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern, re.M)
        while True:
            match = regex.search(self.text, self.mark)
            if match:
                self.mark = match.end()
                return match
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{pattern!r} not seen; output:\n{self.text[self.mark :]}")
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    data = b""
                if not data:
                    raise AssertionError(f"{pattern!r} not seen before EOF:\n{self.text}")
                self.text += data.decode("utf-8", "replace").replace("\r\n", "\n")

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        os.close(self.master)


def request(agent, port: int, name: str, *extra: str) -> tuple[str, str]:
    """(pairing code, reqid) of a background request-pairing."""
    result = agent.run(
        "agent",
        "request-pairing",
        "--dispatcher",
        "127.0.0.1",
        "--port",
        str(port),
        "--background",
        "--hostname",
        name,
        *extra,
        check=True,
    )
    lines = result.stdout.splitlines()
    return re.fullmatch(r"Pairing code: (\d{6})", lines[0]).group(1), lines[-1]


def test_interactive_pairing_mode(ctl, tmp_path):
    setup_dispatcher(ctl)
    terminal = Terminal(
        ctl.argv("ced", "pairing-mode", "--port", "0", "--timeout", "120"), ctl.env()
    )
    try:
        port = int(
            terminal.expect(
                r"Pairing mode active on port (\d+) \(auto-stops in 120s\)\. "
                r"Ctrl-C or 'quit' to stop\."
            ).group(1)
        )
        terminal.expect(r"Waiting for pairing requests")
        agent_a = agent_env(ctl, tmp_path / "a")
        code, reqid = request(agent_a, port, "web-a")
        terminal.expect(rf"Pairing request from web-a \(127\.0\.0\.1\) - ID: {reqid}")
        terminal.expect(rf"Code:\s+{code}\s")
        terminal.expect(re.escape("Accept, Deny, or Skip? [a/d/s]: "))
        terminal.type("a")
        terminal.expect(rf"Approved 'web-a' \({reqid}\)")
        wait_for(
            (agent_a.root / "var/lib/ctrl-exec-agent/ctrl-exec-dispatchers").exists,
            what="web-a's certificate",
        )
        assert agent_a.run("agent", "pairing-status").returncode == 0

        agent_b, agent_c = agent_env(ctl, tmp_path / "b"), agent_env(ctl, tmp_path / "c")
        request(agent_b, port, "web-b", "--key-type", "ec")
        terminal.expect(r"Pairing request from web-b")
        terminal.type("s")
        terminal.expect(r"Skipped; the request stays pending\.")
        request(agent_c, port, "web-c")
        terminal.expect(r"2 pending pairing requests:")
        terminal.type("list")
        header = terminal.expect(r"2 pending pairing requests:")
        prompt = terminal.expect(re.escape("Command (a1/d1/a2/d2/list/quit): "))
        rows = re.findall(r"\[(\d)\] (web-[bc]) ", terminal.text[header.end() : prompt.start()])
        number = {name: n for n, name in rows}
        assert set(number) == {"web-b", "web-c"}
        terminal.type("a")
        terminal.expect(r"Several requests are pending: use a1, a2")
        terminal.type(f"d{number['web-c']}")
        terminal.expect(r"Denied request '[0-9a-f]{16}' from 'web-c'")
        terminal.type("bogus")
        terminal.expect(r"Unknown command 'bogus'")
        terminal.type("a1")
        terminal.expect(r"Approved 'web-b'")
        wait_for((agent_b.root / "etc/ctrl-exec-agent/agent.crt").exists, what="web-b's cert")
        assert "ASN1 OID: prime256v1" in openssl.run(
            "x509", "-in", str(agent_b.root / "etc/ctrl-exec-agent/agent.crt"), "-noout", "-text"
        )
        terminal.type("quit")
        terminal.expect(r"Pairing mode stopped\.")
        assert terminal.proc.wait(10) == 0
    finally:
        terminal.close()

    assert not (agent_c.root / "etc/ctrl-exec-agent/agent.crt").exists()
    registered = sorted(p.name for p in (ctl.root / "var/lib/ctrl-exec/agents").glob("*.json"))
    assert registered == ["web-a.json", "web-b.json"]
    log = ctl.log_text()
    assert "ACTION=pair-deny AGENT=web-c" in log and "ACTION=pairing-mode-stop" in log
