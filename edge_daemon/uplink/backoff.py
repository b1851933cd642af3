"""Reconnect delays: exponential backoff with full jitter.

The n-th consecutive failure waits a uniformly random time in 0..min(maximum, initial * 2**n). Full
jitter spreads a fleet of edges that lost the cloud at the same moment (a cloud restart) over the
whole window, so they do not come back in synchronized waves. A healthy session resets the count.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, initial_s: float, maximum_s: float, *, rng: random.Random | None = None) -> None:
        if not 0 < initial_s <= maximum_s:
            raise ValueError(f"need 0 < initial_s <= maximum_s, got {initial_s}, {maximum_s}")
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self.attempts = 0
        self._rng = rng or random.Random()

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        # min() before the power would overflow only after ~1000 attempts; cap the exponent instead.
        return min(self.maximum_s, self.initial_s * float(2 ** min(self.attempts, 64)))

    def next_delay(self) -> float:
        """The delay before the next attempt; counts one more failure."""
        delay = self._rng.uniform(0, self.ceiling())
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0

    def slow_delay(self, period_s: float) -> float:
        """A delay for failures that retrying soon cannot fix (a refused key): period/2..period."""
        return self._rng.uniform(period_s / 2, period_s)
