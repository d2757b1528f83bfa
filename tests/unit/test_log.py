import pytest

from ctrlexec import log


def test_action_first_then_sorted_and_quoted():
    line = log.format_line(
        "run",
        {
            "SCRIPT": "echo-args",
            "EXIT": 0,
            "PEER": "127.0.0.1",
            "DISPATCHER": "perl-ref-dispatcher",
            "REQID": "170b8beafb00a945",
        },
    )
    assert line == (
        "ACTION=run DISPATCHER=perl-ref-dispatcher EXIT=0 PEER=127.0.0.1 "
        "REQID=170b8beafb00a945 SCRIPT=echo-args"
    )
    assert (
        log.format_line("x", {"MSG": 'two "words"', "E": None}) == 'ACTION=x E= MSG="two "words""'
    )


def test_newlines_cannot_forge_lines():
    assert "\n" not in log.format_line("x", {"A": "a\nACTION=fake"})


@pytest.mark.parametrize("field", ["TOKEN", "API_TOKEN", "token_hint"])
def test_token_fields_are_refused(field):
    with pytest.raises(ValueError):
        log.event("run", **{field: "secret"})


def test_file_target_writes_lines(tmp_path):
    target = tmp_path / "log"
    log.configure("ctrl-exec-agent", str(target), "kv")
    try:
        log.event("start", PORT=7443)
    finally:
        log.configure("ctrl-exec-agent", "stderr", "kv")
    assert "ACTION=start PORT=7443" in target.read_text()
