"""Odd but well-formed input against a real agent and a real API: each gets
a 0.12-shaped answer, never a dropped connection or a 500 (issue: lone
surrogates, non-boolean `async`, conflicting Content-Length, the shape of a
refused async submission)."""

from __future__ import annotations

import pytest

from tests.support import agentproc, apiproc
from tests.support.fleet import running_fleet

NOT_UTF8 = "must be valid UTF-8 (no lone surrogates)"
NOT_A_FLAG = "async must be true or false (or 1 or 0)"


@pytest.fixture(scope="module")
def env(tmp_path_factory, session_ca, pyz_for):
    base = tmp_path_factory.mktemp("odd-input")
    with running_fleet(session_ca, pyz_for, base, ("odd",)) as fleet:
        process = apiproc.ApiProcess(fleet.dispatcher, api_auth_default="allow").start()
        try:
            yield {
                "agent": fleet.agent("odd"),
                "client": fleet.client(),
                "api": process.client(),
                "ctl": fleet.dispatcher,
            }
            assert process.proc.poll() is None, "the API died"
            assert "ACTION=api-error" not in fleet.dispatcher.log_text()
        finally:
            process.stop()


def _agent_run(env, body: bytes) -> agentproc.RawResponse:
    return env["client"].request(env["agent"].site.port, "POST", "/run", body)


@pytest.mark.parametrize(
    "body,error",
    [
        (b'{"script":"echo-args","args":["a\\ud800"],"reqid":"s1"}', "args " + NOT_UTF8),
        (b'{"script":"echo-args","username":"\\udfff","reqid":"s1"}', "username " + NOT_UTF8),
        (b'{"script":"echo-args","token":"\\ud83d","reqid":"s1"}', "token " + NOT_UTF8),
        (b'{"script":"sleep","args":["0"],"async":"false","reqid":"s1"}', NOT_A_FLAG),
    ],
)
def test_the_agent_answers_odd_run_bodies(env, body, error):
    response = _agent_run(env, body)
    assert response.status == 200
    assert response.json() == {"exit": -1, "error": error, "reqid": "s1"}


def test_the_agent_refuses_conflicting_content_lengths(env):
    raw = (
        b"POST /run HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n"
        b'{"script":"echo-args","reqid":"x"}'
    )
    response = agentproc.parse_response(env["client"].exchange(env["agent"].site.port, raw))
    assert response.status == 400


@pytest.mark.parametrize(
    "field,value",
    [("username", "\ud800"), ("token", "x\udfff"), ("args", ["\ud800"])],
)
def test_the_api_answers_lone_surrogates_with_400(env, field, value):
    body = {"hosts": ["odd"], "script": "echo-args", field: value}
    response = env["api"].post("/run", body)  # json.dumps escapes them as \udxxx
    assert response.status == 400, response.json
    assert response.json["detail"] == f"{field} {NOT_UTF8}"


def test_the_api_refuses_a_string_async(env):
    response = env["api"].post("/run", {"hosts": ["odd"], "script": "sleep", "async": "false"})
    assert (response.status, response.json["detail"]) == (400, NOT_A_FLAG)


def test_the_api_refuses_conflicting_content_lengths(env):
    raw = b'POST /ping HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 17\r\n\r\n{"hosts":["odd"]}'
    response = env["api"].raw(raw, "POST", "/ping")
    assert response.status == 400


def test_a_refused_async_run_carries_exit_minus_one_as_in_0_12(env):
    response = env["api"].post("/run", {"hosts": ["odd"], "script": "nope", "async": True})
    [result] = response.json["results"]
    assert result["exit"] == -1 and result["error"] == "script not permitted", result
    assert result["status"] == "error" and result["host"] == "odd"
