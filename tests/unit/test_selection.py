"""Which agents `@all`, patterns and tag filters select (core/selection.py),
and the API's `select` field (core/api_wire.py)."""

from __future__ import annotations

import json

import pytest

from ctrlexec.core import api_wire
from ctrlexec.core.selection import is_pattern, parse_tag, select
from ctrlexec.errors import SelectionError
from tests.support.tables import each_case

AGENTS = {
    "web-01": {"env": "prod", "role": "web"},
    "web-02": {"env": "staging", "role": "web"},
    "db-01": {"env": "prod", "role": "db"},
    "app": {},
}


SELECT_CASES = [
    (["@all"], [], ["app", "db-01", "web-01", "web-02"]),
    ([], [("env", "prod")], ["db-01", "web-01"]),
    (["web-*"], [], ["web-01", "web-02"]),
    (["web-*"], [("env", "prod")], ["web-01"]),
    (["*-0[1]"], [], ["db-01", "web-01"]),
    (["?pp"], [], ["app"]),
    (["web-02", "web-*"], [], ["web-02", "web-01"]),  # named first, not twice
    (["web-01:7450", "web-*"], [], ["web-01:7450", "web-02"]),
    (["nosuch"], [], ["nosuch"]),  # a name passes through (unknown agent later)
    (["web-01", "db-01"], [("role", "db")], ["db-01"]),
    (["@all"], [("env", "prod"), ("role", "db")], ["db-01"]),
    (["WEB-*"], [], None),  # case matters, as for names
    (["web-*"], [("env", "dev")], None),
    ([], [("missing", "")], None),  # a tag must exist, even with an empty value
    (["web-01"], [("env", "staging")], None),
]


def test_select():
    def check(operands, tags, expected):
        if expected is None:
            with pytest.raises(SelectionError, match="no agent matches"):
                select(operands, tags, AGENTS)
        else:
            assert select(operands, tags, AGENTS) == expected

    each_case(SELECT_CASES, check)


def test_empty_registry_is_an_empty_selection():
    with pytest.raises(SelectionError) as empty:
        select(["@all"], [], {})
    assert str(empty.value) == "no agent matches @all"


@pytest.mark.parametrize("text", ["@all", "web-*", "a?", "[ab]c"])
def test_patterns(text):
    assert is_pattern(text)


@pytest.mark.parametrize("text", ["web-01", "web-01:7443", "db.example.org"])
def test_names_are_not_patterns(text):
    assert not is_pattern(text)


@pytest.mark.parametrize(
    "text, expected",
    [("env=prod", ("env", "prod")), ("k=", ("k", "")), ("a.b=c=d", ("a.b", "c=d"))],
)
def test_parse_tag(text, expected):
    assert parse_tag(text) == expected


@pytest.mark.parametrize("text", ["env", "=x", "sp ace=x", ""])
def test_parse_tag_refuses(text):
    with pytest.raises(SelectionError):
        parse_tag(text)


def test_api_select_field():
    run = api_wire.parse_run(
        json.dumps(
            {"script": "s", "select": {"hosts": ["web-*"], "tags": {"env": "prod"}}}
        ).encode()
    )
    assert run.hosts == [] and run.select == api_wire.Selector(("web-*",), (("env", "prod"),))
    ping = api_wire.parse_ping(b'{"hosts":["a"],"select":{"tags":{"role":"db"}}}')
    assert ping.hosts == ["a"] and ping.select.tags == (("role", "db"),)
    assert api_wire.parse_ping(b'{"hosts":["a"]}').select is None


API_SELECT_FIELD_REFUSALS_CASES = [
    {"script": "s"},
    {"script": "s", "select": {}},
    {"script": "s", "select": []},
    {"script": "s", "select": {"hosts": "web-*"}},
    {"script": "s", "select": {"hosts": [""]}},
    {"script": "s", "select": {"tags": {"env": 1}}},
    {"script": "s", "select": {"tags": {"bad key": "x"}}},
    {"script": "s", "select": {"hosts": ["a"], "other": 1}},
    {"script": "s", "hosts": [], "select": None},
]


def test_api_select_field_refusals():
    def check(body):
        with pytest.raises(api_wire.ApiError) as refused:
            api_wire.parse_run(json.dumps(body).encode())
        assert api_wire.error_reply(refused.value).status == 400

    each_case(API_SELECT_FIELD_REFUSALS_CASES, check, unpack=False)
