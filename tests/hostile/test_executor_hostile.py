"""Hostile frames on the executor's socket, sent by the agent's own user
(the one peer it accepts besides root): truncated, oversized, lengths that
lie, a stalled half frame, and 1,000 random frames. Each gets a clear
`exit -1` answer, nothing runs, and the executor keeps serving. Needs root."""

from __future__ import annotations

import os

import pytest

from ctrlexec.core import exec_frames
from tests.support import testpki
from tests.support.agentproc import install_site
from tests.support.executorproc import (
    ExecutorProcess,
    require_root,
    run_as,
    shared_root,
    temporary_user,
)

AGENT_USER = f"ce-exh-{os.getpid()}"  # unique: suites may run side by side

# Runs as the agent's user: sends each case on its own connection, closes
# its sending side, and returns every reply (hex).
SENDER = r"""
import json, random, socket, struct, sys

path, marker_frame = sys.argv[1], bytes.fromhex(sys.argv[2])

def field(b):
    return struct.pack(">I", len(b)) + b

def frame(script, args=(), fields=None):
    body = b"".join(field(f) for f in (fields or [b"r1", b"disp", script, b"{}"]))
    body += struct.pack(">I", len(args)) + b"".join(field(a) for a in args)
    return struct.pack(">I", len(body)) + body

good = frame(b"nothere", (b"a", b"b"))
cases = {
    "empty": b"",
    "truncated prefix": b"\x00\x00",
    "truncated body": good[:-3],
    "oversized": struct.pack(">I", 16 * 1048576 + 1) + b"x" * 1000,
    "huge claim": struct.pack(">I", 0xFFFFFFFF),
    "too small": struct.pack(">I", 4) + b"abcd",
    "field past end": struct.pack(">I", 24) + struct.pack(">I", 1000) + b"\x00" * 20,
    "total past data": struct.pack(">I", 5000) + good[4:],
    "argc lies": good[:-len(b"a") - 4 - len(b"b") - 4 - 4] + struct.pack(">I", 9),
    "too many args": frame(b"nothere", tuple(b"x" for _ in range(257))),
    "trailing bytes": struct.pack(">I", len(good) - 4 + 3) + good[4:] + b"abc",
    "bad name": frame(b"../../bin/sh"),
    "nul arg": frame(b"nothere", (b"a\x00b",)),
    "not utf-8": frame(b"nothere", (b"\xff\xfe",)),
}
rng = random.Random(20261129)
for i in range(1000):
    kind = i % 3
    if kind == 0:
        data = rng.randbytes(rng.randrange(0, 200))
    elif kind == 1:
        body = rng.randbytes(rng.randrange(0, 300))
        data = struct.pack(">I", rng.choice([len(body), rng.randrange(0, 400)])) + body
    else:
        data = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = bytes(data)
    cases[f"random {i}"] = data

def exchange(data, close_write=True):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(60)
    s.connect(path)
    try:
        s.sendall(data)
        if close_write:  # the executor reads end of file as "cancel the run"
            s.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    reply = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        reply += chunk
    s.close()
    return reply.hex()

out = {name: exchange(data) for name, data in cases.items()}
out["stalled"] = exchange(good[:10], close_write=False)  # half a frame, then silence
out["__control__"] = exchange(marker_frame, close_write=False)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def executor(session_ca, pyz_for):
    require_root()
    with temporary_user(AGENT_USER), shared_root("ce-exec-hostile-") as base:
        ctl = pyz_for(base / "agent")
        # the canary, running as root here, writes its marker; its directory
        # is open to all, the socket's stays root's (executor/rootonly.py)
        outbox = base / "out"
        outbox.mkdir()
        outbox.chmod(0o777)
        marker = outbox / "marker"
        site = install_site(
            session_ca,
            ctl.root,
            testpki.install_dispatcher(session_ca, base / "dispatcher"),
            scripts={},
        )
        site.add_script("canary", f'#!/bin/sh\necho ran >> "{marker}"\n', profile="root")
        sock = ctl.root / "run" / "exec.sock"
        site.settings["executor_socket"] = str(sock)
        site.write_config()
        config = site.layout.agent_config
        config.write_text(config.read_text() + '\n[profile.root]\nrun_as = "root"\n')
        site.write_allowlist()
        process = ExecutorProcess(ctl, sock, AGENT_USER).start()
        try:
            yield {"ctl": ctl, "socket": sock, "marker": marker, "process": process}
        finally:
            process.stop()


def _answer(hex_reply: str) -> tuple[exec_frames.ExecEnd | None, str]:
    parser = exec_frames.ResponseParser(1_048_576)
    end = parser.feed(bytes.fromhex(hex_reply))
    return end, parser.stderr.decode()


def test_hostile_frames_get_clear_errors_and_run_nothing(executor):
    control = exec_frames.encode_request(exec_frames.ExecRequest("ok-1", "d", "canary", b"", ()))
    replies = run_as(AGENT_USER, SENDER, str(executor["socket"]), control.hex(), timeout=600)
    control_end, control_err = _answer(replies.pop("__control__"))
    problems = []
    for name, reply in replies.items():
        end, stderr = _answer(reply)
        clear = stderr.startswith("executor: malformed request (") or stderr == (
            "executor: script not permitted\n"
        )
        if end is None or end.exit != -1 or not clear:
            problems.append((name, end, stderr[:200]))
    assert not problems, problems[:10]
    assert len(replies) == 1015
    specific = {
        name: _answer(replies[name])[1] for name in ("oversized", "truncated body", "stalled")
    }
    assert "exceeds 16777216" in specific["oversized"]
    assert "truncated request" in specific["truncated body"]
    assert "request not received within 10 s" in specific["stalled"]
    # Nothing ran but the well-formed control request sent last, and the
    # executor is still serving.
    assert control_end == exec_frames.ExecEnd(0), control_err
    assert executor["marker"].read_text() == "ran\n"
    log = executor["ctl"].log_text()
    assert log.count("ACTION=exec-run ") == 1
    assert "Traceback" not in log and "ACTION=exec-error" not in log
    assert executor["process"].alive()
