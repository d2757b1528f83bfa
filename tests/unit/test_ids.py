"""Request-id rules (core/ids.py) and the check of the reqid an agent echoes."""

from ctrlexec.core import results
from ctrlexec.core.ids import PAIRING_REQID, RUN_REQID, STATUS_REQID, new_reqid
from ctrlexec.core.results import AgentReply
from tests.support.tables import each_case


def ok(body: str, status: int = 200) -> AgentReply:
    return AgentReply(status, "OK", body.encode())


EACH_KIND_OF_REQID_HAS_ONE_RULE_CASES = [
    ("78496fa76dc53023", True, True, True),  # what we make (16 hex)
    ("a3f9b2c10001", True, True, True),  # 0.12's older 12-hex spelling
    ("abc", True, True, False),  # pairing: at least 4
    ("run-1_A", True, False, False),  # 0.12's async rule, not hex
    ("ABCD", True, False, False),  # hex is lowercase
    ("a" * 64, True, True, True),
    ("a" * 65, True, True, False),
    ("a" * 128, True, True, False),
    ("a" * 129, False, False, False),
    ("", False, False, False),
    ("../x", False, False, False),
    ("a.b", False, False, False),
    ("a b", False, False, False),
    ("ab\n", False, False, False),
    (1234, False, False, False),
    (None, False, False, False),
]


def test_each_kind_of_reqid_has_one_rule():
    def check(value, run, status, pairing):
        assert RUN_REQID.matches(value) is run
        assert STATUS_REQID.matches(value) is status
        assert PAIRING_REQID.matches(value) is pairing

    each_case(EACH_KIND_OF_REQID_HAS_ONE_RULE_CASES, check)


def test_shape_alone_ignores_the_length():
    """The agent's /result route and /cancel body check 0.12's shape only."""
    assert RUN_REQID.shaped("a" * 129) and not RUN_REQID.matches("a" * 129)
    assert not RUN_REQID.shaped("a/b") and not RUN_REQID.shaped(None)


def test_every_reqid_we_make_passes_every_rule():
    reqid = new_reqid(lambda n: bytes(range(n)))
    assert reqid == "0001020304050607"
    assert all(rule.matches(reqid) for rule in (RUN_REQID, STATUS_REQID, PAIRING_REQID))


AN_ECHO_OF_ANOTHER_REQID_IS_THE_HOSTS_FAILURE_CASES = [
    ('"r1"', False),
    (None, False),  # 0.12 agents omit it on early errors
    ('""', False),
    ("null", False),
    ('"r2"', True),
    ("1", True),
    ('["r1"]', True),
]


def test_an_echo_of_another_reqid_is_the_hosts_failure():
    def check(echoed, mismatch):
        extra = "" if echoed is None else f',"reqid":{echoed}'
        run = results.run_result("vm", "s", "r1", "1ms", ok('{"exit":0' + extra + "}"), None, 5)
        ping = results.ping_result("vm", "1ms", ok('{"status":"ok"' + extra + "}"), None, 5, "r1")
        submit = results.async_submit_result(
            "vm", "s", "r1", "1ms", ok('{"status":"accepted"' + extra + "}", 202), None, 5
        )
        fetch = results.fetch_result(
            "vm", "r1", "1ms", ok('{"status":"done"' + extra + "}"), None, 5
        )
        for result in (run, ping, submit, fetch):
            assert result.failed is mismatch, result
            assert (result.error == results.REQID_MISMATCH) is mismatch
        if mismatch:
            assert run.to_wire()["reqid"] == "r1" and run.exit_code == -1
            assert "reqid" not in ping.to_wire()

    each_case(AN_ECHO_OF_ANOTHER_REQID_IS_THE_HOSTS_FAILURE_CASES, check)
