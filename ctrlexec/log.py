"""Structured `ACTION=... KEY=value` log lines, as ctrl-exec 0.12 writes them.

Format: `ACTION=<action>` first, then every other key sorted (ASCII), single
spaces between pairs; a value containing whitespace is wrapped in double
quotes; None becomes empty. Unlike 0.12 we escape control characters, the
Unicode line separators and double quotes (`\x0a`, `\u2028`, `\x22`): a
newline in a value would otherwise forge a second log line, and a quote
would end a quoted value early, so that the rest of it (`a" ACTION=run
USER="b`) reads as pairs of its own.

Destination (`auto`, the default): syslog when its socket exists (`/dev/log`,
or CTRL_EXEC_SYSLOG_SOCKET), facility daemon, 0.12's idents with the pid in
the tag. Without syslog a daemon writes to stderr (`<ident>: <line>`, which
journald or a container runtime collects) and an interactive command writes
to its fallback file under the state directory, so ACTION lines never land
on an operator's terminal. Explicit targets: syslog, stderr or a file path.
Either format: `kv` (0.12's text) or `json` (one object per line).

A token must never reach a log. `event()` refuses any field whose name
contains TOKEN; the request paths never pass tokens in other fields.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import stat
import sys
import threading
import time
from typing import TextIO

INFO = "INFO"
WARNING = "WARNING"
ERR = "ERR"
_PRIORITY = {INFO: 6, WARNING: 4, ERR: 3}

IDENT_AGENT = "ctrl-exec-agent"
IDENT_DISPATCHER = "ctrl-exec-dispatcher"
IDENT_API = "ctrl-exec-api"
IDENT_EXECUTOR = "ctrl-exec-executor"

TARGETS = ("auto", "syslog", "stderr", "discard")
FORMATS = ("kv", "json")

_WHITESPACE = re.compile(r"\s")
# What a value may not carry raw: control characters (C0, DEL, C1), the
# Unicode line and paragraph separators (line ends to some log readers) and
# the double quote that delimits a value.
_CONTROL = re.compile(r'[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029"]')


SYSLOG_SOCKET_ENV = "CTRL_EXEC_SYSLOG_SOCKET"
DEFAULT_SYSLOG_SOCKET = "/dev/log"
LOG_DAEMON = 3 << 3
# One syslog datagram; longer lines are cut (rsyslog's default limit is 8 KiB).
MAX_SYSLOG_MESSAGE = 16 * 1024


class SyslogSocket:
    """A syslog client on a local Unix socket, written out rather than taken
    from the `syslog` module so that the socket path can be chosen (tests,
    containers) and a failed send is known (the line then goes elsewhere)."""

    def __init__(self, path: str, ident: str) -> None:
        self.path = path
        self.ident = ident
        self._sock: socket.socket | None = None
        self._stream = False

    def _connect(self) -> socket.socket:
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            sock.connect(self.path)
            self._stream = False
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EPROTOTYPE:
                raise
            # some syslog daemons listen with a stream socket
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                raise
            self._stream = True
        return sock

    def open(self) -> None:
        self._sock = self._connect()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def send(self, priority: int, line: str) -> bool:
        """Send one message; reconnect once (syslog restarted). False when
        it could not be delivered."""
        stamp = time.strftime("%b %d %H:%M:%S", time.localtime())
        data = f"<{LOG_DAEMON | priority}>{stamp} {self.ident}[{os.getpid()}]: {line}"
        payload = data.encode("utf-8", "replace")[:MAX_SYSLOG_MESSAGE]
        for _attempt in (1, 2):
            try:
                if self._sock is None:
                    self._sock = self._connect()
                if self._stream:
                    self._sock.sendall(payload + b"\0")
                else:
                    self._sock.send(payload)
                return True
            except OSError:
                self.close()
        return False


def syslog_socket_path() -> str:
    return os.environ.get(SYSLOG_SOCKET_ENV) or DEFAULT_SYSLOG_SOCKET


def syslog_present(path: str | None = None) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path or syslog_socket_path()).st_mode)
    except OSError:
        return False


class _State:
    def __init__(self) -> None:
        self.ident = IDENT_DISPATCHER
        self.target = "stderr"
        self.fmt = "kv"
        self.file: TextIO | None = None
        self.syslog: SyslogSocket | None = None
        self.fallback = "stderr"  # where a line goes when syslog refuses it
        self.configured = False
        self.observers: list = []
        self.deferred: list[tuple[str, str, dict[str, object]]] = []
        self.lock = threading.Lock()


_state = _State()


def configure(
    ident: str,
    target: str | None = None,
    fmt: str | None = None,
    interactive_file: str | os.PathLike | None = None,
) -> str:
    """Set the process's log ident and destination; return the destination
    chosen (`syslog`, `stderr`, `discard` or a file path).

    `target` is auto, syslog, stderr or a file path; defaults come from
    CTRL_EXEC_LOG_TARGET and CTRL_EXEC_LOG_FORMAT. `interactive_file` marks
    an interactive command: with `auto` and no syslog its lines go to that
    file instead of stderr (or, when the file cannot be opened, to stderr
    only if stderr is not a terminal; otherwise nowhere)."""
    target = target or os.environ.get("CTRL_EXEC_LOG_TARGET") or "auto"
    fmt = fmt or os.environ.get("CTRL_EXEC_LOG_FORMAT") or "kv"
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    with _state.lock:
        _close_locked()
        _state.ident = ident
        _state.fmt = fmt
        if target == "auto":
            target = _auto_target(interactive_file)
        if target not in ("syslog", "stderr", "discard"):
            _state.file = _open_log_file(target)
        _state.fallback = "stderr" if interactive_file is None else _quiet_fallback()
        if target == "syslog":
            _state.syslog = SyslogSocket(syslog_socket_path(), ident)
            try:
                _state.syslog.open()
            except OSError:
                pass  # each line retries the connection, then uses the fallback
        _state.target = target
        _state.configured = True
        pending, _state.deferred = _state.deferred, []
    for action, level, fields in pending:
        event(action, level, **fields)
    return target


def _close_locked() -> None:
    if _state.file is not None:
        _state.file.close()
        _state.file = None
    if _state.syslog is not None:
        _state.syslog.close()
        _state.syslog = None


def _auto_target(interactive_file: str | os.PathLike | None) -> str:
    if syslog_present():
        return "syslog"
    if interactive_file is None:
        return "stderr"
    path = os.fspath(interactive_file)
    try:
        _open_log_file(path).close()
        return path
    except OSError:
        return _quiet_fallback()


def _quiet_fallback() -> str:
    """An interactive command's last resort: stderr only when nobody reads
    it on a terminal."""
    try:
        return "discard" if os.isatty(2) else "stderr"
    except OSError:
        return "discard"


def _open_log_file(path: str):
    """Append to a log file; never through a symlink, nor to a file with
    another hard link (a state directory writable by a group must not
    redirect root's writes to another file)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(path, flags, 0o640)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, f"{path} is not a regular file")
        if info.st_nlink != 1:
            raise OSError(errno.EMLINK, f"{path} has {info.st_nlink} hard links")
    except OSError:
        os.close(fd)
        raise
    return os.fdopen(fd, "a", encoding="utf-8", buffering=1)


def destination() -> str:
    """Where lines go now (for status output and tests)."""
    if _state.file is not None:
        return _state.file.name if isinstance(_state.file.name, str) else "file"
    return _state.target


def _clean(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        text = "1" if value else "0"
    else:
        text = str(value)
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def format_line(action: str, fields: dict[str, object]) -> str:
    """The 0.12 message text for one event."""
    parts = [f"ACTION={_quote(_clean(action))}"]
    for key in sorted(fields):
        parts.append(f"{key}={_quote(_clean(fields[key]))}")
    return " ".join(parts)


def _quote(text: str) -> str:
    return f'"{text}"' if _WHITESPACE.search(text) else text


def _check_fields(fields: dict[str, object]) -> None:
    for key in fields:
        if "TOKEN" in key.upper():
            raise ValueError(f"refusing to log field {key!r}: tokens are never logged")
        if key == "ACTION" or not re.fullmatch(r"[A-Z][A-Z0-9_]*", key):
            raise ValueError(f"log field names are upper-case words, not {key!r}")


def event(action: str, level: str = INFO, **fields: object) -> None:
    """Log one ACTION line. Field names are upper-case (`REQID`, `PEER`)."""
    _check_fields(fields)
    if level not in _PRIORITY:
        raise ValueError(f"unknown log level {level!r}")
    for observer in _state.observers:
        observer(action, level, fields)
    if _state.fmt == "json":
        record: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "ident": _state.ident,
            "level": level,
            "ACTION": action,
        }
        record.update({k: v for k, v in fields.items()})
        line = json.dumps(record, sort_keys=False, ensure_ascii=False, default=str)
    else:
        line = format_line(action, fields)
    _emit(level, line)


def observe(callback) -> None:
    """Call `callback(action, level, fields)` for every event from now on
    (metrics count events; the callback must be quick and never raise)."""
    _state.observers.append(callback)


# Events raised before the destination is known (reading the config that
# chooses it) wait for configure(); a process that never configures drops them.
MAX_DEFERRED = 256


def defer(action: str, level: str = INFO, **fields: object) -> None:
    """Log now if the destination is configured, else once it is."""
    if _state.configured:
        event(action, level, **fields)
        return
    _check_fields(fields)
    with _state.lock:
        if len(_state.deferred) < MAX_DEFERRED:
            _state.deferred.append((action, level, fields))


def _emit(level: str, line: str) -> None:
    with _state.lock:
        if _state.syslog is not None:
            if _state.syslog.send(_PRIORITY[level], line):
                return
            where = _state.fallback
        elif _state.file is not None:
            text = line if _state.fmt == "json" else f"{_state.ident}[{os.getpid()}]: {line}"
            _state.file.write(text + "\n")
            return
        else:
            where = _state.target
        if where == "discard":
            return
        text = line if _state.fmt == "json" else f"{_state.ident}: {line}"
        try:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass  # a closed stderr must not take a service down
