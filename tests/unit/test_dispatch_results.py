"""Per-host result objects (protocol.md §7.7) and their text rendering."""

import json

import pytest

from ctrlexec.core import report, results
from ctrlexec.core.results import PING, RUN, AgentReply, Failure, HostResult
from tests.support.tables import each_case


def ok(body: bytes | str, status: int = 200, phrase: str = "OK") -> AgentReply:
    return AgentReply(status, phrase, body.encode() if isinstance(body, str) else body)


def run_text(wires: list[dict]) -> str:
    return report.run_text([HostResult(RUN, wire) for wire in wires])


def ping_text(wires: list[dict]) -> str:
    return report.ping_text([HostResult(PING, wire) for wire in wires])


# -- run results ---------------------------------------------------------------


def test_run_success_is_the_agent_body_plus_host_and_rtt():
    body = (
        '{"script":"echo-args","stderr":"","stdout":"hello\\ntwo words\\n","exit":0,'
        '"reqid":"bcdda31da6596e86"}'
    )
    result = results.run_result("vm", "echo-args", "bcdda31da6596e86", "40ms", ok(body), None, 60)
    assert result.to_wire() == {
        "script": "echo-args",
        "stderr": "",
        "stdout": "hello\ntwo words\n",
        "exit": 0,
        "reqid": "bcdda31da6596e86",
        "host": "vm",
        "rtt": "40ms",
    }


def test_run_error_from_agent_keeps_its_shape_and_gains_reqid():
    # 0.12's agent answers invalid JSON without a reqid; the dispatcher adds its own.
    result = results.run_result(
        "vm", "x", "r1", "3ms", ok('{"error":"invalid JSON","exit":-1}'), None, 60
    )
    assert result.to_wire() == {
        "error": "invalid JSON",
        "exit": -1,
        "reqid": "r1",
        "host": "vm",
        "rtt": "3ms",
    }
    assert result.failed


def test_run_body_naming_another_host_reports_it():
    result = results.run_result(
        "vm", "s", "r", "1ms", ok('{"exit":0,"host":"vm.example"}'), None, 60
    )
    assert result.wire["host"] == "vm" and result.wire["reported_hostname"] == "vm.example"
    same = results.run_result("vm", "s", "r", "1ms", ok('{"exit":0,"host":"vm"}'), None, 60)
    assert "reported_hostname" not in same.wire


RUN_HTTP_FAILURES_USE_0_12_STRINGS_CASES = [
    (
        AgentReply(403, "Forbidden", b'{"error":"serial mismatch","status":"forbidden"}'),
        "forbidden: serial mismatch",
    ),
    (
        AgentReply(403, "Forbidden", b'{"error":"certificate revoked"}'),
        "forbidden: certificate revoked",
    ),
    (AgentReply(403, "Forbidden", b"not json"), "forbidden: 403 Forbidden"),
    (
        AgentReply(413, "Content Too Large", b'{"error":"request too large"}'),
        "request too large",
    ),
    (AgentReply(404, "Not Found", b'{"error":"not found"}'), "404 Not Found"),
    (AgentReply(500, "Internal Server Error", b""), "500 Internal Server Error"),
]


def test_run_http_failures_use_0_12_strings():
    def check(reply, error):
        result = results.run_result("vm", "fail", "r9", "5ms", reply, None, 60)
        assert result.to_wire() == {
            "host": "vm",
            "script": "fail",
            "exit": -1,
            "error": error,
            "rtt": "5ms",
            "reqid": "r9",
        }

    each_case(RUN_HTTP_FAILURES_USE_0_12_STRINGS_CASES, check)


NESTED = (
    b'{"exit":0,"stdout":'
    + b"[" * (results.MAX_REPLY_DEPTH)
    + b"]" * (results.MAX_REPLY_DEPTH)
    + b"}"
)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"nope",
        b"[1,2]",
        b'"text"',
        b"\xff\xfe",
        b"[" * 100_000,  # past the decoder's recursion limit
        b'{"a":' * 100_000,
        NESTED,  # decodes, but nests deeper than any agent reply
        b'{"exit":' + b"9" * 5000 + b"}",  # past int's digit limit
        b'{"exit":NaN}',  # Python's decoder takes these; JSON has no such numbers
        b'{"exit":0,"stdout":"x","t":Infinity}',
        b'{"exit":-Infinity}',
        b'{"exit":1e999}',  # a float overflowing to infinity
    ],
)
def test_run_body_that_is_not_a_json_object(body):
    result = results.run_result("vm", "s", "r", "1ms", ok(body), None, 60)
    assert result.wire["exit"] == -1 and result.wire["error"] == "invalid JSON response"
    assert result.wire["host"] == "vm" and result.wire["reqid"] == "r"


TRANSPORT_FAILURES_USE_0_12_STRINGS_CASES = [
    (
        results.RESOLVE,
        "host 'h.example' did not resolve - check the name or use an IP address",
        None,
    ),
    (
        results.REFUSED,
        "host 'h.example' did not respond on port 7443 - connection refused "
        "(agent not running, or wrong port?)",
        None,
    ),
    (
        results.UNREACHABLE,
        "host 'h.example' is unreachable - no route to host or network down",
        None,
    ),
    (results.TIMEOUT, "host 'h.example' did not respond - connection timed out", None),
    (
        results.READ_TIMEOUT,
        "read timeout after 60s",
        "host 'h.example' did not respond - connection timed out",
    ),
    (
        results.TLS,
        "TLS handshake with 'h.example' failed - certificate or trust mismatch",
        None,
    ),
]


def test_transport_failures_use_0_12_strings():
    def check(kind, run_text, ping_text):
        failure = Failure(kind, "h.example", 7443)
        run = results.run_result("web", "s", "r", "2ms", None, failure, 60)
        assert run.to_wire() == {
            "host": "web",
            "script": "s",
            "exit": -1,
            "error": run_text,
            "rtt": "2ms",
            "reqid": "r",
        }
        ping = results.ping_result("web", "2ms", None, failure, 60)
        assert ping.to_wire() == {
            "host": "web",
            "status": "error",
            "error": ping_text or run_text,
            "rtt": "2ms",
        }

    each_case(TRANSPORT_FAILURES_USE_0_12_STRINGS_CASES, check)


def test_every_failure_kind_names_the_host():
    def check(kind):
        text = results.failure_text(Failure(kind, "10.0.0.9", 17443, "detail"), 5, "ping")
        assert "10.0.0.9" in text

    each_case(results.KINDS, check, unpack=False)


# -- ping results --------------------------------------------------------------


def test_ping_success_adds_rtt_and_keeps_the_agent_fields():
    body = (
        '{"host":"vm","staged":false,"version":"0.12.3","reqid":"5150dba102493a41",'
        '"status":"ok","expiry":"Feb 24 12:58:55 2029 GMT"}'
    )
    result = results.ping_result("vm", "69ms", ok(body), None, 60)
    assert result.to_wire() == {
        "host": "vm",
        "staged": False,
        "version": "0.12.3",
        "reqid": "5150dba102493a41",
        "status": "ok",
        "expiry": "Feb 24 12:58:55 2029 GMT",
        "rtt": "69ms",
    }
    assert not result.failed


def test_ping_agent_with_another_name():
    result = results.ping_result(
        "web-01", "1ms", ok('{"host":"web-01.lan","status":"ok"}'), None, 60
    )
    assert result.wire["host"] == "web-01" and result.wire["reported_hostname"] == "web-01.lan"


@pytest.mark.parametrize(
    "reply, error",
    [
        (ok("{"), "invalid JSON"),
        (
            AgentReply(403, "Forbidden", b'{"error":"serial mismatch","status":"forbidden"}'),
            "forbidden: serial mismatch",
        ),
        (AgentReply(413, "Content Too Large", b""), "request too large"),
        (AgentReply(404, "Not Found", b'{"error":"not found"}'), "404 Not Found"),
    ],
)
def test_ping_failures_have_no_reqid(reply, error):
    assert results.ping_result("vm", "1ms", reply, None, 60).to_wire() == {
        "host": "vm",
        "status": "error",
        "error": error,
        "rtt": "1ms",
    }


@pytest.mark.parametrize(
    "seconds, text", [(0.0, "0ms"), (0.0394, "39ms"), (0.0396, "40ms"), (1.2, "1200ms")]
)
def test_rtt_text(seconds, text):
    assert results.rtt_text(seconds) == text


ONLY_AN_INTEGER_ZERO_EXIT_SUCCEEDS_CASES = [
    (0, False),
    (1, True),
    (-1, True),
    (None, True),
    ("0", True),
    (True, True),
]


def test_only_an_integer_zero_exit_succeeds():
    def check(value, failed):
        assert HostResult(RUN, {"exit": value}).failed is failed

    each_case(ONLY_AN_INTEGER_ZERO_EXIT_SUCCEEDS_CASES, check)


# -- text ----------------------------------------------------------------------


def test_run_text_is_0_12s_layout():
    text = run_text(
        [
            {
                "host": "vm",
                "exit": 0,
                "rtt": "35ms",
                "reqid": "78496fa76dc53023",
                "stdout": "hello\ntwo words\n",
                "stderr": "",
            },
            {
                "host": "db",
                "exit": 5,
                "rtt": "40ms",
                "reqid": "78496fa76dc53023",
                "stdout": "about to fail",
                "stderr": "something went wrong\n",
            },
            {
                "host": "gone",
                "script": "s",
                "exit": -1,
                "rtt": "1ms",
                "reqid": "78496fa76dc53023",
                "error": "read timeout after 60s",
            },
        ]
    )
    assert text == (
        "==> vm  [OK  exit:0  35ms  req:78496fa76dc53023]\n"
        "hello\ntwo words\n"
        "==> db  [FAIL  exit:5  40ms  req:78496fa76dc53023]\n"
        "about to fail\n"
        "    STDERR: something went wrong\n"
        "==> gone  [FAIL  exit:-1  1ms  req:78496fa76dc53023]\n"
        "    ERROR: read timeout after 60s\n"
    )


def test_run_text_shows_a_reported_hostname_and_defuses_control_characters():
    text = run_text(
        [
            {
                "host": "vm",
                "reported_hostname": "evil\x1b[2J",
                "exit": 0,
                "rtt": "1ms",
                "reqid": "r",
                "error": "x\ny",
            }
        ]
    )
    assert "\x1b" not in text and "==> vm (evil\\x1b[2J)  [OK" in text
    assert "    ERROR: x\\x0ay\n" in text


def test_ping_table_is_0_12s_layout_with_errors_underneath():
    text = ping_text(
        [
            {
                "host": "vm",
                "status": "ok",
                "rtt": "69ms",
                "expiry": "Feb 24 12:58:55 2029 GMT",
                "version": "0.12.3",
            },
            {"host": "db", "status": "error", "rtt": "2ms", "error": "host 'db' did not resolve"},
        ]
    )
    lines = text.splitlines()
    assert lines[0] == (
        "HOST                            STATUS    RTT       CERT EXPIRY                   VERSION"
    )
    assert lines[1] == "-" * 85
    assert lines[2] == (
        "vm                              ok        69ms      Feb 24 12:58:55 2029 GMT      0.12.3"
    )
    assert lines[3].startswith("db                              error     2ms       ?")
    assert lines[4] == "    ERROR: host 'db' did not resolve"


def test_locks_text():
    assert report.locks_text([]) == "No locks currently held.\n"
    held = {
        "host": "vm",
        "script": "backup",
        "state": "held",
        "pid": 4242,
        "user": "ops",
        "username": "alice",
        "since": "2026-11-29T12:00:00Z",
        "reqid": "00aa11bb22cc33dd",
    }
    lines = report.locks_text([held, {"host": "db", "script": "x\x1b"}]).splitlines()
    assert lines == [
        "HOST                            SCRIPT                STATE     PID      USER        "
        "SINCE                 REQID",
        "-" * 112,
        "vm                              backup                held      4242     ops (alice)  "
        "2026-11-29T12:00:00Z  00aa11bb22cc33dd",
        "db                              x\\x1b                 held",
    ]


def test_progress_text():
    assert report.progress_text(7, 120, 2) == "[  7/120] hosts done, 2 failed"
    assert (
        report.progress_text(7, 120, 2, 3.14159)
        == "[  7/120] hosts done, 2 failed, 113 running, 3.1 s"
    )


def test_summary_text_tells_failures_from_unreachable_hosts():
    ok = {"host": "a", "exit": 0}
    failed = {"host": "b", "exit": 3}
    refused = {"host": "c", "exit": -1, "error": "host 'c' did not respond on port 7443 - x"}
    denied = {"host": "d", "exit": -1, "error": "script not permitted"}
    timed_out = {"host": "e", "exit": -1, "error": "read timeout after 60s"}
    results_ = [ok, failed, refused, denied, timed_out]
    assert (
        report.summary_text([HostResult(RUN, r) for r in results_], 5.25)
        == "1 ok, 2 failed, 2 unreachable in 5.2 s"
    )


def test_results_serialise_as_json():
    result = results.run_result("vm", "s", "r", "1ms", ok('{"exit":0,"stdout":"é"}'), None, 60)
    assert json.loads(json.dumps(result.to_wire())) == result.to_wire()


def test_an_async_refusal_passes_the_agent_answer_through_with_exit():
    """0.12 clients read `exit` from a refused async submission."""
    refusal = AgentReply(
        200,
        "OK",
        b'{"script":"nope","exit":-1,"error":"script not permitted","reqid":"r1"}',
    )
    result = results.async_submit_result("vm", "nope", "r1", "3ms", refusal, None, 60)
    assert result.to_wire() == {
        "host": "vm",
        "script": "nope",
        "exit": -1,
        "error": "script not permitted",
        "reqid": "r1",
        "rtt": "3ms",
        "status": "error",
    }


@pytest.mark.parametrize(
    "reply,failure,status,error",
    [
        (
            AgentReply(409, "Conflict", b'{"status":"busy","error":"script already running"}'),
            None,
            "busy",
            "script already running",
        ),
        (AgentReply(403, "Forbidden", b'{"error":"serial mismatch"}'), None, "error", None),
        (None, Failure(results.REFUSED, "10.0.0.1", 7443), "error", None),
    ],
)
def test_other_async_submission_failures_keep_0_12_s_small_shape(reply, failure, status, error):
    result = results.async_submit_result("vm", "s", "r1", "3ms", reply, failure, 60)
    assert set(result.wire) == {"host", "script", "status", "error", "rtt", "reqid"}
    assert result.wire["status"] == status
    if error is not None:
        assert result.wire["error"] == error


def test_nesting_is_measured_without_recursion():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    assert results.nesting_exceeds(deep, 32)
    assert not results.nesting_exceeds({"a": [{"b": 1}], "c": "x"}, 3)
    assert results.nesting_exceeds({"a": [{"b": []}]}, 3)


def test_a_result_is_always_strict_json():
    """Whatever numbers an agent writes, what we pass on parses as JSON."""
    for body in (b'{"exit":0,"n":1.5e300,"m":-2}', b'{"exit":NaN}', b'{"exit":1e400}'):
        wire = results.run_result("vm", "s", "r", "1ms", ok(body), None, 60).to_wire()
        json.dumps(wire, allow_nan=False)
