import pytest

from ctrlexec.core.ipallow import AddressFilter, parse_entry
from ctrlexec.core.ratelimit import RateLimiter, Rule
from tests.support.tables import each_case


def test_eleventh_connection_in_a_minute_blocks_for_five_minutes():
    limiter = RateLimiter(Rule(10, 60, 300), Rule(3, 600, 3600))
    for second in range(10):
        assert limiter.admit("10.0.0.1", 1000 + second).allowed
    verdict = limiter.admit("10.0.0.1", 1010)
    assert not verdict.allowed and verdict.blocked_now == "volume"
    assert limiter.admit("10.0.0.1", 1200).blocked_now is None
    assert not limiter.admit("10.0.0.1", 1309).allowed
    assert limiter.admit("10.0.0.1", 1311).allowed
    assert limiter.admit("10.0.0.2", 1010).allowed


def test_third_probe_failure_blocks():
    limiter = RateLimiter(Rule(10, 60, 300), Rule(3, 600, 3600))
    assert limiter.record_failure("h", 0).allowed
    assert limiter.record_failure("h", 1).allowed
    assert limiter.record_failure("h", 2).blocked_now == "probe"
    assert not limiter.admit("h", 3).allowed


def test_zero_limit_disables_a_rule():
    limiter = RateLimiter(Rule(0, 60, 300), Rule(0, 600, 3600))
    assert all(limiter.admit("h", t).allowed for t in range(100))


def test_table_is_bounded():
    limiter = RateLimiter(max_tracked=5)
    for i in range(50):
        limiter.admit(f"10.0.0.{i}", 0)
    assert len(limiter) <= 5


@pytest.mark.parametrize("text", ["10/60/300", " 3 / 600 / 3600 "])
def test_rule_parses(text):
    assert Rule.parse(text).limit in (10, 3)


ADDRESS_FILTER_CASES = [
    ("127.0.0.1", "127.0.0.1", True),
    ("127.0.0.1", "127.0.0.2", False),
    ("010.001.0.0/16", "10.1.200.3", True),
    ("192.168.0.0/24", "192.168.1.1", False),
    ("10.0.0.0/8", "::ffff:10.9.9.9", True),
    ("fd00::/8", "fd00::1", True),
    ("127.0.0.1", "::1", False),
]


def test_address_filter():
    def check(entry, address, allowed):
        assert AddressFilter.from_entries([entry]).allows(address) is allowed

    each_case(ADDRESS_FILTER_CASES, check)


@pytest.mark.parametrize("bad", ["300.1.1.1", "1.2.3.4/40", "nonsense"])
def test_bad_entries_are_errors(bad):
    with pytest.raises(ValueError):
        parse_entry(bad)


def test_only_unauthenticated_connections_count_for_volume():
    limiter = RateLimiter(Rule(10, 60, 300), Rule(3, 600, 3600))
    for second in range(9):
        assert limiter.record_unauthenticated("10.0.0.1", 1000 + second).allowed
    assert not limiter.is_blocked("10.0.0.1", 1009)
    verdict = limiter.record_unauthenticated("10.0.0.1", 1009)
    assert verdict.blocked_now == "volume"
    assert limiter.is_blocked("10.0.0.1", 1308)
    assert not limiter.is_blocked("10.0.0.1", 1310)
    assert not limiter.is_blocked("10.0.0.2", 1010)


def test_unauthenticated_connections_spread_over_the_window_never_block():
    limiter = RateLimiter(Rule(10, 60, 300), None)
    for n in range(100):
        assert limiter.record_unauthenticated("h", n * 7).allowed
    assert not limiter.is_blocked("h", 700)


def test_the_default_trusted_ceiling_allows_a_thousand_a_minute():
    from ctrlexec.config.schema import AGENT_KEYS, keys_by_name

    ceiling = RateLimiter(Rule.parse(keys_by_name(AGENT_KEYS)["rate_limit_trusted"].default), None)
    assert all(ceiling.admit("serial-1", n * 0.05).allowed for n in range(1000))  # 50 s
