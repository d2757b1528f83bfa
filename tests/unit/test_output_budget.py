"""The agent's output budget and the runner's spill of running output to a
temporary file."""

from __future__ import annotations

import threading

from ctrlexec.agent import runner
from ctrlexec.agent.output_budget import SPILL_AFTER, OutputBudget


def test_budget_lets_one_oversized_grant_through_and_makes_others_wait():
    budget = OutputBudget(100)
    first = budget.acquire(250)  # alone: allowed although over the limit
    got = threading.Event()
    waiter = threading.Thread(target=lambda: (budget.acquire(10), got.set()))
    waiter.start()
    assert not got.wait(0.01)  # still held: the second waits
    budget.release(first)
    assert got.wait(30)
    waiter.join()
    assert budget.held == 10


def test_capture_spills_beyond_the_threshold_and_reads_back():
    capture = runner._Capture("stdout", 1_000_000)
    payload = bytes(range(256)) * ((SPILL_AFTER * 3) // 256)
    for start in range(0, len(payload), 4096):
        capture.add(payload[start : start + 4096])
    assert capture.file is not None and len(capture.data) == 0
    assert capture.size == len(payload)
    assert capture.text() == payload.decode("utf-8", "replace")
    assert capture.file is None  # closed once read


def test_capture_cap_counts_what_it_drops():
    capture = runner._Capture("stderr", SPILL_AFTER * 2)
    capture.add(b"x" * (SPILL_AFTER * 3))
    assert (capture.size, capture.dropped) == (SPILL_AFTER * 2, SPILL_AFTER)
    assert len(capture.text()) == SPILL_AFTER * 2
