"""The agent's memory under large outputs: eight scripts printing 8 MiB
each at once do not take the agent's peak RSS up by their sum. Running
output waits in temporary files; finished output is turned into replies
within `output_memory` (agent/output_budget.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support import testpki
from tests.support.agentproc import AgentProcess, DispatcherClient, install_site

MIB = 1_048_576
SIZE = 8 * MIB
COUNT = 8
BIG = f"#!/bin/sh\nhead -c {SIZE} /dev/zero | tr '\\000' a\n"


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.slow
def test_concurrent_large_outputs_do_not_add_up_in_memory(session_ca, pyz_for, tmp_path):
    dispatcher = testpki.install_dispatcher(session_ca, tmp_path / "dispatcher")
    settings = {"max_output_bytes": SIZE, "output_memory": SIZE}
    site = install_site(
        session_ca,
        tmp_path / "agent",
        dispatcher,
        scripts={"big": BIG, "small": "#!/bin/sh\necho hi\n"},
        settings=settings,
    )
    agent = AgentProcess(pyz_for(tmp_path / "agent"), site).start()
    client = DispatcherClient.for_dispatcher(tmp_path / "dispatcher")
    try:
        assert client.run(site.port, "small")["stdout"] == "hi\n"
        before = _peak_rss(agent.pid)
        with ThreadPoolExecutor(COUNT) as pool:
            replies = list(
                pool.map(
                    lambda i: client.request(
                        site.port, "POST", "/run", {"script": "big", "reqid": f"b{i}"}, 300
                    ).json(),
                    range(COUNT),
                )
            )
        growth = _peak_rss(agent.pid) - before
    finally:
        agent.stop()
    assert [len(r["stdout"]) for r in replies] == [SIZE] * COUNT
    assert all(r["exit"] == 0 and "truncated" not in r["stderr"] for r in replies)
    print(f"agent peak RSS grew by {growth / MIB:.1f} MiB for {COUNT} x {SIZE // MIB} MiB")
    # Unbounded, the replies overlap: about 200 MiB here; bounded, about 40.
    assert growth < COUNT * SIZE, f"peak RSS grew by {growth / MIB:.1f} MiB"
