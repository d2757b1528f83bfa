"""Which serials a node adds to an agent's map, and what the registry record
keeps of each change (core/fleet_trust.py)."""

from __future__ import annotations

import pytest

from ctrlexec.core.fleet_trust import (
    known_serials,
    missing_serials,
    record_added,
    record_removed,
)
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


def test_the_record_follows_adds_and_removals():
    record = {"dispatcher_serial": "a1"}
    record_added(record, ["b1", "a1"])
    assert record["fleet_serials"] == ["a1", "b1"]
    record_added(record, ["a2"])
    record_removed(record, "a1")
    assert record["fleet_serials"] == ["b1", "a2"]
    record_removed(record, "zz")  # not there: nothing changes
    assert record["fleet_serials"] == ["b1", "a2"]


def test_a_record_outside_a_fleet_is_left_as_it_is_by_a_removal():
    record = {"dispatcher_serial": "a2"}  # the file backend's shape
    record_removed(record, "a1")
    assert record == {"dispatcher_serial": "a2"}
