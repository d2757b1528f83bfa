"""The caller's identity as one value; the token never shows in repr()."""

from __future__ import annotations

import pytest

from ctrlexec.core import agent_wire, api_wire, lifecycle
from ctrlexec.core.caller import API, CLI, CLI_SOURCE_IP, Caller
from ctrlexec.hooks import CALLER_API, CALLER_CLI, AuthRequest
from tests.support.tables import each_case

SECRET = "s3cret-token"


def test_caller_defaults_are_the_cli_s():
    caller = Caller("alice", "t0ken")
    assert (caller.front, caller.source_ip) == (CLI, CLI_SOURCE_IP)
    assert Caller.api("10.0.0.1", "bob", "x") == Caller("bob", "x", "10.0.0.1", API)
    assert Caller() == Caller("", "", CLI_SOURCE_IP, CLI)


def test_front_ends_are_the_hook_callers():
    assert (CLI, API) == (CALLER_CLI, CALLER_API)


THE_TOKEN_IS_NEVER_IN_REPR_OR_STR_CASES = [
    Caller("alice", SECRET),
    Caller.api("10.0.0.1", "bob", SECRET),
    AuthRequest("run", username="alice", token=SECRET),
    agent_wire.parse_run(
        b'{"script":"s","args":[],"reqid":"r1","username":"u","token":"' + SECRET.encode() + b'"}'
    ),
    api_wire.parse_run(b'{"hosts":["a"],"script":"s","token":"' + SECRET.encode() + b'"}'),
    api_wire.parse_ping(b'{"hosts":["a"],"token":"' + SECRET.encode() + b'"}'),
    api_wire.parse_discovery(b'{"token":"' + SECRET.encode() + b'"}'),
    lifecycle.parse_revoke(b'{"serial":"1a","token":"' + SECRET.encode() + b'"}'),
]


def test_the_token_is_never_in_repr_or_str():
    def check(value):
        assert SECRET not in repr(value) and SECRET not in str(value)

    each_case(THE_TOKEN_IS_NEVER_IN_REPR_OR_STR_CASES, check, unpack=False)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"front": "web"}, ValueError),
        ({"username": None}, TypeError),
        ({"token": 5}, TypeError),
        ({"source_ip": b"1.2.3.4"}, TypeError),
    ],
)
def test_caller_refuses_bad_values(kwargs, error):
    with pytest.raises(error):
        Caller(**kwargs)
