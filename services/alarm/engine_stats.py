"""The alarm engine's `alarm engine stats` log line: how long its passes take and how much they read and
store. A pass's length is part of every alarm's latency (a sample waits for the next pass, then for that
pass to end), so this is what an operator or a benchmark reads to see whether the engine keeps up."""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field


@dataclass
class PassStats:
    """Counted since the last line: passes run (`skipped`: another replica held the lock), their
    durations, the judgements read from and written to the database, the samples read one by one, and
    the channels whose new samples all lay inside their rules' quiet bands (asked of the database in
    short, one row per channel)."""

    durations_s: list[float] = field(default_factory=list)
    skipped: int = 0
    failed: int = 0
    judgements_read: int = 0
    judgements_stored: int = 0
    samples_read: int = 0
    channels_quiet: int = 0

    def log(self, log: logging.Logger) -> None:
        """Writes the line and starts counting again."""
        ms = [1000 * d for d in self.durations_s]
        log.info(
            "alarm engine stats",
            extra={
                "passes": len(ms),
                "skipped": self.skipped,
                "failed": self.failed,
                "pass_ms_median": round(statistics.median(ms), 1) if ms else 0.0,
                "pass_ms_mean": round(statistics.fmean(ms), 1) if ms else 0.0,
                "pass_ms_max": round(max(ms, default=0.0), 1),
                "judgements_read": self.judgements_read,
                "judgements_stored": self.judgements_stored,
                "samples_read": self.samples_read,
                "channels_quiet": self.channels_quiet,
            },
        )
        self.durations_s.clear()
        self.skipped = self.failed = self.judgements_read = self.judgements_stored = self.samples_read = 0
        self.channels_quiet = 0
