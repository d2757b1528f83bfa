import os
import re

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
        log.format_line("x", {"MSG": 'two "words"', "E": None})
        == 'ACTION=x E= MSG="two \\x22words\\x22"'
    )


def test_newlines_cannot_forge_lines():
    assert "\n" not in log.format_line("x", {"A": "a\nACTION=fake"})


KV = re.compile(r'([A-Z_]+)=("[^"]*"|\S*)')


@pytest.mark.parametrize(
    "value",
    [
        'a" ACTION=run EXIT=0 USER="b',  # ends the quoted value early
        '" ACTION=run',
        "x\u2028ACTION=run",  # a line end to str.splitlines and some viewers
        "x\x85ACTION=run",
        "x\x1b[2Jy",
    ],
)
def test_a_value_is_one_pair_whatever_it_holds(value):
    """A logfmt reader finds exactly the pairs we wrote: a value from a peer
    cannot add a pair (a second ACTION) or a line."""
    line = log.format_line("deny", {"USER": value, "PEER": "10.0.0.1"})
    assert len(line.splitlines()) == 1
    assert [key for key, _ in KV.findall(line)] == ["ACTION", "PEER", "USER"]
    assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029]", line)


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


def test_a_log_file_with_another_hard_link_is_not_written(tmp_path):
    """A link planted where the log file goes (say to /etc/passwd, where
    fs.protected_hardlinks is off) must not receive root's lines."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("precious\n")
    os.link(elsewhere, tmp_path / "ctrl-exec.log")
    try:
        with pytest.raises(OSError, match="hard links"):
            log.configure("ctrl-exec-agent", str(tmp_path / "ctrl-exec.log"), "kv")
    finally:
        log.configure("ctrl-exec-agent", "stderr", "kv")
    assert elsewhere.read_text() == "precious\n"
