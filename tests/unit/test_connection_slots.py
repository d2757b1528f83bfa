"""Connection slots (core.admission): strangers that connect and send
nothing never keep a real client out, and never hold handler slots."""

from __future__ import annotations

import pytest

from ctrlexec.core.admission import EVICTED, OVERLOAD, PROMOTED, Limits, Slots


def slots(pending=4, per_address=2, authenticated=2) -> Slots:
    return Slots(Limits(pending, per_address, authenticated))


def test_a_newcomer_over_its_address_cap_replaces_that_address_s_oldest():
    table = slots(pending=10, per_address=2)
    assert table.arrive("a1", "10.0.0.1").evict is None
    assert table.arrive("a2", "10.0.0.1").evict is None
    arrival = table.arrive("a3", "10.0.0.1")
    assert (arrival.evict, arrival.evicted_address) == ("a1", "10.0.0.1")
    assert table.pending_from("10.0.0.1") == 2
    assert table.promote("a1") == EVICTED
    assert table.promote("a3") == PROMOTED


def test_a_full_pool_evicts_the_oldest_of_the_busiest_address():
    table = slots(pending=4, per_address=3)
    for key, address in [("x1", "x"), ("y1", "y"), ("y2", "y"), ("x2", "x")]:
        assert table.arrive(key, address).evict is None
    # x and y hold two each: the tie goes to the address with the oldest (x1)
    assert table.arrive("z1", "z").evict == "x1"
    # now y holds the most
    assert table.arrive("z2", "z").evict == "y1"
    assert table.unauthenticated == 4


def test_a_lone_client_is_not_evicted_while_strangers_hold_more():
    table = slots(pending=8, per_address=8)
    table.arrive("dispatcher", "127.0.0.1")
    for n in range(100):
        table.arrive(f"s{n}", f"10.0.0.{n % 5}")
    assert table.promote("dispatcher") == PROMOTED


def test_authenticated_slots_are_separate_and_capped():
    table = slots(pending=2, per_address=2, authenticated=1)
    table.arrive("a", "h")
    table.arrive("b", "h")
    assert table.promote("a") == PROMOTED
    assert table.promote("b") == OVERLOAD
    assert (table.authenticated, table.unauthenticated) == (1, 0)
    table.leave("a")
    table.leave("b")  # already gone: nothing happens
    table.arrive("c", "h")
    assert table.promote("c") == PROMOTED


def test_strangers_never_take_authenticated_slots():
    table = slots(pending=3, per_address=3, authenticated=2)
    for n in range(50):
        table.arrive(f"idle{n}", f"10.1.0.{n % 7}")
    assert table.authenticated == 0
    table.arrive("d1", "127.0.0.1")
    table.arrive("d2", "127.0.0.1")
    assert [table.promote("d1"), table.promote("d2")] == [PROMOTED, PROMOTED]


def test_leave_frees_the_slot_and_forgets_the_address():
    table = slots()
    table.arrive("a", "h")
    table.leave("a")
    assert (table.unauthenticated, table.pending_from("h")) == (0, 0)


@pytest.mark.parametrize("limits", [(0, 1, 1), (1, 0, 1), (1, 1, 0)])
def test_limits_are_at_least_one(limits):
    with pytest.raises(ValueError):
        Limits(*limits)
