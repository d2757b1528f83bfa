"""Cost of containing a hook or script call (ctrlexec/contain.py). Prints
figures; asserts nothing.

    .venv/bin/python bench/bench_contain.py [--calls N]

For each way (none: a bare Popen in a new session, as before containment;
sweep; cgroup, when this process may create cgroups) it starts /bin/true N
times, the way hooks.run_hook starts a hook, and prints the mean and p90 of
one whole call (start, wait, end of the call's container) in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time

from ctrlexec import contain


def one_call(way: str) -> float:
    start = time.perf_counter()
    if way == "none":
        subprocess.Popen(["/bin/true"], start_new_session=True, close_fds=True).wait()
        return time.perf_counter() - start
    call = contain.open_call()
    env = dict(os.environ, **call.env())
    proc = subprocess.Popen(
        ["/bin/true"], env=env, start_new_session=True, close_fds=True, preexec_fn=call.preexec()
    )
    call.started(proc.pid)
    proc.wait()
    call.finish()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    ways = ["none", "sweep"]
    if contain.mode() == "cgroup":
        ways.append("cgroup")
    else:
        print("cgroup: not available to this process (root with cgroup v2 needed)")
    for way in ways:
        os.environ[contain.MODE_ENV] = "sweep" if way == "sweep" else "auto"
        times = sorted(one_call(way) * 1000 for _ in range(args.calls))
        p90 = times[int(len(times) * 0.9)]
        print(f"{way:7} mean {statistics.mean(times):6.2f} ms   p90 {p90:6.2f} ms")


if __name__ == "__main__":
    main()
