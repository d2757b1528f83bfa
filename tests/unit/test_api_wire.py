"""The API's wire module: routes, request validation, bodies, live spec."""

from __future__ import annotations

import json

import pytest

from ctrlexec.core import api_wire as wire
from ctrlexec.core.results import CAPABILITIES, HostResult
from ctrlexec.errors import FramingError
from tests.support.tables import each_case

ROUTES_CASES = [
    ("GET", "/", wire.INDEX, ""),
    ("get", "/health", wire.HEALTH, ""),
    ("POST", "/ping", wire.PING, ""),
    ("POST", "/run", wire.RUN, ""),
    ("GET", "/discovery", wire.DISCOVERY, ""),
    ("POST", "/discovery", wire.DISCOVERY, ""),
    ("GET", "/status/0a1b", wire.STATUS, "0a1b"),
    ("GET", "/openapi.json", wire.OPENAPI, ""),
    ("GET", "/openapi-live.json", wire.OPENAPI_LIVE, ""),
    ("GET", "/status/0A1B", wire.NO_ROUTE, ""),
    ("GET", "/status/", wire.NO_ROUTE, ""),
    ("GET", "/status/" + "a" * 129, wire.NO_ROUTE, ""),
    ("POST", "/status/ab", wire.NO_ROUTE, ""),
    ("GET", "/health?x=1", wire.NO_ROUTE, ""),
    ("GET", "/run", wire.NO_ROUTE, ""),
    ("PUT", "/run", wire.NO_ROUTE, ""),
    ("GET", "//health", wire.NO_ROUTE, ""),
]


def test_routes():
    def check(method, path, name, arg):
        assert wire.route(method, path) == wire.Route(name, arg)

    each_case(ROUTES_CASES, check)


def test_no_route_body_upper_cases_the_method():
    reply = wire.no_route("delete", "/x y")
    assert reply == wire.Reply(
        404, {"ok": False, "error": "not found", "detail": "no route for DELETE /x y"}
    )


def detail_of(call, body):
    with pytest.raises(wire.ApiError) as caught:
        call(body)
    reply = wire.error_reply(caught.value)
    assert reply.status == 400 and reply.body["error"] == "bad request"
    return reply.body["detail"]


RUN_VALIDATION_ORDER_AND_DETAILS_CASES = [
    (b"", "request body required"),
    (b"{", "invalid JSON body"),
    (b'"text"', "invalid JSON body"),
    (b"\xff", "invalid JSON body"),
    (b"[" * 100_000, "invalid JSON body"),
    (b"{}", "hosts must be a non-empty array"),
    (b'{"hosts":{}}', "hosts must be a non-empty array"),
    (b'{"hosts":["a"]}', "script name required (alphanumeric and hyphens only)"),
    (b'{"hosts":["a"],"script":""}', "script name required (alphanumeric and hyphens only)"),
    (b'{"hosts":["a"],"script":"a b"}', "script name required (alphanumeric and hyphens only)"),
    (b'{"hosts":["a"],"script":5}', "script name required (alphanumeric and hyphens only)"),
    (b'{"hosts":["a"],"script":"s","args":{}}', "args must be an array"),
    (b'{"hosts":["a"],"script":"s","args":[null]}', "args must be strings"),
    (b'{"hosts":[""],"script":"s"}', "hosts must be non-empty strings"),
    (b'{"hosts":["a"],"script":"s","username":[]}', "username must be a string"),
    (b'{"hosts":["a"],"script":"s","token":1}', "token must be a string"),
    (
        b'{"hosts":["a"],"script":"s","token":"\\ud800"}',
        "token must be valid UTF-8 (no lone surrogates)",
    ),
    (
        b'{"hosts":["a"],"script":"s","username":"x\\udfff"}',
        "username must be valid UTF-8 (no lone surrogates)",
    ),
    (
        b'{"hosts":["a"],"script":"s","args":["\\ud800"]}',
        "args must be valid UTF-8 (no lone surrogates)",
    ),
    (b'{"hosts":["\\ud800"],"script":"s"}', "hosts must be valid UTF-8 (no lone surrogates)"),
    (
        b'{"hosts":["a"],"script":"s","async":"false"}',
        "async must be true or false (or 1 or 0)",
    ),
    (b'{"hosts":["a"],"script":"s","async":"1"}', "async must be true or false (or 1 or 0)"),
]


def test_run_validation_order_and_details():
    def check(body, detail):
        assert detail_of(wire.parse_run, body) == detail

    each_case(RUN_VALIDATION_ORDER_AND_DETAILS_CASES, check)


def test_run_request():
    run = wire.parse_run(
        b'{"hosts":["a","b:7443"],"script":"s-1","args":["x"],"username":"u","token":"t","async":1}'
    )
    assert run == wire.RunRequest(["a", "b:7443"], "s-1", ["x"], "u", "t", True)
    assert wire.parse_run(b'{"hosts":["a"],"script":"s","args":null}').args == []
    assert wire.parse_run(b'{"hosts":["a"],"script":"s","async":false}').run_async is False


def test_ping_request():
    assert wire.parse_ping(b'{"hosts":["a"]}') == wire.PingRequest(["a"], "", "")
    assert detail_of(wire.parse_ping, b"") == "request body required"
    assert detail_of(wire.parse_ping, b"[]") == "invalid JSON body"


DISCOVERY_BODY_IS_OPTIONAL_CASES = [
    (b"", []),
    (b"junk", []),
    (b"[1]", []),
    (b"{}", []),
    (b'{"hosts":"a"}', []),
    (b'{"hosts":[]}', []),
    (b'{"hosts":["a","b"]}', ["a", "b"]),
]


def test_discovery_body_is_optional():
    def check(body, hosts):
        assert wire.parse_discovery(body).hosts == hosts

    each_case(DISCOVERY_BODY_IS_OPTIONAL_CASES, check)


def test_discovery_rejects_non_string_hosts():
    assert detail_of(wire.parse_discovery, b'{"hosts":[1]}') == "hosts must be non-empty strings"


GATE_TOKEN_CASES = [
    (b'{"token":"t"}', "t"),
    (b' {"token":"t"}', ""),
    (b'{"token":5}', ""),
    (b"{bad", ""),
    (b"", ""),
    (b'["token"]', ""),
    (b'{"x":1}', ""),
    (b'{"token":"\\ud800"}', ""),
]


def test_gate_token():
    def check(body, token):
        assert wire.gate_token(body) == token

    each_case(GATE_TOKEN_CASES, check)


BEARER_TOKEN_CASES = [
    ("Bearer abc", "abc"),
    ("bearer abc", "abc"),
    ("BEARER  abc  ", "abc"),
    ("Bearer a b", "a"),
    ("Basic abc", ""),
    ("Bearer", ""),
    ("", ""),
    ("abc", ""),
]


def test_bearer_token():
    def check(header, token):
        assert wire.bearer_token(header) == token

    each_case(BEARER_TOKEN_CASES, check)


def test_error_bodies():
    assert wire.denied("bad credentials", 2, False) == wire.Reply(
        403, {"ok": False, "error": "bad credentials", "code": 2}
    )
    assert wire.denied("bad credentials", 2, True) == wire.Reply(
        403, {"ok": False, "error": "forbidden"}
    )
    assert wire.locked(["a:s"]).body == {
        "ok": False,
        "error": "locked",
        "code": 4,
        "conflicts": ["a:s"],
    }
    assert wire.unknown_agents(["x", "y:1"]).body["detail"] == "not a registered agent: x, y:1"
    assert wire.overloaded() == wire.Reply(
        503, {"ok": False, "error": "service unavailable", "detail": "too many concurrent requests"}
    )
    assert wire.status_unknown("ab").body == {
        "ok": False,
        "error": "not found",
        "detail": "no result for reqid ab",
    }


@pytest.mark.parametrize(
    "error,status,body",
    [
        (
            FramingError(400, "empty request", "empty request"),
            400,
            {"ok": False, "error": "bad request", "detail": "empty request"},
        ),
        (
            FramingError(431, "too many headers", "more than 32 header lines"),
            431,
            {
                "ok": False,
                "error": "request header fields too large",
                "detail": "more than 32 header lines",
            },
        ),
        (
            FramingError(413, "request too large", "body exceeds 1048576 bytes"),
            413,
            {"ok": False, "error": "payload too large", "detail": "body exceeds 1048576 bytes"},
        ),
    ],
)
def test_framing_errors(error, status, body):
    assert wire.framing_error(error) == wire.Reply(status, body)


SPEC = {
    "openapi": "3.1.0",
    "info": {"title": "t", "version": "1.2.3+99"},
    "components": {
        "schemas": {
            "PingRequest": {
                "properties": {"hosts": {"type": "array", "items": {"type": "string"}}}
            },
            "RunRequest": {
                "properties": {
                    "hosts": {"type": "array", "items": {"type": "string"}},
                    "script": {"type": "string"},
                }
            },
            "DiscoveryRequest": {"properties": {"hosts": {"type": "array"}}},
        }
    },
}


def test_live_spec_with_no_agents():
    document = wire.live_spec(SPEC, [], [], 1000)
    schemas = document["components"]["schemas"]
    assert schemas["PingRequest"]["properties"]["hosts"]["items"] == {"type": "string"}
    assert "items" not in schemas["DiscoveryRequest"]["properties"]["hosts"]
    assert "enum" not in schemas["RunRequest"]["properties"]["script"]
    assert "x-ctrl-exec-scripts" not in document
    assert document["info"]["version"] == "1.2.3+1000"
    assert SPEC["info"]["version"] == "1.2.3+99" and "enum" not in json.dumps(SPEC)


def test_live_spec_groups_scripts_by_schema_version():
    caps = [
        {
            "host": "a",
            "status": "ok",
            "scripts": [
                {"name": "backup", "schema": {"v": 1}, "schema_version": "1"},
                {"name": "plain"},
            ],
        },
        {
            "host": "b",
            "status": "ok",
            "scripts": [
                {"name": "backup", "schema": {"v": 2}, "schema_version": "2"},
                {"name": "plain"},
                "junk",
                {"name": ""},
                {"name": "../../etc"},  # no script can be called that
                {"name": "<script>alert(1)</script>"},
            ],
        },
        {
            "host": "c",
            "status": "ok",
            "scripts": [{"name": "backup", "schema": {"v": 1}, "schema_version": "1"}],
        },
        {"host": "d", "status": "error", "scripts": [{"name": "hidden"}]},
    ]
    typed = [HostResult(CAPABILITIES, cap) for cap in caps]
    document = wire.live_spec(SPEC, ["a", "b", "c", "d"], typed, 5)
    schemas = document["components"]["schemas"]
    assert schemas["RunRequest"]["properties"]["hosts"]["items"]["enum"] == ["a", "b", "c", "d"]
    assert schemas["RunRequest"]["properties"]["script"]["enum"] == ["backup", "plain"]
    assert document["x-ctrl-exec-scripts"] == {
        "backup": [
            {"hosts": ["a", "c"], "schema_version": "1", "schema": {"v": 1}},
            {"hosts": ["b"], "schema_version": "2", "schema": {"v": 2}},
        ],
        "plain": [{"hosts": ["a", "b"]}],
    }
    assert document["info"]["version"] == "1.2.3+5"


def test_index_lists_every_route():
    body = wire.index_body("9")
    routes = {(entry["method"], entry["path"]) for entry in body["endpoints"]}
    assert len(routes) == 8
    for method, path in routes:
        assert wire.route(method, path.replace("{reqid}", "ab")).name != wire.NO_ROUTE
