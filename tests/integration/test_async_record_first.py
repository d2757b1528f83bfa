"""An async run submitted through the API is recorded before any agent is
asked: if the API dies (kill -9) while the agents are being contacted, the
job an agent may have started still has a record that `/status` and `ced
status` can follow."""

from __future__ import annotations

import json
import socket
import threading
import time

from tests.support import agentproc, apiproc, testpki


def test_the_pending_record_exists_before_the_first_agent_is_contacted(
    session_ca, pyz_for, tmp_path
):
    dispatcher = pyz_for(tmp_path / "dispatcher")
    issued = testpki.install_dispatcher(session_ca, dispatcher.root)
    runs = testpki.layout_for(dispatcher.root).runs_dir
    # An "agent" that accepts and then says nothing: the submission hangs
    # in the middle of dispatching, as a crash window would.
    listener = socket.create_server(("127.0.0.1", 0))
    testpki.register_agent(
        dispatcher.root, "silent", listener.getsockname()[1], session_ca.issue("silent"), issued
    )
    # (accepted at, run records present then) per connection; the API's own
    # maintenance pass may connect first, before any run was submitted
    seen: list[tuple[float, list[str]]] = []
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            records = sorted(p.name for p in runs.glob("*.json")) if runs.exists() else []
            seen.append((time.monotonic(), records))
            held.append(conn)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    process = apiproc.ApiProcess(dispatcher, api_auth_default="allow", read_timeout=30).start()
    client = process.client()
    submit = threading.Thread(
        target=lambda: _ignore_errors(
            lambda: client.post("/run", {"hosts": ["silent"], "script": "sleep", "async": True})
        ),
        daemon=True,
    )
    try:
        # The maintenance pass at start pings the agent: await that
        # connection, so a late one is not taken for the run's.
        agentproc.wait_for(lambda: seen, 30, "the maintenance pass's ping")
        posted = time.monotonic()
        submit.start()
        agentproc.wait_for(lambda: [r for t, r in seen if t >= posted], 30, "the run's connection")
        after = [records for at, records in seen if at >= posted]
        assert all(len(records) == 1 for records in after), seen
        process.kill()  # the crash, mid-dispatch
        [record_file] = runs.glob("*.json")
        record = json.loads(record_file.read_text())
        assert record["mode"] == "async" and record["script"] == "sleep"
        assert record["hosts"] == {"silent": {"status": "accepted"}}
        assert record["pending"] == ["silent"] and record["complete"] is False
    finally:
        if process.proc is not None and process.proc.poll() is None:
            process.stop()
        for conn in held:
            conn.close()
        listener.close()
    agentproc.wait_for(lambda: not submit.is_alive(), 30, "the client to give up")


def _ignore_errors(call) -> None:
    try:
        call()
    except (OSError, AssertionError, ValueError):
        pass
