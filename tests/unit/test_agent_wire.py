"""core/agent_wire.py: routes, /run validation, bodies, schema sidecars."""

import hashlib
import json

import pytest

from ctrlexec.core import agent_wire as wire
from ctrlexec.core.routing import Route
from tests.support.tables import each_case

ROUTES_ARE_EXACT_CASES = [
    ("POST", "/run", "run", True, ""),
    ("POST", "/ping", "ping", True, ""),
    ("GET", "/capabilities", "capabilities", True, ""),
    ("GET", "/result/abc_1-2", "result", True, "abc_1-2"),
    ("POST", "/rotate-serial", "rotate-serial", True, ""),
    ("POST", "/renew", "renew", False, ""),
    ("POST", "/renew-complete", "renew-complete", False, ""),
    ("GET", "/run", "unknown", False, ""),
    ("post", "/run", "unknown", False, ""),
    ("POST", "/ping?x=1", "unknown", False, ""),
    ("POST", "/ping/", "unknown", False, ""),
    ("GET", "/result/", "unknown", False, ""),
    ("GET", "/result/a/b", "unknown", False, ""),
    ("GET", "/result/a.b", "unknown", False, ""),
    ("POST", "/result/abc", "unknown", False, ""),
    ("GET", "/capabilities?x", "unknown", False, ""),
    ("", "", "unknown", False, ""),
]


def test_routes_are_exact():
    def check(method, path, name, gated, arg):
        assert wire.route(method, path) == Route(name, arg, gated=gated)

    each_case(ROUTES_ARE_EXACT_CASES, check)


def test_gate_refusals_are_0_12_bodies():
    assert wire.gate_refusal(wire.route("POST", "/run")) == (
        403,
        {"error": "serial mismatch", "status": "forbidden"},
    )
    assert wire.gate_refusal(wire.route("GET", "/capabilities")) == (403, {"error": "forbidden"})
    assert wire.gate_refusal(wire.route("GET", "/result/x"))[1]["error"] == "serial mismatch"


def _rejected(body: bytes) -> dict:
    with pytest.raises(wire.RunRejected) as info:
        wire.parse_run(body)
    return info.value.body


RUN_REJECTIONS_HAVE_0_12_SHAPES_CASES = [
    (b"nope", {"exit": -1, "error": "invalid JSON"}),
    (b"", {"exit": -1, "error": "invalid JSON"}),
    (b"\xff\xfe", {"exit": -1, "error": "invalid JSON"}),
    (b"[1,2]", {"exit": -1, "error": "invalid JSON"}),
    (b'"text"', {"exit": -1, "error": "invalid JSON"}),
    (b"null", {"exit": -1, "error": "invalid JSON"}),
    (b"[" * 100000, {"exit": -1, "error": "invalid JSON"}),
    (
        b'{"script":"echo-args","args":"x","reqid":"r2"}',
        {"exit": -1, "error": "args must be an array", "reqid": "r2"},
    ),
    (
        b'{"args":{},"reqid":"r2"}',
        {"exit": -1, "error": "args must be an array", "reqid": "r2"},
    ),
    (
        b'{"args":[1],"reqid":"r"}',
        {"exit": -1, "error": "args must be strings without NUL", "reqid": "r"},
    ),
    (
        b'{"args":["a\\u0000b"]}',
        {"exit": -1, "error": "args must be strings without NUL", "reqid": ""},
    ),
    (b'{"reqid":5}', {"exit": -1, "error": "reqid must be a string"}),
    (
        b'{"script":["x"],"reqid":"q"}',
        {"exit": -1, "error": "script must be a string", "reqid": "q"},
    ),
    (b'{"script":"x","token":1}', {"exit": -1, "error": "token must be a string", "reqid": ""}),
    (
        b'{"script":"x","username":{}}',
        {"exit": -1, "error": "username must be a string", "reqid": ""},
    ),
    # lone surrogates: a clear answer, not a connection closed unanswered
    (
        b'{"script":"x","args":["a\\ud800"],"reqid":"s"}',
        {"exit": -1, "error": "args must be valid UTF-8 (no lone surrogates)", "reqid": "s"},
    ),
    (
        b'{"script":"x","reqid":"\\udfff"}',
        {"exit": -1, "error": "reqid must be valid UTF-8 (no lone surrogates)"},
    ),
    (
        b'{"script":"\\ud83d","reqid":"s"}',
        {"exit": -1, "error": "script must be valid UTF-8 (no lone surrogates)", "reqid": "s"},
    ),
    (
        b'{"script":"x","token":"\\udc80","reqid":"s"}',
        {"exit": -1, "error": "token must be valid UTF-8 (no lone surrogates)", "reqid": "s"},
    ),
    # "false" is true to Perl: any non-boolean async is refused
    (
        b'{"script":"x","async":"false","reqid":"s"}',
        {"exit": -1, "error": "async must be true or false (or 1 or 0)", "reqid": "s"},
    ),
    (
        b'{"script":"x","async":2,"reqid":"s"}',
        {"exit": -1, "error": "async must be true or false (or 1 or 0)", "reqid": "s"},
    ),
]


def test_run_rejections_have_0_12_shapes():
    def check(body, expected):
        assert _rejected(body) == expected

    each_case(RUN_REJECTIONS_HAVE_0_12_SHAPES_CASES, check)


def test_run_defaults_and_fields():
    request = wire.parse_run(
        b'{"script":"echo-args","args":["a b","","\\u00e9\\n"],'
        b'"reqid":"bcdda31da6596e86","username":"u","token":"t"}'
    )
    assert request == wire.RunRequest(
        "echo-args", ("a b", "", "\u00e9\n"), "bcdda31da6596e86", "u", "t", False
    )
    assert wire.parse_run(b"{}") == wire.RunRequest("", (), "", "", "", False)
    assert wire.parse_run(b'{"args":null,"reqid":null,"async":1}').run_async is True
    assert wire.parse_run(b'{"async":false}').run_async is False


def test_run_bodies_have_exactly_the_observed_keys():
    request = wire.parse_run(b'{"script":"nope","reqid":"r3"}')
    assert wire.run_refused(request, "script not permitted") == {
        "exit": -1,
        "script": "nope",
        "reqid": "r3",
        "error": "script not permitted",
    }
    assert set(wire.run_result(request, 0, "o", "e")) == {
        "script",
        "exit",
        "stdout",
        "stderr",
        "reqid",
    }


def test_script_context_is_one_compact_line():
    request = wire.parse_run(
        b'{"script":"show-context","args":["a","b"],"reqid":"170b8beafb00a945"}'
    )
    raw = wire.script_context(request, "127.0.0.1", "perl-ref-dispatcher", "2026-11-22T12:59:18Z")
    assert not raw.endswith(b"\n") and b": " not in raw and b", " not in raw
    assert json.loads(raw) == {
        "peer_ip": "127.0.0.1",
        "dispatcher": "perl-ref-dispatcher",
        "token": "",
        "reqid": "170b8beafb00a945",
        "args": ["a", "b"],
        "username": "",
        "script": "show-context",
        "timestamp": "2026-11-22T12:59:18Z",
    }
    unicode = wire.parse_run('{"args":["\u00e9"]}'.encode())
    assert "\u00e9".encode() in wire.script_context(unicode, "", "", "")


PING_REQID_CASES = [
    (b'{"reqid":"abc123"}', "abc123"),
    (b"", ""),
    (b"garbage", ""),
    (b"[]", ""),
    (b'{"reqid":7}', ""),
    (b'{"other":1}', ""),
]


def test_ping_reqid():
    def check(body, reqid):
        assert wire.ping_reqid(body) == reqid

    each_case(PING_REQID_CASES, check)


def test_ping_body_keys():
    body = wire.ping_body("vm", "0.1.0", "Feb 24 12:58:55 2029 GMT", False, "abc")
    assert body == {
        "status": "ok",
        "host": "vm",
        "version": "0.1.0",
        "expiry": "Feb 24 12:58:55 2029 GMT",
        "staged": False,
        "reqid": "abc",
    }


def _expected_fallback(schema: dict) -> str:
    canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:12]


SIDECAR_VERSION_CASES = [
    ({"version": "1.2.0", "read_only": True}, "1.2.0", False),
    ({"version": "sha256:abc"}, None, True),
    ({"version": "has space"}, None, True),
    ({"version": "x" * 65}, None, True),
    ({"version": 3}, None, True),
    ({"version": {"a": 1}}, None, False),
    ({"description": "no version", "b": [1, 2], "a": "\u00e9"}, None, False),
]


def test_sidecar_version():
    def check(schema, version, rejected):
        sidecar = wire.parse_sidecar(json.dumps(schema, indent=2).encode())
        assert sidecar.schema == schema
        assert sidecar.version == (version or _expected_fallback(schema))
        assert sidecar.version_rejected is rejected

    each_case(SIDECAR_VERSION_CASES, check)


def test_sidecar_reformatting_keeps_the_derived_version():
    one = wire.parse_sidecar(b'{"b":1,"a":[1,2]}')
    two = wire.parse_sidecar(b'{\n  "a": [1, 2],\n  "b": 1\n}\n')
    assert one.version == two.version


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"[1]", "not a JSON object"),
        (b"{", "invalid JSON"),
        (b"{" + b" " * wire.MAX_SIDECAR_BYTES + b"}", "oversize"),
    ],
)
def test_unusable_sidecars(raw, reason):
    with pytest.raises(ValueError) as info:
        wire.parse_sidecar(raw)
    assert str(info.value).startswith(reason)


def test_capabilities_body_sorts_scripts_and_includes_schema_only_when_present():
    sidecar = wire.parse_sidecar(b'{"version":"2"}')
    scripts = [
        wire.script_entry("zeta", "/z", True, "default", None),
        wire.script_entry("alpha", "/a", False, "ops", sidecar),
    ]
    body = wire.capabilities_body("vm", "0.1.0", {"env": "test"}, scripts)
    assert [s["name"] for s in body["scripts"]] == ["alpha", "zeta"]
    assert body["scripts"][0] == {
        "name": "alpha",
        "path": "/a",
        "executable": False,
        "profile": "ops",
        "schema": {"version": "2"},
        "schema_version": "2",
    }
    assert set(body["scripts"][1]) == {"name", "path", "executable", "profile"}
    assert set(body) == {"status", "host", "version", "tags", "scripts"}


def test_async_accepts_booleans_and_absence():
    assert wire.parse_run(b'{"script":"x","async":true}').run_async is True
    assert wire.parse_run(b'{"script":"x","async":false}').run_async is False
    assert wire.parse_run(b'{"script":"x","async":null}').run_async is False


def test_a_ping_reqid_with_a_lone_surrogate_is_not_echoed():
    assert wire.ping_reqid(b'{"reqid":"a\\ud800"}') == ""
