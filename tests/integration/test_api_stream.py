"""The API's streamed runs (`POST /run` with `Accept: text/event-stream`),
end to end: `dispatcher serve` through the pyz, two real agents on loopback,
a ctrl-exec 0.12 stand-in for the fallback, and a raw-socket client that
reads the event stream as it arrives.

Blocking runs use the `block DIR` script (it creates DIR/started, waits
for DIR/go), so the tests await events instead of sleeping."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time

import pytest

from tests.support import agentproc, apiproc, openapi_check, testpki
from tests.support.fleet import running_fleet
from tests.support.peer012 import Peer012

NAMES = ("stream-01", "stream-02")
REQID = re.compile(r"[0-9a-f]{16}")
# A line every 0.5 s for 3 s, and one on stderr.
TICK = '#!/bin/sh\nfor i in 1 2 3 4 5 6; do echo "tick $i"; sleep 0.5; done\necho oops >&2\n'
SCRIPTS = dict(agentproc.APPENDIX_C_SCRIPTS, block=agentproc.BLOCK, tick=TICK)
SSE = {"Accept": "text/event-stream"}


class EventReader:
    """One streamed request on a raw socket; events parsed as the bytes
    arrive, each with the time it arrived."""

    def __init__(self, port: int, body: dict, accept: str = "text/event-stream"):
        payload = json.dumps(body).encode()
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sent = time.monotonic()
        self.sock.sendall(
            b"POST /run HTTP/1.1\r\nHost: x\r\nAccept: "
            + accept.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(payload)).encode()
            + b"\r\n\r\n"
            + payload
        )
        self.buffer = b""
        self.closed = False
        while b"\r\n\r\n" not in self.buffer:
            self._receive()
            assert not self.closed or b"\r\n\r\n" in self.buffer, self.buffer
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split(" ")[1])
        self.headers = dict(line.split(": ", 1) for line in lines)
        self.comments: list[bytes] = []

    def _receive(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            self.closed = True
        self.buffer += chunk

    def next_event(self) -> tuple[float, str, dict] | None:
        """(arrival, name, data), or None at the end of the stream."""
        while b"\n\n" not in self.buffer:
            if self.closed:
                assert self.buffer == b"", self.buffer
                return None
            self._receive()
        block, _, self.buffer = self.buffer.partition(b"\n\n")
        arrived = time.monotonic()
        if block.startswith(b":"):
            self.comments.append(block)
            return self.next_event()
        fields = dict(line.split(": ", 1) for line in block.decode().split("\n"))
        assert set(fields) == {"event", "data"}, block
        return arrived, fields["event"], json.loads(fields["data"])

    def rest(self) -> list[tuple[float, str, dict]]:
        events = []
        while (event := self.next_event()) is not None:
            events.append(event)
        self.close()
        return events

    def body(self) -> dict:
        """A plain (non-streamed) answer's JSON body."""
        while not self.closed:
            self._receive()
        self.close()
        return json.loads(self.buffer)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def fleet(session_ca, pyz_for, tmp_path_factory):
    base = tmp_path_factory.mktemp("api-stream")
    with running_fleet(session_ca, pyz_for, base, NAMES, SCRIPTS) as fleet:
        api = apiproc.ApiProcess(fleet.dispatcher, api_auth_default="allow").start()
        try:
            yield fleet.dispatcher, fleet.issued, api, base
        finally:
            api.stop()


def test_output_lines_arrive_as_the_scripts_write_them(fleet):
    _, _, api, _ = fleet
    stream = EventReader(api.port, {"hosts": list(NAMES), "script": "tick"})
    assert stream.status == 200
    assert stream.headers["Content-Type"] == "text/event-stream"
    assert "Content-Length" not in stream.headers
    first = stream.next_event()
    assert first is not None
    started_at, name, start = first
    assert name == "start"
    assert start == {"reqid": start["reqid"], "script": "tick", "hosts": list(NAMES)}
    assert REQID.fullmatch(start["reqid"])
    events = stream.rest()
    ended = time.monotonic()
    outputs = [
        (data["host"], data["stream"], data["line"]) for _, name, data in events if name == "output"
    ]
    for host in NAMES:
        assert [line for h, s, line in outputs if (h, s) == (host, "stdout")] == [
            f"tick {n}" for n in range(1, 7)
        ]
        assert [line for h, s, line in outputs if (h, s) == (host, "stderr")] == ["oops"]
    # the first lines came within a second of the start, while the scripts
    # still had seconds to run
    first_output = next(arrived for arrived, name, _ in events if name == "output")
    assert first_output - started_at <= 1.0, events[:3]
    assert ended - first_output >= 2.0, events
    names = [name for _, name, _ in events]
    assert names[-1] == "summary"
    assert names.count("result") == 2 and "fallback" not in names and "error" not in names
    # each host's result comes after all of its output
    for host in NAMES:
        result_at = next(
            i
            for i, (_, name, data) in enumerate(events)
            if name == "result" and data["host"] == host
        )
        assert all(
            i < result_at
            for i, (_, name, data) in enumerate(events)
            if name == "output" and data["host"] == host
        )
    summary = events[-1][2]
    openapi_check.check_response("POST", "/run", 200, summary)
    assert summary["ok"] is True and summary["reqid"] == start["reqid"]
    results = {result["host"]: result for result in summary["results"]}
    assert [result["host"] for result in summary["results"]] == list(NAMES)
    for host in NAMES:
        assert (results[host]["exit"], results[host]["stderr"]) == (0, "oops\n")
        assert results[host]["stdout"] == "".join(f"tick {n}\n" for n in range(1, 7))
    streamed_results = [data for _, name, data in events if name == "result"]
    assert sorted(streamed_results, key=lambda r: r["host"]) == summary["results"]
    status = api.client().get(f"/status/{start['reqid']}")
    assert status.json["complete"] is True
    assert status.json["results"] == summary["results"]


def test_status_knows_a_streamed_run_while_it_runs(fleet):
    dispatcher, _, api, base = fleet
    gate = base / "gate-status"
    gate.mkdir()
    stream = EventReader(api.port, {"hosts": ["stream-01"], "script": "block", "args": [str(gate)]})
    first = stream.next_event()
    assert first is not None and first[1] == "start"
    reqid = first[2]["reqid"]
    agentproc.wait_for((gate / "started").exists, 30, "the script to start")
    status = api.client().get(f"/status/{reqid}")
    assert status.status == 200
    assert status.json["complete"] is False and status.json["mode"] == "sync"
    [running] = status.json["results"]
    assert (running["host"], running["status"], running["reqid"]) == ("stream-01", "running", reqid)
    # ced sees it too
    shown = dispatcher.run("ced", "--json", "status", reqid)
    assert shown.returncode == 0 and json.loads(shown.stdout)["complete"] is False
    (gate / "go").touch()
    events = stream.rest()
    assert [name for _, name, _ in events] == ["output", "result", "summary"]
    assert events[0][2] == {"host": "stream-01", "stream": "stdout", "line": "released"}
    done = api.client().get(f"/status/{reqid}")
    assert done.json["complete"] is True
    assert done.json["results"] == events[-1][2]["results"]


def test_a_0_12_agent_gets_the_fallback_and_says_so(fleet, session_ca, tmp_path):
    dispatcher, issued, api, _ = fleet
    with Peer012(session_ca, tmp_path / "peer") as peer:
        testpki.register_agent(dispatcher.root, "old-01", peer.port, peer.issued, issued)
        stream = EventReader(
            api.port, {"hosts": ["old-01", "stream-01"], "script": "echo-args", "args": ["hi"]}
        )
        events = stream.rest()
    names = [name for _, name, _ in events]
    assert names[0] == "start" and names[-1] == "summary"
    fallbacks = [data for _, name, data in events if name == "fallback"]
    assert [data["host"] for data in fallbacks] == ["old-01"]
    assert "cannot stream" in fallbacks[0]["detail"]
    outputs = [data for _, name, data in events if name == "output"]
    assert outputs == [{"host": "stream-01", "stream": "stdout", "line": "hi"}]
    old = next(r for r in events[-1][2]["results"] if r["host"] == "old-01")
    assert (old["exit"], old["stdout"]) == (0, "hi\n")
    assert sorted(request.path for request in peer.received) == ["/run", "/run-stream"]


def test_refusals_before_the_start_are_plain_answers(fleet):
    _, _, api, base = fleet
    unknown = EventReader(api.port, {"hosts": ["nosuch"], "script": "tick"})
    assert unknown.status == 404
    assert unknown.headers["Content-Type"] == "application/json"
    body = unknown.body()
    assert body["error"] == "unknown agent"
    openapi_check.check_response("POST", "/run", 404, body)
    gate = base / "gate-locked"
    gate.mkdir()
    holder = EventReader(api.port, {"hosts": ["stream-02"], "script": "block", "args": [str(gate)]})
    assert holder.next_event()[1] == "start"
    second = EventReader(api.port, {"hosts": ["stream-02"], "script": "block", "args": [str(gate)]})
    assert second.status == 409
    assert second.body() == {
        "ok": False,
        "error": "locked",
        "code": 4,
        "conflicts": ["stream-02:block"],
    }
    (gate / "go").touch()
    assert holder.rest()[-1][1] == "summary"


def test_async_and_plain_clients_get_json(fleet):
    _, _, api, _ = fleet
    submitted = EventReader(
        api.port, {"hosts": ["stream-01"], "script": "echo-args", "args": ["x"], "async": True}
    )
    assert submitted.status == 202 and submitted.body()["async"] is True
    # q=0 refuses the stream; a wildcard does not ask for it
    for accept in ("text/event-stream;q=0, application/json", "*/*"):
        plain = EventReader(
            api.port, {"hosts": ["stream-01"], "script": "echo-args", "args": ["y"]}, accept
        )
        assert plain.status == 200 and plain.headers["Content-Type"] == "application/json"
        assert plain.body()["results"][0]["stdout"] == "y\n"


def test_a_client_that_leaves_does_not_stop_the_run(fleet):
    _, _, api, base = fleet
    gate = base / "gate-leave"
    gate.mkdir()
    stream = EventReader(api.port, {"hosts": ["stream-01"], "script": "block", "args": [str(gate)]})
    reqid = stream.next_event()[2]["reqid"]
    agentproc.wait_for((gate / "started").exists, 30, "the script to start")
    stream.close()
    (gate / "go").touch()

    def finished():
        status = api.client().get(f"/status/{reqid}")
        return status.json if status.json["complete"] else None

    record = agentproc.wait_for(finished, 30, "the run to be recorded complete")
    assert record["results"][0]["stdout"] == "released\n"


@pytest.mark.skipif(shutil.which("curl") is None, reason="SKIPPED LOUDLY: curl is not installed")
def test_the_documented_curl_command_streams(fleet):
    """docs/api.md's curl line, with this API's port, hosts and script."""
    _, _, api, _ = fleet
    body = json.dumps({"hosts": list(NAMES), "script": "tick"})
    completed = subprocess.run(
        [
            *["curl", "-sS", "-N", "-H", "Accept: text/event-stream"],
            *["-H", "Content-Type: application/json", "-d", body],
            f"http://127.0.0.1:{api.port}/run",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    blocks = [b for b in completed.stdout.split("\n\n") if b and not b.startswith(":")]
    names = [block.split("\n", 1)[0] for block in blocks]
    assert names[0] == "event: start" and names[-1] == "event: summary", names
    assert names.count("event: output") == 2 * 7
