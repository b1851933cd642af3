"""How often `emma up` starts a process of its stack again after it died (its embedded PostgreSQL, an edge
daemon), as a supervisor with a restart limit does: a process that keeps dying is left stopped, with the
reason, instead of being restarted in a loop."""

from __future__ import annotations

import time

RESTARTS_ALLOWED = 3
RESTART_WINDOW_S = 300.0


class RestartBudget:
    """RESTARTS_ALLOWED restarts within any RESTART_WINDOW_S."""

    def __init__(self) -> None:
        self._deaths: list[float] = []

    def spend(self) -> bool:
        """Count a death; whether the process may be started again."""
        now = time.monotonic()
        self._deaths = [t for t in self._deaths if now - t < RESTART_WINDOW_S] + [now]
        return len(self._deaths) <= RESTARTS_ALLOWED

    @property
    def deaths(self) -> int:
        return len(self._deaths)

    @staticmethod
    def window() -> str:
        return f"{RESTART_WINDOW_S / 60:.0f} minutes"
