"""The dispatcher's reader of `/run-stream` frames (dispatcher/agent_stream):
frames cut anywhere, and the bounds on what one agent's stream may carry."""

import json

import pytest

from ctrlexec.core import results
from ctrlexec.dispatcher import agent_stream


def read(pieces: list[bytes]):
    feed = iter([*pieces[1:], b""])
    shown: list[tuple[str, str]] = []
    outcome = agent_stream._frames(
        pieces[0],
        lambda: next(feed),
        lambda stream, text: shown.append((stream, text)),
        lambda kind, detail="": results.Failure(kind, "a", 1, detail),
    )
    return outcome, shown


def frame(value: dict) -> bytes:
    return json.dumps(value).encode() + b"\n"


def test_frames_cut_anywhere_give_the_output_then_the_result():
    stream = (
        frame({"stream": "stdout", "data": "a\n"})
        + frame({"stream": "stderr", "data": "e"})
        + frame({"result": {"exit": 0, "stdout": "a\n"}})
    )
    for cut in range(1, len(stream)):
        outcome, shown = read([stream[:cut], stream[cut:]])
        assert isinstance(outcome, results.AgentReply), cut
        assert json.loads(outcome.body) == {"exit": 0, "stdout": "a\n"}
        assert shown == [("stdout", "a\n"), ("stderr", "e")]


def test_output_past_what_run_could_carry_ends_the_stream(monkeypatch):
    monkeypatch.setattr(agent_stream, "MAX_STREAM_OUTPUT", 1_000)
    chunk = frame({"stream": "stdout", "data": "x" * 300})
    outcome, shown = read([chunk] * 10 + [frame({"result": {"exit": 0}})])
    assert isinstance(outcome, results.Failure)
    assert outcome.detail == "stream output too large" and len(shown) == 3


@pytest.mark.parametrize("empty", [frame({"stream": "stdout", "data": ""}), b"{}\n"])
def test_endless_empty_frames_end_the_stream(monkeypatch, empty):
    monkeypatch.setattr(agent_stream, "MAX_STREAM_BYTES", 10_000)
    outcome, _ = read([empty * 100] * 1_000)
    assert isinstance(outcome, results.Failure) and outcome.detail == "stream too large"


def test_a_result_nested_too_deep_is_refused():
    deep: dict = {}
    for _ in range(results.MAX_REPLY_DEPTH + 1):
        deep = {"a": deep}
    outcome, _ = read([frame({"result": deep})])
    assert isinstance(outcome, results.Failure) and outcome.detail == "invalid result frame"
