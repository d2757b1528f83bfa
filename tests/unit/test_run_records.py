"""Run records: async state transitions, failure rules and status text (the
run store on real files is in tests/integration/test_run_store.py)."""

from __future__ import annotations

from ctrlexec.core import report, run_record
from ctrlexec.core.results import FETCH, RUN, SUBMIT, HostResult
from tests.support.tables import each_case

SUBMITTED = [
    HostResult(SUBMIT, wire)
    for wire in (
        {"host": "a", "script": "s", "status": "accepted", "reqid": "r", "rtt": "1ms"},
        {"host": "b", "script": "s", "status": "busy", "error": "script already running"},
        {"host": "c", "script": "s", "exit": -1, "error": "odd"},
        {"host": "d", "script": "s", "status": "accepted"},
    )
]


def merge(record: dict, answers: dict[str, dict]) -> bool:
    """merge_fetched with `/result` answers given as their wire objects."""
    return run_record.merge_fetched(
        record, {name: HostResult(FETCH, wire) for name, wire in answers.items()}
    )


def ran(*wires: dict) -> list[HostResult]:
    return [HostResult(RUN, wire) for wire in wires]


def test_async_record():
    record = run_record.async_record("r", "s", SUBMITTED, 100, {"username": "u", "source_ip": "ip"})
    assert record == {
        "reqid": "r",
        "script": "s",
        "mode": "async",
        "created": 100,
        "hosts": {
            "a": {"status": "accepted"},
            "b": {"status": "busy", "error": "script already running"},
            "c": {"status": "error", "error": "odd"},
            "d": {"status": "accepted"},
        },
        "pending": ["a", "d"],
        "complete": False,
        "submitter": {"username": "u", "source_ip": "ip"},
    }
    assert "submitter" not in run_record.public(record)


def test_merge_transitions():
    record = run_record.async_record("r", "s", SUBMITTED, 100)
    record["hosts"]["d"]["fetch_error"] = "earlier"
    changed = merge(
        record,
        {
            "a": {
                "host": "a",
                "status": "done",
                "exit": 3,
                "stdout": "o",
                "stderr": "e",
                "owner": "x",
                "rtt": "1ms",
            },
            "b": {"host": "b", "status": "done", "exit": 0},  # terminal: stays busy
            "d": {"host": "d", "status": "running"},
        },
    )
    assert changed
    assert record["hosts"]["a"] == {"status": "done", "exit": 3, "stdout": "o", "stderr": "e"}
    assert record["hosts"]["b"]["status"] == "busy"
    assert record["hosts"]["d"] == {"status": "running"}
    assert record["pending"] == ["d"] and record["complete"] is False
    assert not merge(record, {"d": {"status": "running"}})
    assert merge(record, {"d": {"status": "error", "error": "refused"}})
    assert record["hosts"]["d"] == {"status": "running", "fetch_error": "refused"}
    merge(record, {"d": {"status": "something-new"}})
    assert record["hosts"]["d"]["fetch_error"] == "fetch failed"
    merge(record, {"d": {"status": "unknown", "reqid": "r"}})
    assert record["hosts"]["d"] == {"status": "expired"}
    assert record["complete"] is True and record["pending"] == []


def test_interrupted_is_kept():
    record = run_record.async_record("r", "s", SUBMITTED[:1], 1)
    merge(
        record,
        {
            "a": {
                "status": "done",
                "exit": -1,
                "stdout": "",
                "stderr": "",
                "error": "interrupted: x",
                "interrupted": True,
            }
        },
    )
    assert record["hosts"]["a"]["interrupted"] is True
    assert run_record.any_failed(record)


HOST_FAILED_CASES = [
    ({"status": "done", "exit": 0}, False),
    ({"status": "done", "exit": 2}, True),
    ({"status": "done", "exit": None}, True),
    ({"status": "done", "exit": False}, True),
    ({"status": "busy"}, True),
    ({"status": "error"}, True),
    ({"status": "expired"}, True),
    ({"status": "running"}, False),
]


def test_host_failed():
    def check(entry, failed):
        assert run_record.host_failed(entry) is failed

    each_case(HOST_FAILED_CASES, check)


def test_sync_failures():
    ok = run_record.sync_record("r", "s", ["a"], ran({"host": "a", "exit": 0}), 5)
    assert ok["complete"] is True and not run_record.any_failed(ok)
    assert "submitter" not in ok
    bad = run_record.sync_record("r", "s", ["a"], ran({"host": "a", "exit": 0}, {"exit": -1}), 5)
    assert run_record.any_failed(bad)


def test_status_text():
    record = run_record.async_record("0123", "s", SUBMITTED, 1)
    merge(
        record,
        {
            "a": {"status": "done", "exit": 1, "stdout": "out\n", "stderr": "err\n"},
            "d": {"status": "error", "error": "host 'd' did not respond"},
        },
    )
    assert report.status_text(record) == (
        "Request 0123  (script: s)  [PENDING]\n"
        "==> a  [done  exit:1]\nout\n    STDERR: err\n"
        "==> b  [BUSY]\n    script already running\n"
        "==> c  [ERROR]\n    odd\n"
        "==> d  [accepted]\n    (fetch pending: host 'd' did not respond)\n"
    )
    sync = run_record.sync_record(
        "0123",
        "s",
        ["a"],
        ran({"host": "a", "exit": 0, "rtt": "3ms", "reqid": "0123", "stdout": "hi\n"}),
        1,
    )
    assert report.status_text(sync) == (
        "Request 0123  (script: s)  [COMPLETE]\n==> a  [OK  exit:0  3ms  req:0123]\nhi\n"
    )


def test_async_submit_text():
    assert report.async_submit_text("ab", SUBMITTED[:3], "ced status") == (
        "Submitted async run  req:ab\n==> a  [accepted  1ms]\n"
        "==> b  [BUSY: script already running]\n==> c  [ERROR: odd]\n"
        "Check progress with: ced status ab\n"
    )
