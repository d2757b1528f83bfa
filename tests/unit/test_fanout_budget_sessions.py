"""The fan-out's process-wide thread budget and the TLS session cache's
bounds (dispatcher/fanout.py, dispatcher/tls_sessions.py)."""

from __future__ import annotations

import ssl
import threading

from ctrlexec.dispatcher.fanout import ThreadBudget, fan_out
from ctrlexec.dispatcher.tls_sessions import SessionCache


def _blocking_work(release: threading.Event, started: threading.Semaphore, stats: dict):
    gate = threading.Lock()

    def work(item: int) -> int:
        with gate:
            stats["active"] += 1
            stats["peak"] = max(stats["peak"], stats["active"])
        started.release()
        release.wait(10)
        with gate:
            stats["active"] -= 1
        return item

    return work


def test_concurrent_fan_outs_share_the_budget_and_both_finish():
    budget = ThreadBudget(3)
    release = threading.Event()
    started = threading.Semaphore(0)
    stats = {"active": 0, "peak": 0}
    work = _blocking_work(release, started, stats)
    outcomes: list[list[int]] = []
    callers = [
        threading.Thread(
            target=lambda: outcomes.append(fan_out(list(range(30)), work, 10, budget=budget))
        )
        for _ in range(2)
    ]
    for caller in callers:
        caller.start()
    # Two callers plus at most three helpers between them: five at once.
    for _ in range(5):
        assert started.acquire(timeout=10)
    assert not started.acquire(timeout=0.01)  # no sixth while five run
    assert budget.in_use == 3
    release.set()
    for caller in callers:
        caller.join(10)
    assert outcomes == [list(range(30))] * 2
    assert stats["peak"] == 5
    assert budget.in_use == 0


def test_an_exhausted_budget_still_lets_an_operation_progress_on_its_own_thread():
    budget = ThreadBudget(0)
    seen: list[str] = []
    result = fan_out(
        list(range(5)), lambda item: seen.append(threading.current_thread().name) or item, 4,
        budget=budget,
    )  # fmt: skip
    assert result == list(range(5))
    assert set(seen) == {threading.current_thread().name}


def test_a_raising_work_does_not_leave_the_caller_waiting():
    budget = ThreadBudget(4)

    def work(item: int) -> int:
        if item == 3:
            raise ValueError("broken promise")
        return item

    try:
        fan_out(list(range(8)), work, 1, budget=budget)
    except ValueError:
        pass
    outcome = fan_out(list(range(8)), lambda item: item, 4, budget=budget)
    assert outcome == list(range(8))
    assert budget.in_use == 0


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _FakeSocket:
    """What Resumption.keep reads of a finished connection."""

    def __init__(self, context, session, reused: bool):
        self.context = context
        self.session = session
        self.session_reused = reused


class _FakeSession:
    has_ticket = True


def _context() -> ssl.SSLContext:
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def test_a_full_cache_keeps_what_it_has_until_sessions_expire():
    context = _context()
    clock = _Clock()
    cache = SessionCache(context, limit=2, max_age=100, clock=clock)
    for key in ("a", "b"):
        cache.slot(key).keep(_FakeSocket(context, _FakeSession(), False))  # type: ignore[arg-type]
    cache.slot("c").keep(_FakeSocket(context, _FakeSession(), False))  # type: ignore[arg-type]
    assert len(cache) == 2 and cache.get("c") is None
    assert cache.get("a") and cache.get("b")
    # An agent already in the cache is updated in place.
    cache.slot("a").keep(_FakeSocket(context, _FakeSession(), False))  # type: ignore[arg-type]
    assert len(cache) == 2
    clock.now += 101  # both expired: room again
    cache.slot("c").keep(_FakeSocket(context, _FakeSession(), False))  # type: ignore[arg-type]
    assert cache.get("c") is not None and len(cache) == 1


def test_sessions_age_from_their_full_handshake_not_their_last_resumption():
    context = _context()
    clock = _Clock()
    cache = SessionCache(context, max_age=100, clock=clock)
    cache.slot("a").keep(_FakeSocket(context, _FakeSession(), False))  # type: ignore[arg-type]
    clock.now += 60
    slot = cache.slot("a")
    assert slot.offer(context) is not None
    slot.keep(_FakeSocket(context, _FakeSession(), True))  # type: ignore[arg-type]  # resumed
    clock.now += 60  # 120 s after the full handshake, 60 s after the resumption
    assert cache.slot("a").offer(context) is None
    assert len(cache) == 0


def test_sessions_belong_to_one_context():
    context, other = _context(), _context()
    cache = SessionCache(context)
    cache.slot("a").keep(_FakeSocket(context, _FakeSession(), False))  # type: ignore[arg-type]
    assert cache.slot("a").offer(other) is None  # another certificate: a full handshake
    cache.slot("b").keep(_FakeSocket(other, _FakeSession(), False))  # type: ignore[arg-type]
    assert cache.get("b") is None
    slot = cache.slot("a")
    slot.forget()
    assert cache.get("a") is None


def test_a_session_without_a_ticket_is_not_kept():
    context = _context()
    cache = SessionCache(context)
    session = _FakeSession()
    session.has_ticket = False
    cache.slot("a").keep(_FakeSocket(context, session, False))  # type: ignore[arg-type]
    assert len(cache) == 0
