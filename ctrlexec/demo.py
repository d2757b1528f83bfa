"""The demo (`ctrl-exec.pyz demo`): a whole ctrl-exec on loopback, in one throwaway directory.

It does what an operator does on a new fleet, with the real commands: create
a CA, give the dispatcher its certificate, open pairing mode, let an agent
ask to pair, approve it once the codes match, start the agent, then
`ced ping` and `ced run`. Every step runs this same program as a separate
process under `--root DIR`, so nothing outside DIR is touched.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import _bootstrap
from .config.paths import system_layout
from .errors import DemoFailed

STEP_TIMEOUT = 60
READY_TIMEOUT = 20
DEMO_SCRIPTS = ("hello", "uptime-report", "fail-on-purpose")
# Arguments that a shell would mangle: they arrive at the script exactly.
DEMO_ARGS = ("two words", "", "ünïcödé", "$HOME;true")
PAIRING_CODE = re.compile(r"\b(\d{6})\b")


def _self_command() -> list[str]:
    archive = _bootstrap._archive_path()
    if archive:
        return [sys.executable, archive]
    return [sys.executable, "-m", "ctrlexec"]


def _example_bytes(relative: str) -> bytes:
    archive = _bootstrap._archive_path()
    if archive:
        with zipfile.ZipFile(archive) as bundle:
            return bundle.read(f"examples/{relative}")
    return (Path(__file__).resolve().parents[1] / "examples" / relative).read_bytes()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_pidfile(pidfile: Path, process: subprocess.Popen, what: str) -> None:
    """The agent writes its pidfile once it listens. Probing its port instead
    would count as a failed handshake towards the agent's probe limit."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DemoFailed(f"{what} exited with status {process.returncode} before listening")
        if pidfile.exists():
            return
        time.sleep(0.02)
    raise DemoFailed(f"{what} did not start within {READY_TIMEOUT}s")


def _wait_for_port(port: int, process: subprocess.Popen, what: str) -> None:
    """For the pairing listener, which expects (and ignores) a bare probe."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DemoFailed(f"{what} exited with status {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise DemoFailed(f"{what} did not listen on 127.0.0.1:{port} within {READY_TIMEOUT}s")


class Demo:
    def __init__(self, root: Path, say: Callable[[str], None], keep: bool):
        self.root = root
        self.layout = system_layout(root)
        self._say = say
        self.keep = keep
        self.command = _self_command()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CTRL_EXEC_")}
        self.env.update(CTRL_EXEC_ROOT=str(root), CTRL_EXEC_LOG_TARGET=str(root / "ctrl-exec.log"))
        if "CTRL_EXEC_CACHE_DIR" in os.environ:
            self.env["CTRL_EXEC_CACHE_DIR"] = os.environ["CTRL_EXEC_CACHE_DIR"]
        self.background: list[subprocess.Popen] = []
        self.agent_name = ""
        self.agent_port = 0
        self.agent_process: subprocess.Popen | None = None

    # running ourselves -------------------------------------------------
    def say(self, text: str = "") -> None:
        self._say(text)

    def show(self, role: str, args: list[str]) -> None:
        self.say(f"  $ {role} " + " ".join(shlex.quote(a) for a in args))

    def run(self, role: str, *args: str, quiet: bool = False) -> subprocess.CompletedProcess:
        if not quiet:
            self.show(role, list(args))
        result = subprocess.run(
            [*self.command, role, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0 and not quiet:
            self.indent(result.stdout + result.stderr)
        return result

    def must(self, role: str, *args: str, quiet: bool = False) -> subprocess.CompletedProcess:
        result = self.run(role, *args, quiet=quiet)
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise DemoFailed(
                f"`{role} {' '.join(args)}` exited {result.returncode}"
                + (f": {detail[-1]}" if detail else "")
            )
        return result

    def start(self, role: str, *args: str, log_name: str) -> subprocess.Popen:
        self.show(role, list(args))
        with open(self.root / log_name, "w") as log_file:
            process = subprocess.Popen(
                [*self.command, role, *args],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.background.append(process)
        return process

    def indent(self, text: str) -> None:
        for line in text.rstrip("\n").splitlines():
            self.say(f"    {line}")

    # the steps ---------------------------------------------------------
    def make_ca(self) -> None:
        self.say("1. Create the private CA and the dispatcher's certificate")
        self.must("ced", "setup-ca")
        self.must("ced", "setup-ctrl-exec")

    def install_agent_files(self) -> None:
        scripts_dir = self.root / "opt/ctrl-exec-scripts"
        scripts_dir.mkdir(parents=True)
        for name in DEMO_SCRIPTS:
            path = scripts_dir / name
            path.write_bytes(_example_bytes(f"scripts/{name}"))
            path.chmod(0o755)
        allowlist = (
            _example_bytes("scripts.toml")
            .decode()
            .replace('"/opt/ctrl-exec-scripts/', f'"{scripts_dir}/')
        )
        self.layout.agent_etc.mkdir(parents=True, exist_ok=True)
        self.layout.allowlist.write_text(allowlist)
        self.agent_port = _free_port()
        self.layout.agent_config.write_text(
            "# Written by ctrl-exec demo.\n"
            f'bind = "127.0.0.1"\nport = {self.agent_port}\n'
            f'script_dirs = [{json.dumps(str(scripts_dir))}]\n\n[tags]\nrole = "demo"\n'
            "\n[profile.default]\n"
        )

    def pair(self) -> None:
        pairing_port = _free_port()
        self.say(f"\n2. Open pairing mode on 127.0.0.1:{pairing_port}")
        listener = self.start(
            "ced",
            "pairing-mode",
            "--port",
            str(pairing_port),
            "--timeout",
            "120",
            log_name="pairing-mode.log",
        )
        _wait_for_port(pairing_port, listener, "ced pairing-mode")

        self.say("\n3. The agent generates its key and asks to pair")
        port = str(pairing_port)
        ask = ["request-pairing", "--dispatcher", "127.0.0.1", "--port", port, "--background"]
        self.show("agent", ask)
        requester = subprocess.Popen(
            [*self.command, "agent", *ask],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.background.append(requester)
        code = self._read_pairing_code(requester)
        self.say(f"    the agent shows pairing code {code}")

        self.say("\n4. The operator checks the code on the dispatcher side and approves")
        request = self._find_request(code)
        self.say(
            f"    request {request['reqid']} from {request.get('hostname', '?')} "
            f"({request.get('ip', '?')}) shows code {request['code']}: it matches"
        )
        self.must("ced", "approve", request["reqid"], "--agent-port", str(self.agent_port))
        self._wait_until_paired()
        self.agent_name = request["hostname"]
        self.say(
            f"    the agent stored its certificate; the dispatcher registered '{self.agent_name}'"
        )
        self.run("ced", "pairing-mode", "stop", quiet=True)
        self._stop(listener)

    def _wait_until_paired(self) -> None:
        """`request-pairing --background` hands the wait to a detached child;
        `agent paired` says when that child has stored the certificate."""
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            if self.run("agent", "paired", quiet=True).returncode == 0:
                return
            time.sleep(0.1)
        raise DemoFailed("the agent did not store its certificate after approval")

    def _read_pairing_code(self, requester: subprocess.Popen) -> str:
        assert requester.stdout is not None
        deadline = time.monotonic() + STEP_TIMEOUT
        seen = []
        while time.monotonic() < deadline:
            line = requester.stdout.readline()
            if not line:
                break
            seen.append(line)
            match = PAIRING_CODE.search(line)
            if match and "code" in line.lower():
                return match.group(1)
        raise DemoFailed("agent request-pairing printed no pairing code:\n" + "".join(seen))

    def _find_request(self, code: str) -> dict:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            listed = json.loads(self.must("ced", "list-requests", "--json", quiet=True).stdout)
            requests = listed if isinstance(listed, list) else listed.get("requests", [])
            for request in requests:
                if str(request.get("code")) == code:
                    return request
            time.sleep(0.1)
        raise DemoFailed(f"no pending pairing request shows code {code}")

    def serve(self) -> None:
        self.say(f"\n5. Start the agent on 127.0.0.1:{self.agent_port}")
        self.agent_process = self.start("agent", "serve", log_name="agent.log")
        _wait_for_pidfile(self.layout.agent_pidfile, self.agent_process, "agent serve")

    def use(self) -> None:
        self.say("\n6. Use it: ping the agent, then run an allowlisted script")
        ping = self.must("ced", "ping", self.agent_name)
        self.indent(ping.stdout)
        run = self.must("ced", "run", self.agent_name, "hello", "--", *DEMO_ARGS)
        self.indent(run.stdout)
        if f"[{DEMO_ARGS[0]}]" not in run.stdout:
            raise DemoFailed("the script's output does not show its arguments")

    # ending ------------------------------------------------------------
    def _stop(self, process: subprocess.Popen) -> None:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait()

    def finish(self, succeeded: bool) -> None:
        keep_agent = self.keep and succeeded and self.agent_process is not None
        for process in self.background:
            if keep_agent and process is self.agent_process:
                continue
            self._stop(process)
        if keep_agent:
            assert self.agent_process is not None
            self.print_keep_instructions(self.agent_process.pid)
        elif self.keep or not succeeded:
            self.say(f"\nFiles kept in {self.root} (logs: {self.root}/*.log)")
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def print_keep_instructions(self, pid: int) -> None:
        me = " ".join(shlex.quote(part) for part in self.command)
        self.say(f"""
The agent keeps running (pid {pid}). Everything lives in {self.root}.
Try:
  export CTRL_EXEC_ROOT={shlex.quote(str(self.root))}
  {me} ced list-agents
  {me} ced run {self.agent_name} uptime-report
  {me} ced run {self.agent_name} fail-on-purpose -- 7
  {me} ced ping {self.agent_name} --json
Stop and clean up:
  kill {pid} && rm -rf {shlex.quote(str(self.root))}""")


@dataclass(frozen=True)
class Outcome:
    succeeded: bool
    problem: str = ""  # why it did not, for a person


def run(parent: Path | None, keep: bool, say: Callable[[str], None]) -> Outcome:
    """Run the whole demo in a new directory under `parent` (default: the
    system temp dir), narrating through `say`. The directory is removed
    afterwards unless `keep` or a failure (then its logs help)."""
    root = Path(tempfile.mkdtemp(prefix="ctrl-exec-demo-", dir=parent)).resolve()
    demo = Demo(root, say, keep)
    demo.say(f"ctrl-exec demo: a CA, a dispatcher and an agent on loopback, in {root}\n")
    outcome = Outcome(False, "interrupted")
    try:
        demo.make_ca()
        demo.install_agent_files()
        demo.pair()
        demo.serve()
        demo.use()
        outcome = Outcome(True)
    except (DemoFailed, subprocess.TimeoutExpired) as problem:
        outcome = Outcome(False, f"failed: {problem}")
    except KeyboardInterrupt:
        outcome = Outcome(False, "interrupted")
    finally:
        demo.finish(outcome.succeeded)
    return outcome
