"""A paired agent turned hostile (it holds a valid agent certificate)
against `ced`: replies that break JSON decoders, and text meant for the
operator's terminal. Real TLS on loopback, `ced` through the pyz."""

from __future__ import annotations

import json

import pytest

from tests.support import testpki
from tests.support.peer012 import Peer012, http_response, issued_at

# Deeper than any JSON decoder's recursion limit; far below the reply cap.
DEEP = b"[" * 200_000
ESC = "\x1b]0;owned\x07\x1b[2J"


@pytest.fixture
def disp(ctl, session_ca):
    ctl.issued = testpki.install_dispatcher(session_ca, ctl.root)
    ctl.layout = testpki.layout_for(ctl.root)
    return ctl


def register(disp, session_ca, name: str, port: int) -> None:
    testpki.register_agent(disp.root, name, port, issued_at(session_ca, port, name), disp.issued)


def _deep(request):
    return http_response(200, b'{"exit":0,"stdout":' + DEEP)


def strict(text: str):
    """JSON as RFC 8259 has it: no NaN or Infinity."""

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    "body",
    [DEEP, b'{"exit":0,"stdout":' + DEEP, b'{"exit":0,"stdout":"x\\n","n":NaN}', b'{"exit":1e999}'],
)
def test_deeply_nested_reply_is_that_hosts_failure(disp, session_ca, tmp_path, body):
    """A reply nested past the decoder's recursion limit, or with numbers
    JSON does not have, is `invalid JSON response` for that host: no
    traceback, the other host's result intact, the output strict JSON, the
    lock released."""
    with (
        Peer012(session_ca, tmp_path / "bad", behaviour=lambda r: http_response(200, body)) as bad,
        Peer012(session_ca, tmp_path / "good") as good,
    ):
        register(disp, session_ca, "bad", bad.port)
        register(disp, session_ca, "good", good.port)
        run = disp.run("ced", "--json", "run", "bad", "good", "echo-args", "--", "x")
        assert "Traceback" not in run.stderr, run.stderr
        assert run.returncode == 1
        bad_result, good_result = strict(run.stdout)["results"]
        assert bad_result["host"] == "bad" and bad_result["exit"] == -1
        assert bad_result["error"] == "invalid JSON response"
        assert good_result["exit"] == 0 and good_result["stdout"] == "x\n"
        ping = disp.run("ced", "ping", "bad", "good")
        assert "Traceback" not in ping.stderr, ping.stderr
        assert ping.returncode == 1 and "invalid JSON" in ping.stdout
        locks = disp.run("ced", "--json", "list-locks")
        assert json.loads(locks.stdout)["locks"] == []


def test_tags_cannot_drive_the_operators_terminal(disp, session_ca, tmp_path):
    """Tags a hostile agent reports are cached by discovery and shown by
    `list-agents --tags` with control characters made visible."""

    def capabilities(request):
        body = {
            "status": "ok",
            "host": "vm",
            "version": "0.12.3",
            "tags": {"role": "web" + ESC},
            "scripts": [],
        }
        return http_response(200, json.dumps(body).encode())

    with Peer012(session_ca, tmp_path / "p", behaviour=capabilities) as peer:
        register(disp, session_ca, "vm", peer.port)
        shown = disp.run("ced", "list-agents", "--refresh", "--tags", "")
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
    assert "role=web\\x1b]0;owned\\x07" in shown.stdout
