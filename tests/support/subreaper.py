"""Run a command as a child subreaper (Linux prctl), so that processes it
leaves behind (request-pairing --background's detached child) are reparented
here and their exit codes can be collected.

Prints two JSON lines: the command's own result as soon as it exits, then
the exit codes of every orphaned descendant once they have all exited.
"""

import ctypes
import json
import os
import subprocess
import sys

PR_SET_CHILD_SUBREAPER = 36


def main() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    result = subprocess.run(sys.argv[1:], capture_output=True, text=True)
    print(
        json.dumps({"rc": result.returncode, "stdout": result.stdout, "stderr": result.stderr}),
        flush=True,
    )
    codes = []
    while True:
        try:
            _, status = os.wait()
        except ChildProcessError:
            break
        codes.append(os.waitstatus_to_exitcode(status))
    print(json.dumps({"exit_codes": codes}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
