"""The discovery cache behind /openapi-live.json: one fan-out per TTL."""

from __future__ import annotations

import threading

from ctrlexec.core.results import CAPABILITIES, HostResult
from ctrlexec.dispatcher.discovery_cache import DiscoveryCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def answers(names):
    return [
        HostResult(CAPABILITIES, {"host": name, "status": "ok", "scripts": []}) for name in names
    ]


def test_fresh_answers_are_served_without_asking_and_stale_ones_are_asked_again():
    clock = Clock()
    cache = DiscoveryCache(ttl=300, clock=clock)
    asked: list[list[str]] = []

    def refresh(names):
        asked.append(list(names))
        return answers(names)

    assert [r.host for r in cache.results(["a", "b"], refresh)] == ["a", "b"]
    cache.results(["a", "b"], refresh)
    assert asked == [["a", "b"]]
    clock.now += 200
    cache.store(answers(["b"]))  # /discovery asked b
    clock.now += 150
    cache.results(["a", "b"], refresh)
    assert asked == [["a", "b"], ["a"]]


def test_an_unregistered_agent_leaves_the_cache():
    cache = DiscoveryCache(clock=Clock())
    cache.results(["a", "b"], answers)
    assert [r.host for r in cache.results(["b"], answers)] == ["b"]


def test_concurrent_readers_share_one_refresh():
    cache = DiscoveryCache(clock=Clock())
    calls = []
    gate = threading.Event()

    def refresh(names):
        calls.append(names)
        gate.wait(5)
        return answers(names)

    threads = [threading.Thread(target=cache.results, args=(["a"], refresh)) for _ in range(8)]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join(10)
    assert len(calls) == 1
