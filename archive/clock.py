"""Time, injected: everything that decides by date (retention, disposition, lock checks) asks a clock.

Production code uses :data:`SYSTEM`; tests pass a :class:`FixedClock` and travel years without sleeping.
The object store keeps its own clock (on S3 the server's): a record the archive's clock says is due is
still refused deletion while the store's lock runs, whatever the local clock says.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    """The machine's clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock that says what it is told; ``advance`` moves it on."""

    def __init__(self, at: datetime) -> None:
        if at.tzinfo is None:
            raise ValueError("FixedClock needs an aware datetime")
        self.at = at.astimezone(UTC)

    def now(self) -> datetime:
        return self.at

    def advance(self, delta: timedelta) -> None:
        self.at += delta

    def set(self, at: datetime) -> None:
        self.at = at.astimezone(UTC)


SYSTEM = SystemClock()
