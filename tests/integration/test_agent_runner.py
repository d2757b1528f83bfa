"""agent/runner.py with real processes: argv, environment, stdin, output cap,
timeouts that kill the whole process group, exit-code mapping."""

import errno
import json
import os
import sys
import threading
import time

import pytest

from ctrlexec.agent import runner
from ctrlexec.agent.runner import ScriptJob, run_script

SH = "/bin/sh"


def sh(code: str, **kwargs) -> ScriptJob:
    return ScriptJob(SH, (SH, "-c", code), **kwargs)


def write(path, text, mode=0o755):
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_argv_is_passed_verbatim_with_argv0_from_the_allowlist(tmp_path):
    script = write(
        tmp_path / "argv.py", f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv))\n"
    )
    args = ["a b", "", "line\nbreak", "\u00e9\u4e2d", "$(rm -rf /)", "*", "--flag=1"]
    result = run_script(ScriptJob(script, (script, *args)))
    assert result.exit == 0, result.stderr
    assert json.loads(result.stdout) == [script, *args]
    # argv[0] is what the allowlist says, even when another file is executed
    shown = run_script(ScriptJob(SH, ("/configured/path", "-c", 'printf %s "$0"')))
    assert shown.stdout == "/configured/path"


def test_environment_is_reset_and_cwd_is_root(monkeypatch):
    monkeypatch.setenv("SECRET_FROM_AGENT", "leak")
    monkeypatch.setenv("LANG", "C.UTF-8")
    result = run_script(sh("env; pwd"))
    lines = result.stdout.splitlines()
    env = dict(line.split("=", 1) for line in lines[:-1] if "=" in line)
    assert lines[-1] == "/"
    assert env["PATH"] == runner.SAFE_PATH
    assert env["LANG"] == "C.UTF-8"
    assert "SECRET_FROM_AGENT" not in env
    assert set(env) - {"PWD", "SHLVL", "_"} <= {"PATH", *runner.INHERITED_ENV}


def test_stdin_gets_the_context_then_eof():
    result = run_script(sh("cat; echo; echo end", stdin=b'{"x":"\xc3\xa9"}'))
    assert result.stdout == '{"x":"\u00e9"}\nend\n'


def test_script_not_reading_stdin_is_fine():
    result = run_script(sh("exec 0<&-; echo ok", stdin=b"x" * 500_000))
    assert (result.exit, result.stdout) == (0, "ok\n")


def test_large_stdout_and_stderr_while_stdin_is_written_do_not_deadlock():
    code = "head -c 300000 /dev/zero >&2; head -c 300000 /dev/zero; cat >/dev/null"
    result = run_script(sh(code, stdin=b"y" * 300_000))
    assert result.exit == 0
    assert (len(result.stdout), len(result.stderr)) == (300_000, 300_000)


def test_output_beyond_the_cap_is_discarded_and_noted():
    result = run_script(sh("head -c 5000 /dev/zero | tr '\\0' o; printf err >&2", max_output=1024))
    assert result.stdout == "o" * 1024
    assert result.truncated == ("stdout",)
    assert result.stderr == (
        "err\nctrl-exec-agent: stdout truncated: 3976 bytes beyond the "
        "1024-byte limit were discarded\n"
    )


def test_invalid_utf8_output_is_replaced():
    assert run_script(sh("printf 'a\\377b'")).stdout == "a\ufffdb"


@pytest.mark.parametrize(
    "code, exit_code",
    [("exit 0", 0), ("exit 5", 5), ("exit 255", 255), ("kill -9 $$", 126), ("kill -TERM $$", 126)],
)
def test_exit_codes(code, exit_code):
    assert run_script(sh(code)).exit == exit_code


def test_exec_failure_is_127(tmp_path):
    missing = str(tmp_path / "missing.sh")
    result = run_script(ScriptJob(missing, (missing,)))
    assert result.exit == 127
    assert "No such file or directory" in result.stderr
    noexec = write(tmp_path / "noexec.sh", "#!/bin/sh\necho hi\n", 0o644)
    assert run_script(ScriptJob(noexec, (noexec,))).exit == 127


def test_start_failure_mapping():
    exec_error = OSError(errno.ENOENT, "No such file or directory", "/s")
    assert runner.start_failure(exec_error, "/s")[0] == 127
    fork_error = BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
    code, text = runner.start_failure(fork_error, "/s")
    assert code == -1 and "Resource temporarily unavailable" in text
    assert runner.start_failure(OSError(errno.EMFILE, "Too many open files"), "/s")[0] == -1


def test_timeout_kills_the_whole_process_group(tmp_path):
    child_pid = tmp_path / "child.pid"
    code = f"sleep 60 & echo $! > {child_pid}; echo started; wait"
    started = time.monotonic()
    result = run_script(sh(code, timeout=0.5))
    assert time.monotonic() - started < 10
    assert result.timed_out and result.exit == 126
    assert result.stdout == "started\n"
    assert result.stderr.endswith(
        "ctrl-exec-agent: script timed out after 0.5 s; its process group was killed\n"
    )
    pid = int(child_pid.read_text())
    deadline = time.monotonic() + 10
    while not _dead(pid):  # killed: gone, or a zombie waiting for init to reap it
        assert time.monotonic() < deadline, "the background child survived the timeout"
        time.sleep(0.01)


def _dead(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(") ", 1)[1].startswith(("Z", "X"))
    except FileNotFoundError:
        return True


def test_script_that_closes_its_pipes_is_still_bounded_by_the_timeout():
    result = run_script(sh("exec >&- 2>&-; sleep 60", timeout=0.5))
    assert result.timed_out and result.exit == 126


def test_stdin_timeout_closes_stdin_and_the_script_keeps_running():
    # The script never reads: 300 KB cannot fit the pipe, so the write
    # times out while the script is still sleeping; it then finishes normally.
    job = sh("sleep 0.6; echo finished", stdin=b"z" * 300_000, stdin_timeout=0.3)
    result = run_script(job)
    assert (result.exit, result.stdout) == (0, "finished\n")
    assert 0 < result.stdin_unwritten < 300_000


def test_kill_all_ends_running_scripts():
    own = runner.Runner()
    results = []
    thread = threading.Thread(target=lambda: results.append(own.run(sh("sleep 60", timeout=120))))
    thread.start()
    deadline = time.monotonic() + 10
    while own.running() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert own.kill_all() == 1
    thread.join(10)
    assert results and results[0].exit == 126
