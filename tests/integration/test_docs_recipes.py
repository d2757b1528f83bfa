"""Shell recipes of the docs, run as written.

docs/pairing.md's "Orchestrated pairing" block is taken from the document
itself and run by /bin/sh, with `ced` and `ctrl-exec-agent` as program-name
symlinks on PATH (as `install` creates them) and the dispatcher and the agent
under one throwaway root. Only the pairing port is changed (to a free one),
so the test never collides with anything listening on 7444.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from tests.conftest import REPO
from tests.support.agentproc import wait_for


def _block_after(document: str, heading: str) -> str:
    text = (REPO / document).read_text()
    after = text[text.index(heading) :]
    start = after.index("```sh\n") + len("```sh\n")
    return after[start : after.index("```", start)]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_orchestrated_pairing_recipe_pairs_an_agent(ctl, tmp_path):
    block = _block_after("docs/pairing.md", "## Orchestrated pairing")
    assert "ced approve" in block and "ced pairing-mode stop" in block
    port = _free_port()
    script = block.replace("7444", str(port))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("ced", "ctrl-exec-agent"):
        (bin_dir / name).symlink_to(ctl.path)
    (bin_dir / "python3").symlink_to(sys.executable)
    env = ctl.env({"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"})
    ctl.run("ced", "setup-ca", check=True)
    ctl.run("ced", "setup-ctrl-exec", check=True)
    try:
        done = subprocess.run(
            ["/bin/sh", "-eu", "-c", script],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        # the agent's background request receives its certificate
        wait_for(
            lambda: ctl.run("agent", "paired").returncode == 0, 60, "the agent to hold its cert"
        )
    finally:
        ctl.run("ced", "pairing-mode", "stop")
    agents = json.loads(ctl.run("ced", "list-agents", "--json", check=True).stdout)
    assert len(agents) == 1, agents
    assert ctl.run("ced", "list-requests", "--json", check=True).stdout.strip() == "[]"
