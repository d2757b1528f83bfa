"""Real auth-hook executables for tests.

`write_hook(path, behaviour, record=dir)` writes an executable that records
what it was given (its ENVEXEC_* environment as `env.json`, its stdin as
`stdin.json`, one pair per call, numbered) and then behaves as asked:

- an int: exit with that status (0 allows, 1-3 the 0.12 reasons, other N);
- a dict: per ENVEXEC_ACTION, one of these ("*" for the others, default 0);
- "hang": never finish (the caller's timeout must kill it);
- "crash": die of SIGSEGV (0.12 would let that through; we deny).
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

_TEMPLATE = """#!{python}
import itertools, json, os, signal, sys, time
record = {record!r}
if record:
    for n in itertools.count(1):
        try:
            fd = os.open(
                os.path.join(record, f"call-{{n}}.env.json"), os.O_WRONLY | os.O_CREAT | os.O_EXCL
            )
        except FileExistsError:
            continue
        break
    with os.fdopen(fd, "w") as out:
        json.dump({{k: v for k, v in os.environ.items() if k.startswith("ENVEXEC_")}}, out)
    stdin = sys.stdin.buffer.read()
    with open(os.path.join(record, f"call-{{n}}.stdin.json"), "wb") as out:
        out.write(stdin)
behaviour = {behaviour!r}
if isinstance(behaviour, dict):
    behaviour = behaviour.get(os.environ.get("ENVEXEC_ACTION"), behaviour.get("*", 0))
if behaviour == "hang":
    while True:
        time.sleep(60)
if behaviour == "crash":
    os.kill(os.getpid(), signal.SIGSEGV)
sys.exit(behaviour)
"""


def write_hook(path: Path, behaviour: int | str | dict, record: Path | None = None) -> Path:
    if record is not None:
        record.mkdir(parents=True, exist_ok=True)
    path.write_text(
        _TEMPLATE.format(
            python=sys.executable, record=str(record) if record else "", behaviour=behaviour
        )
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def calls(record: Path) -> list[tuple[dict, dict]]:
    """(environment, stdin JSON) of every recorded call, in order."""
    found = []
    n = 1
    while (record / f"call-{n}.env.json").exists():
        env = json.loads((record / f"call-{n}.env.json").read_text())
        stdin_path = record / f"call-{n}.stdin.json"
        stdin = json.loads(stdin_path.read_bytes()) if stdin_path.exists() else {}
        found.append((env, stdin))
        n += 1
    return found
