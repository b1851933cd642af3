"""At most one log line per interval for noise an outsider can cause at will.

Anyone who can open a connection can send undecodable bytes; one WARNING per stream would let them
fill the disk and drown real warnings. A LogLimiter lets the first line of an interval through and
counts what it holds back, so the next line that passes says how many were not written.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class LogLimiter:
    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._last: float | None = None
        self._held_back = 0

    def allow(self) -> int | None:
        """None: do not log now. A number: log, and say that many lines were held back since the last one."""
        now = self._clock()
        if self._last is not None and now - self._last < self._interval_s:
            self._held_back += 1
            return None
        held_back, self._held_back, self._last = self._held_back, 0, now
        return held_back
