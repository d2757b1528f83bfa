"""host:script locks seen from other processes: a lock held here is held for
them, and a holder that dies leaves nothing behind (flock, not lock files)."""

import subprocess
import sys

from ctrlexec.dispatcher.locks import HostScriptLocks


def test_another_process_sees_the_lock(tmp_path):
    locks = HostScriptLocks(tmp_path)
    with locks.acquire(["vm"], "sleep"):
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from ctrlexec.dispatcher.locks import HostScriptLocks as L;"
                "from ctrlexec.errors import Locked\n"
                "try:\n L(sys.argv[1]).acquire(['vm'], 'sleep')\n"
                "except Locked as e: print(e.conflicts)",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        assert probe.stdout.strip() == "['vm:sleep']"
    assert locks.held() == []


def test_a_crashed_holder_leaves_no_lock(tmp_path):
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, os; from ctrlexec.dispatcher.locks import HostScriptLocks as L;"
            "h = L(sys.argv[1]).acquire(['vm'], 's'); print('held', flush=True); os._exit(9)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "held"
    child.wait()
    assert HostScriptLocks(tmp_path).held() == []
    HostScriptLocks(tmp_path).acquire(["vm"], "s").release()
