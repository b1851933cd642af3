"""Per-client token buckets for write requests.

Writes (POST, PUT, PATCH, DELETE) reach services that store things; one address sending thousands per
second is a bug or an attack either way. Reads are not limited here: they are cheap, and the live
stream and dashboards poll. The services keep their own finer limits (commands per caller, logins).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass
class _Bucket:
    tokens: float
    updated: float


class WriteLimiter:
    """A token bucket per client address: `burst` writes at once, refilled at `rate_per_s`."""

    # Scanning for idle buckets every this many calls keeps memory bounded without a timer task.
    _PRUNE_EVERY = 4096

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._calls = 0

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def take(self, client: str) -> float:
        """Spend one token for `client`: 0 when allowed, else the seconds until a token is back."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        self._calls += 1
        if self._calls % self._PRUNE_EVERY == 0:
            self._prune(now)
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = _Bucket(self._burst, now)
        else:
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self._rate

    def _prune(self, now: float) -> None:
        # A bucket idle long enough to be full again is the same as no bucket.
        full_after = self._burst / self._rate
        for client in [c for c, b in self._buckets.items() if now - b.updated >= full_after]:
            del self._buckets[client]
