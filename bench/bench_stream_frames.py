"""How long the dispatcher takes to read a `/run-stream` reply, by the shape
the agent gives it. Prints figures; asserts nothing.

    .venv/bin/python bench/bench_stream_frames.py [--mib N]

Shapes (what a hostile agent may choose; a TLS record carries 16 KiB):
  long-frame   one frame of N MiB arriving in 16 KiB pieces, then its LF
  small-frames N MiB of the smallest valid frames (`{}`), 16 KiB at a time
  output       N MiB of ordinary output frames of 4 KiB each

The reader (dispatcher/agent_stream._frames) runs in this process on the
bytes alone: no socket, so the figures are its CPU cost per MiB.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ctrlexec.core import results
from ctrlexec.dispatcher import agent_stream

PIECE = 16_384


def _pieces(data: bytes) -> list[bytes]:
    return [data[i : i + PIECE] for i in range(0, len(data), PIECE)]


def shapes(mib: int) -> dict[str, list[bytes]]:
    size = mib * 1_048_576
    long_frame = b'{"stream":"stdout","data":"' + b"x" * size + b'"}\n'
    small = b"{}\n" * (size // 3)
    frame = json.dumps({"stream": "stdout", "data": "y" * 4096}).encode() + b"\n"
    output = frame * (size // len(frame))
    result = b'{"result":{"exit":0}}\n'
    return {
        "long-frame": _pieces(long_frame + result),
        "small-frames": _pieces(small + result),
        "output": _pieces(output + result),
    }


def measure(pieces: list[bytes]) -> tuple[float, str]:
    feed = iter([*pieces[1:], b""])
    started = time.perf_counter()
    outcome = agent_stream._frames(
        pieces[0],
        lambda: next(feed),
        lambda stream, text: None,
        lambda kind, detail="": results.Failure(kind, "bench", 0, detail),
    )
    elapsed = time.perf_counter() - started
    return elapsed, "ok" if isinstance(outcome, results.AgentReply) else outcome.detail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=16, help="size of each shape (default 16)")
    args = parser.parse_args()
    for name, pieces in shapes(args.mib).items():
        elapsed, outcome = measure(pieces)
        rate = elapsed / args.mib
        print(f"{name:<13} {args.mib} MiB: {elapsed:6.2f} s  ({rate:.3f} s/MiB, {outcome})")


if __name__ == "__main__":
    main()
