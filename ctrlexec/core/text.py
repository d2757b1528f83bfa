"""Checks on JSON values at the boundaries, shared by the agent and the API.

JSON can carry a lone surrogate (`"\\ud800"`), which decodes to a Python
string that has no UTF-8 form: echoing it, logging it, putting it in an
environment variable or an argv fails later, far from the input. Every
boundary checks its strings with `is_utf8` first and answers a clear error.
"""

from __future__ import annotations


def is_utf8(value: str) -> bool:
    """Whether `value` can be written as UTF-8 (no lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_flag(value: object) -> bool | None:
    """A JSON on/off field: true/false, or 1/0 as Perl clients write them;
    absent (None) is off. Anything else (the string "false", which Perl
    would take as true, 2, a list) is None: the caller refuses it."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if type(value) is int and value in (0, 1):
        return bool(value)
    return None
