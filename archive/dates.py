"""Dates and ISO-8601 durations as retention rules use them (``P7Y``, ``P6M``, ``P30D``, ``PT12H``).

Years and months are calendar arithmetic (2024-02-29 + P1Y = 2025-02-28, never an early 2025-02-27 by
counting days), because regulations count years, not multiples of 365 days.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(
    r"P(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)S)?)?")


@dataclass(frozen=True)
class Duration:
    """An ISO-8601 duration split into calendar (years, months) and exact (the rest) parts."""

    text: str
    years: int = 0
    months: int = 0
    exact: timedelta = timedelta(0)

    def after(self, start: datetime) -> datetime:
        """``start`` plus this duration; month ends clamp (Jan 31 + P1M = Feb 28/29)."""
        month_index = start.month - 1 + self.months + 12 * self.years
        year, month = start.year + month_index // 12, month_index % 12 + 1
        day = min(start.day, calendar.monthrange(year, month)[1])
        return start.replace(year=year, month=month, day=day) + self.exact

    def nominal_seconds(self) -> float:
        """Its length counted from 2000-01-01: exact without years and months, and a consistent key for
        comparing durations that have them (P1Y = P12M > P364D)."""
        return (self.after(_REFERENCE) - _REFERENCE).total_seconds()


_REFERENCE = datetime(2000, 1, 1, tzinfo=UTC)


def parse_duration(text: str) -> Duration:
    """Parse an ISO-8601 duration; raises ValueError naming the text when it is not one."""
    m = _DURATION.fullmatch(text.strip().upper()) if text else None
    if not m or text.strip().upper() in ("P", "PT") or text.strip().upper().endswith("T"):
        raise ValueError(f"{text!r} is not an ISO-8601 duration (e.g. P7Y, P6M, P30D, PT12H)")
    n = {k: int(v) if v else 0 for k, v in m.groupdict().items()}
    return Duration(text.strip().upper(), n["years"], n["months"],
                    timedelta(weeks=n["weeks"], days=n["days"], hours=n["hours"], minutes=n["minutes"],
                              seconds=n["seconds"]))


def parse_datetime(text: str) -> datetime:
    """Parse an ISO-8601 date or date-time; a date means midnight UTC, a naive time means UTC."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO-8601 date or date-time (e.g. 2031-12-31 or "
                         "2031-12-31T23:59:59Z)") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
