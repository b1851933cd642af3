"""The `alarm engine stats` line: what it counts and that it starts counting again after each line."""

from __future__ import annotations

import logging

import pytest

from services.alarm.engine_stats import PassStats


def test_the_line_summarises_the_passes_since_the_last_one(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("emma.alarm.test")
    stats = PassStats(durations_s=[0.1, 0.3, 0.2], skipped=1, judgements_read=10, judgements_stored=4)
    stats.samples_read += 50
    stats.channels_quiet += 7
    with caplog.at_level(logging.INFO, logger=log.name):
        stats.log(log)
        stats.log(log)
    first, second = caplog.records
    assert first.getMessage() == "alarm engine stats"
    assert (first.passes, first.skipped, first.failed) == (3, 1, 0)  # type: ignore[attr-defined]
    assert (first.pass_ms_median, first.pass_ms_mean, first.pass_ms_max) == (200.0, 200.0, 300.0)  # type: ignore[attr-defined]
    assert (first.judgements_read, first.judgements_stored, first.samples_read) == (10, 4, 50)  # type: ignore[attr-defined]
    assert first.channels_quiet == 7  # type: ignore[attr-defined]
    emptied = (second.passes, second.pass_ms_max, second.skipped, second.samples_read, second.channels_quiet)  # type: ignore[attr-defined]
    assert emptied == (0, 0.0, 0, 0, 0)
