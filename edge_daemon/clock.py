"""Wall-clock time sources.

Timestamps everywhere in the edge daemon are float seconds since the Unix epoch (UTC). A float is what
`time.time()` returns, costs nothing to compare or subtract in the hot path, and converts to the wire's
Timestamp / time-offset columns without allocating datetimes per sample. Deadlines of the control cycle
use `time.monotonic()` instead, never this clock, so a wall-clock step (NTP) cannot bunch cycles.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """A source of wall-clock time in epoch seconds (UTC)."""

    def time(self) -> float: ...


class SystemClock:
    """The real wall clock."""

    def time(self) -> float:
        return time.time()


class ManualClock:
    """A clock that only moves when told to, so simulations can run a day in a second."""

    def __init__(self, start: float) -> None:
        self._now = start
        self._lock = threading.Lock()

    def time(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("a manual clock never goes backwards")
        with self._lock:
            self._now += seconds
            return self._now
