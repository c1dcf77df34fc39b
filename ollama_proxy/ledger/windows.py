"""Fixed UTC windows: the minute, the calendar day and the calendar month.

Rate limits count per clock minute, budgets per UTC day and month. Fixed windows
(not sliding ones) give every worker and replica the same buckets to add to in
the database, and a ``Retry-After`` that is simply the window's end.
"""

from __future__ import annotations

import calendar
import functools
import time
from typing import Literal

Period = Literal["minute", "day", "month"]
PERIODS: tuple[Period, ...] = ("minute", "day", "month")
DAY = 86400


def window(period: Period, ts: float) -> tuple[int, int]:
    """``(start, end)`` in epoch seconds of the ``period`` window holding ``ts``."""
    if period == "minute":
        start = int(ts // 60) * 60
        return start, start + 60
    if period == "day":
        start = int(ts // DAY) * DAY
        return start, start + DAY
    return _month(int(ts // DAY))


def starts(ts: float) -> tuple[tuple[Period, int], ...]:
    """The ``(period, start)`` of every window ``ts`` falls in (every request asks,
    several times: the month's is computed once a day)."""
    minute = int(ts // 60) * 60
    day = int(ts // DAY)
    return (("minute", minute), ("day", day * DAY), ("month", _month(day)[0]))


def day_of(ts: float) -> str:
    """``YYYY-MM-DD`` of ``ts`` in UTC (the ledger's ``day`` column)."""
    return _day_text(int(ts // DAY))


@functools.lru_cache(maxsize=64)
def _month(day: int) -> tuple[int, int]:
    year, month = time.gmtime(day * DAY)[:2]
    start = calendar.timegm((year, month, 1, 0, 0, 0))
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return start, calendar.timegm((year, month, 1, 0, 0, 0))


@functools.lru_cache(maxsize=64)
def _day_text(day: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day * DAY))
