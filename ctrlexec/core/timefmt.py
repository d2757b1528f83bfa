"""Time texts used on the wire and in state files. `now` is always passed in."""

from __future__ import annotations

import calendar
import re
import time

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_NOTAFTER = re.compile(r"(\w+)\s+(\d+)\s+(\d+):(\d+):(\d+)\s+(\d{4})\s+GMT")


def iso_utc(epoch: float) -> str:
    """`YYYY-MM-DDTHH:MM:SSZ`, the form of every timestamp in 0.12's JSON."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def parse_iso_utc(text: str) -> float:
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))


def openssl_notafter(epoch: float) -> str:
    """The `openssl x509 -enddate` text: `Jan  5 12:00:00 2027 GMT` (day
    space-padded). A 0.12 dispatcher parses ping `expiry` in this form."""
    t = time.gmtime(epoch)
    return (
        f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {t.tm_year} GMT"
    )


def parse_openssl_notafter(text: str) -> float | None:
    """Epoch of a notAfter text, or None when it is not in that form."""
    match = _NOTAFTER.search(text or "")
    if not match:
        return None
    month, day, hh, mm, ss, year = match.groups()
    if month not in _MONTHS:
        return None
    return float(
        calendar.timegm(
            (int(year), _MONTHS.index(month) + 1, int(day), int(hh), int(mm), int(ss), 0, 0, 0)
        )
    )
