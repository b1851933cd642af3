"""Resampling a market series (prices, flows, capacities) to 15 minutes or one hour.

Rules, in the order they matter:

- A target slot `[t, t + step)` lies on the UTC grid of `step` (every 15 minutes or every whole UTC
  hour; the bidding zones EMMA knows have whole-hour offsets, so this is also their local grid).
- **A target slot is produced only when the source slots cover it completely.** Any part of it not
  covered by a published source slot makes it a gap: a gap stays a gap, never a zero, never an
  interpolation, never a mean of what happens to be there.
- To a coarser step (PT15M/PT30M to one hour) the value is the **time-weighted mean** of the source
  slots inside it (`Aggregation.TIME_WEIGHTED_MEAN`); for prices this is the mean price of the hour,
  for flows and capacities the mean power (MW) over the hour.
- To a finer step (PT60M to 15 minutes) each target slot **repeats** the value of the source slot
  containing it (`Aggregation.REPEAT`), exactly, not recomputed.
- To the same step the slots come back unchanged (`Aggregation.AS_PUBLISHED`).
- One call resamples one series. Sequences (ENTSO-E classificationSequence), products, auctions and
  geographies are separate series and are never averaged together.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Final, TypeVar

from services.market.model import CapacitySeries, FlowSeries, MarketError, PriceSeries, Slot


class AnalyticsError(MarketError):
    """A request the market analytics cannot answer as asked (an unsupported step, a naive time, series
    that do not belong together); the message says which input and why."""


class Aggregation(enum.Enum):
    """How `resample` turned source slots into target slots."""

    AS_PUBLISHED = "as-published"  # same step: slots unchanged
    TIME_WEIGHTED_MEAN = "time-weighted-mean"  # to a coarser step
    REPEAT = "repeat"  # to a finer step: the containing slot's value, repeated


QUARTER_HOUR: Final = timedelta(minutes=15)
HOUR: Final = timedelta(hours=1)
STEPS: Final = (QUARTER_HOUR, HOUR)

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_US: Final = timedelta(microseconds=1)
_LONGEST: Final = timedelta(days=1)

S = TypeVar("S", PriceSeries, FlowSeries, CapacitySeries)


def aggregation_for(resolution: timedelta, step: timedelta) -> Aggregation:
    """The aggregation `resample` uses from `resolution` to `step`."""
    if step == resolution:
        return Aggregation.AS_PUBLISHED
    return Aggregation.TIME_WEIGHTED_MEAN if step > resolution else Aggregation.REPEAT


def resample(series: S, step: timedelta) -> S:
    """`series` on the `step` grid (15 minutes or one hour), with the module's rules: complete
    coverage or a gap, time-weighted mean to a coarser step, the value repeated to a finer one.

    Raises AnalyticsError for another step, a resolution not above 0 or above a day, a slot time without a
    time zone, or two slots of the series that overlap (the parser never produces them)."""
    return replace(series, resolution=step, slots=resample_slots(series.slots, series.resolution, step))


def resample_slots(slots: Sequence[Slot], resolution: timedelta, step: timedelta) -> tuple[Slot, ...]:
    """`resample` on bare slots of the given resolution."""
    if step not in STEPS:
        raise AnalyticsError(f"step {step} is not supported: resample to 15 minutes or 1 hour")
    if resolution <= timedelta(0):
        raise AnalyticsError(f"series resolution {resolution} is not positive")
    if resolution > _LONGEST:
        # The parsers accept up to a day; a longer slot would expand into an unbounded number of targets.
        raise AnalyticsError(f"series resolution {resolution} is longer than a day")
    return _resample(slots, resolution, step)


def _resample(slots: Sequence[Slot], resolution: timedelta, step: timedelta) -> tuple[Slot, ...]:
    step_us = step // _US
    res_us = resolution // _US
    # Per target slot (its index on the grid): the covered microseconds and the value-weighted sum,
    # and the single source value when exactly one source slot covers it (kept exact for REPEAT).
    covered: dict[int, int] = {}
    parts: dict[int, list[tuple[float, int]]] = {}
    previous_end: int | None = None
    for slot in sorted(slots, key=lambda s: s.start):
        if slot.start.tzinfo is None:
            raise AnalyticsError(f"slot start {slot.start.isoformat()} has no time zone")
        begin = (slot.start - _EPOCH) // _US
        end = begin + res_us
        if previous_end is not None and begin < previous_end:
            raise AnalyticsError(f"slots overlap at {slot.start.astimezone(UTC).isoformat()}")
        previous_end = end
        index = begin // step_us
        while index * step_us < end:
            lo = max(begin, index * step_us)
            hi = min(end, (index + 1) * step_us)
            covered[index] = covered.get(index, 0) + (hi - lo)
            parts.setdefault(index, []).append((slot.value, hi - lo))
            index += 1
    out: list[Slot] = []
    for index in sorted(covered):
        if covered[index] != step_us:
            continue  # partly covered: a gap, not a mean of what is there
        pieces = parts[index]
        # One piece: the value itself, exactly (REPEAT and AS_PUBLISHED never recompute it).
        value = pieces[0][0] if len(pieces) == 1 else math.fsum(v * w for v, w in pieces) / step_us
        out.append(Slot(_EPOCH + index * step, value))
    return tuple(out)
