"""Structured `ACTION=... KEY=value` log lines, as ctrl-exec 0.12 writes them.

Format: `ACTION=<action>` first, then every other key sorted (ASCII), single
spaces between pairs; a value containing whitespace is wrapped in double
quotes (inner quotes are not escaped, as 0.12); None becomes empty. Unlike
0.12 we escape control characters (a newline in a value would otherwise
forge a second log line).

Destination: syslog through /dev/log with the 0.12 idents (facility daemon,
pid in the tag) when that socket exists, else stderr as `<ident>: <line>`;
or a file; optionally one JSON object per line.

A token must never reach a log. `event()` refuses any field whose name
contains TOKEN; the request paths never pass tokens in other fields.
"""

from __future__ import annotations

import json
import os
import re
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

FORMATS = ("kv", "json")

_WHITESPACE = re.compile(r"\s")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class _State:
    def __init__(self) -> None:
        self.ident = IDENT_DISPATCHER
        self.target = "auto"
        self.fmt = "kv"
        self.file: TextIO | None = None
        self.lock = threading.Lock()


_state = _State()


def configure(ident: str, target: str | None = None, fmt: str | None = None) -> None:
    """Set the process's log ident and destination. `target` is auto, syslog,
    stderr or a file path; defaults come from CTRL_EXEC_LOG_TARGET and
    CTRL_EXEC_LOG_FORMAT."""
    target = target or os.environ.get("CTRL_EXEC_LOG_TARGET") or "auto"
    fmt = fmt or os.environ.get("CTRL_EXEC_LOG_FORMAT") or "kv"
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    with _state.lock:
        if _state.file is not None:
            _state.file.close()
            _state.file = None
        _state.ident = ident
        _state.fmt = fmt
        if target == "auto":
            target = "syslog" if _dev_log_present() else "stderr"
        if target not in ("syslog", "stderr"):
            fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            _state.file = os.fdopen(fd, "a", encoding="utf-8", buffering=1)
        _state.target = target
        if target == "syslog":
            import syslog

            syslog.openlog(ident, syslog.LOG_PID | syslog.LOG_NDELAY, syslog.LOG_DAEMON)


def _dev_log_present() -> bool:
    try:
        return stat.S_ISSOCK(os.stat("/dev/log").st_mode)
    except OSError:
        return False


def _clean(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        text = "1" if value else "0"
    else:
        text = str(value)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)


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


def _emit(level: str, line: str) -> None:
    with _state.lock:
        if _state.target == "syslog":
            import syslog

            syslog.syslog(syslog.LOG_DAEMON | _PRIORITY[level], line)
            return
        if _state.file is not None:
            text = line if _state.fmt == "json" else f"{_state.ident}[{os.getpid()}]: {line}"
            _state.file.write(text + "\n")
            return
        text = line if _state.fmt == "json" else f"{_state.ident}: {line}"
        try:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass  # a closed stderr must not take a service down
