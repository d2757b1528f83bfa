"""Which serials a node adds to an agent's map (dispatcher/fleet.py)."""

from __future__ import annotations

import pytest

from ctrlexec.dispatcher.fleet import known_serials, missing_serials
from tests.support.tables import each_case

KNOWN_CASES = [
    ({"dispatcher_serial": "a1"}, ["a1"]),
    ({"dispatcher_serial": "a1", "fleet_serials": ["a1", "b1"]}, ["a1", "b1"]),
    ({"dispatcher_serial": ""}, []),
    ({}, []),
    ({"dispatcher_serial": "a1", "fleet_serials": "a1"}, ["a1"]),  # malformed: ignored
    ({"dispatcher_serial": "a1", "fleet_serials": [1]}, ["a1"]),
]


def test_known():
    def check(record, known):
        assert known_serials(record) == known

    each_case(KNOWN_CASES, check)


@pytest.mark.parametrize(
    ("record", "own", "fleet", "missing"),
    [
        ({"dispatcher_serial": "a1"}, "a1", ["a1", "b1"], ["b1"]),
        ({"dispatcher_serial": "a1"}, "b1", ["a1", "b1"], []),  # not trusted: cannot add
        ({"fleet_serials": ["a1", "b1"]}, "b1", ["a1", "b1", "c1"], ["c1"]),
        ({"fleet_serials": ["a1", "b1"]}, "a1", ["a1", "b1"], []),
    ],
)
def test_missing(record, own, fleet, missing):
    assert missing_serials(record, own, fleet) == missing
