"""Measured series onto the forecast's 15-minute slots: validation, resampling and missing values.

A series is a sequence of (time, watts) with aware times in increasing order; each value is the mean
power from its time to the next sample's (telemetry rollups and the emhass CSV are labelled so).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt

from services.forecast.errors import ForecastInputError
from services.forecast.model import SLOT

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.intp]

# Longer than this between samples is a gap, not the series' step.
_MAX_STEP = timedelta(hours=1)


@dataclass(frozen=True)
class SlotSeries:
    """Mean power per 15-minute slot from `start` (UTC, on a slot boundary); NaN where unknown.

    `missing` counts the slots between the first and the last sample without a value (NaN/None in
    the input or gaps); `step` is the input's regular step.
    """

    start: datetime | None
    values: Floats
    missing: int
    step: timedelta

    @property
    def end(self) -> datetime | None:
        return None if self.start is None else self.start + SLOT * len(self.values)

    def missing_share(self) -> float:
        return self.missing / len(self.values) if len(self.values) else 1.0


def _value(field: str, i: int, value: float | None) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ForecastInputError(f"{field}[{i}]", f"must be a number or None, got {type(value).__name__}")
    v = float(value)
    return v if math.isfinite(v) else math.nan


def floor_slot(when: datetime) -> datetime:
    when = when.astimezone(UTC)
    return when.replace(minute=when.minute - when.minute % 15, second=0, microsecond=0)


def to_slots(series: Sequence[tuple[datetime, float | None]], field: str) -> SlotSeries:
    """`series` on the 15-minute grid. Errors name `field`: naive or unordered times, a step that is
    neither a divisor nor a multiple of 15 minutes."""
    if len(series) == 0:
        return SlotSeries(None, np.zeros(0), 0, SLOT)
    times = [item[0] for item in series]
    raw = [item[1] for item in series]
    for i, when in enumerate(times):
        if not isinstance(when, datetime) or when.utcoffset() is None:
            raise ForecastInputError(f"{field}[{i}]", "time must be timezone-aware")
    # The common case (a store's floats) in one numpy conversion; anything else checked item by item.
    if all(type(v) is float for v in raw):
        vals = np.array(raw, dtype=np.float64)
        vals[~np.isfinite(vals)] = np.nan
    else:
        vals = np.array([_value(field, i, v) for i, v in enumerate(raw)], dtype=np.float64)
    seconds = np.array([t.timestamp() for t in times])
    diffs = np.diff(seconds)
    if (diffs <= 0).any():
        bad = int(np.argmax(diffs <= 0)) + 1
        raise ForecastInputError(f"{field}[{bad}]", "times must be strictly increasing")
    small = diffs[diffs <= _MAX_STEP.total_seconds()]
    step_s = float(np.median(small)) if len(small) else SLOT.total_seconds()
    slot_s = SLOT.total_seconds()
    if step_s >= slot_s:
        per = step_s / slot_s
        if abs(per - round(per)) > 1e-6:
            raise ForecastInputError(field, f"step of {step_s:g} s is not a multiple of 15 minutes")
        cover = round(per)
    else:
        per = slot_s / step_s
        if abs(per - round(per)) > 1e-6:
            raise ForecastInputError(field, f"step of {step_s:g} s does not divide 15 minutes")
        cover = 1
    start = floor_slot(times[0])
    n = int((floor_slot(times[-1]) - start) / SLOT) + cover
    sums = np.zeros(n)
    counts = np.zeros(n)
    index = ((seconds - start.timestamp()) // slot_s).astype(np.intp)
    known = ~np.isnan(vals)
    for k in range(cover):
        np.add.at(sums, index[known] + k, vals[known])
        np.add.at(counts, index[known] + k, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(counts > 0, sums / np.maximum(counts, 1.0), np.nan)
    return SlotSeries(start, out, int(np.isnan(out).sum()), timedelta(seconds=step_s))
