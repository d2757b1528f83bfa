"""Pairing mode's parts that need no port: the one-instance lock and PID
file, the operator's terminal read as bounded lines, and `stop` when
nothing runs. (Serving, `start` and `stop` of a running one are in
tests/integration: they need a port and a process.)"""

from __future__ import annotations

import os
import stat

import pytest

from ctrlexec.dispatcher import pairing_mode, pairing_server
from ctrlexec.errors import StateError


def test_one_instance_holds_the_lock_and_writes_its_pid(tmp_path):
    pidfile = tmp_path / "state" / "pairing-mode.pid"
    first = pairing_mode.Instance(pidfile)
    assert first.running_pid() is None
    first.acquire()
    try:
        assert pidfile.read_text() == f"{os.getpid()}\n"
        assert stat.S_IMODE(pidfile.stat().st_mode) == 0o644
        assert first.running_pid() == os.getpid()
        with pytest.raises(StateError, match=rf"already running \(PID {os.getpid()}\)"):
            pairing_mode.Instance(pidfile).acquire()
    finally:
        first.release()
    assert not pidfile.exists()
    assert pairing_mode.Instance(pidfile).running_pid() is None


def test_stop_with_nothing_running_removes_a_stale_pid_file(tmp_path):
    pidfile = tmp_path / "pairing-mode.pid"
    pidfile.write_text("999999\n")  # no lock held: a crashed pairing mode's
    assert pairing_mode.stop(pidfile) == pairing_mode.Stopped(None, True)
    assert not pidfile.exists()


class Terminal:
    def __init__(self, quit_on: str = "quit"):
        self.read_fd, self.write_fd = os.pipe()
        self.lines: list[str] = []
        self.idles = 0
        self.quit_on = quit_on
        self.reader = pairing_mode.CommandLines(
            pairing_mode.Operator(self.read_fd, self.on_line, self.on_idle)
        )

    def on_line(self, line: str) -> bool:
        self.lines.append(line)
        return line == self.quit_on

    def on_idle(self) -> None:
        self.idles += 1

    def type(self, data: bytes) -> str | None:
        os.write(self.write_fd, data)
        return self.reader.readable()

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def terminal():
    t = Terminal()
    yield t
    t.close()


def test_lines_are_passed_whole_and_trimmed(terminal):
    assert terminal.type(b" a1 \nli") is None
    assert terminal.type(b"st\n") is None
    assert terminal.lines == ["a1", "list"]


def test_quit_ends_pairing_mode(terminal):
    assert terminal.type(b"s\nquit\nd1\n") == pairing_mode.QUIT
    assert terminal.lines == ["s", "quit"]  # nothing after quit is acted on


def test_end_of_input_stops_watching_and_stops_prompting(terminal):
    terminal.reader.idle()
    assert terminal.idles == 1
    os.close(terminal.write_fd)
    assert terminal.reader.readable() == pairing_server.INPUT_CLOSED
    terminal.reader.idle()
    assert terminal.idles == 1


def test_an_endless_line_is_dropped_not_buffered(terminal):
    chunk = b"x" * pairing_mode.MAX_COMMAND
    assert terminal.type(chunk) is None
    assert terminal.type(chunk) is None
    assert len(terminal.reader.buffer) <= pairing_mode.MAX_COMMAND
    assert terminal.type(b"\nlist\n") is None
    assert terminal.lines[-1] == "list"
