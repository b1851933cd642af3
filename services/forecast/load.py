"""Site load forecast from the site's own measured history: a weighted median profile of the past
four weeks (each day weighted by recency and by how alike its type is: weekday / Saturday /
Sunday-or-holiday, the same weekday weighted up for weekly seasonality) and p10/p90 from the spread
of those same days. Public holidays (the `holidays` package) are forecast like Sundays.

A level correction from the last hours' residuals was tried and left out: on the real household
series it made the first hour worse (docs/forecast-models.md).

docs/forecast-models.md has the formulas, the constants' reasons and the measured accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays
import numpy as np
import pandas as pd

from services.forecast.errors import ForecastInputError
from services.forecast.model import SLOT, Forecast, check_slots, check_start
from services.forecast.series import Floats, Ints, to_slots

MODEL_VERSION = "load-1 same-type-day weighted median"

SLOTS_PER_DAY = 96
LOOKBACK_DAYS = 28
NO_COUNTRY = "no country code (Site.country_code): no public holidays used"
# A day's weight halves with each week back (the last 7 days weigh 1, the week before 0.5, ...):
# recent weeks describe the household best, and steps of a whole week keep the last Sunday as
# heavy as yesterday's Saturday.
WEEK_DECAY = 0.5
# Weekly seasonality: the same weekday (Monday for a Monday) counts this much more than another
# weekday, so that with three or more weeks of history the past Mondays together outweigh the other
# weekdays in the median (3 Mondays x 6 x recency vs 12 other weekdays x recency).
SAME_WEEKDAY_WEIGHT = 6.0
# Each slot's profile also looks at the neighbouring slots (+-15 min): household load is spiky and
# its timing varies by minutes from day to day.
WINDOW = 1
# The p10..p90 band widens by this share at 48 h ahead.
WIDEN_AT_48H = 0.25
# Less than a day of measurements: cold start.
MIN_SLOTS = SLOTS_PER_DAY
# A larger share of missing slots in the lookback window marks the forecast degraded.
MAX_MISSING_SHARE = 0.2
# Cold start without any measurement: a household's mean load (3.5 MWh a year is about 400 W).
DEFAULT_MEAN_W = 400.0
# Cold start shape: hourly factors (mean 1) of a generic residential day, low at night with morning
# and evening peaks. EMMA's own rough shape, not a published standard profile.
COLD_START_SHAPE = (
    0.55, 0.48, 0.45, 0.44, 0.45, 0.52, 0.80, 1.10, 1.15, 1.00, 0.95, 1.00,
    1.15, 1.05, 0.95, 0.92, 1.00, 1.20, 1.55, 1.65, 1.55, 1.35, 1.05, 0.74,
)  # fmt: skip
_SHAPE_MEAN = sum(COLD_START_SHAPE) / len(COLD_START_SHAPE)
COLD_START_BAND = (0.5, 1.8)  # p10, p90 as factors of p50

WEEKDAY, SATURDAY, SUNDAY = "weekday", "Saturday", "Sunday or holiday"
# How much a past day of one type says about a day of another: its own type fully, the other weekend
# day half, the other kind of day a little (with few days of history it still informs the level).
WEEKEND_SIMILARITY = 0.25
OTHER_SIMILARITY = 0.1
_SIMILARITY = {
    (a, b): 1.0 if a == b else WEEKEND_SIMILARITY if {a, b} == {SATURDAY, SUNDAY} else OTHER_SIMILARITY
    for a in (WEEKDAY, SATURDAY, SUNDAY)
    for b in (WEEKDAY, SATURDAY, SUNDAY)
}


@dataclass(frozen=True)
class _Calendar:
    zone: ZoneInfo
    holidays: holidays.HolidayBase

    def day_type(self, day: date) -> str:
        if day in self.holidays or day.weekday() == 6:
            return SUNDAY
        return SATURDAY if day.weekday() == 5 else WEEKDAY


def _calendar(country: str, time_zone: str, subdivision: str | None) -> _Calendar:
    try:
        zone = ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ForecastInputError("time_zone", f"unknown IANA time zone {time_zone!r}") from None
    if country == "":
        # A site without a country code still has a load: forecast it with no holidays (a degraded
        # reason says so) rather than refuse; holidays only move a few days a year.
        return _Calendar(zone, holidays.HolidayBase())
    if not isinstance(country, str) or len(country) != 2 or not country.isalpha():
        raise ForecastInputError("country", f"must be an ISO 3166-1 alpha-2 code, got {country!r}")
    try:
        calendar = holidays.country_holidays(country.upper(), subdiv=subdivision)
    except NotImplementedError as exc:
        field = "subdivision" if subdivision and "subdiv" in str(exc).lower() else "country"
        raise ForecastInputError(field, f"no holiday calendar: {exc}") from None
    return _Calendar(zone, calendar)


def _weighted_quantiles(values: Floats, weights: Floats, qs: Sequence[float]) -> list[float]:
    order = np.argsort(values)
    v = values[order]
    cum = np.cumsum(weights[order])
    total = cum[-1]
    # Midpoint rule: each value owns the middle of its weight, so equal weights give the usual quantiles.
    positions = (cum - weights[order] / 2.0) / total
    return [float(x) for x in np.interp(np.asarray(qs, dtype=np.float64), positions, v)]


class _History:
    """The measured load as a (local day x 96 local quarter-hours) matrix, NaN where unknown."""

    def __init__(self, values: Floats, start: datetime, calendar: _Calendar) -> None:
        utc = pd.date_range(start, periods=len(values), freq=pd.Timedelta(SLOT))
        local = utc.tz_convert(calendar.zone)
        days = sorted(set(local.date))
        self.days: list[date] = days
        self.types = [calendar.day_type(d) for d in days]
        row = {d: i for i, d in enumerate(days)}
        rows = np.array([row[d] for d in local.date])
        tods = np.asarray(local.hour * 4 + local.minute // 15)
        sums = np.zeros((len(days), SLOTS_PER_DAY))
        counts = np.zeros((len(days), SLOTS_PER_DAY))
        known = ~np.isnan(values)
        # A local hour repeated when clocks go back lands twice on one cell: the mean of both.
        np.add.at(sums, (rows[known], tods[known]), values[known])
        np.add.at(counts, (rows[known], tods[known]), 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.matrix = np.where(counts > 0, sums / np.maximum(counts, 1.0), np.nan)


class _Profile:
    """Weighted median and p10/p90 offsets per (target day, quarter-hour), from past days only."""

    def __init__(self, history: _History, calendar: _Calendar) -> None:
        self.history = history
        self.calendar = calendar
        self.notes: set[str] = set()
        self._cache: dict[tuple[date, int], tuple[float, float, float]] = {}
        # Per target day: the reference values of every quarter-hour's window and their weights,
        # (96, reference days x window) each; computed once per day instead of once per slot.
        self._days: dict[date, tuple[Floats, Floats] | None] = {}

    def _reference(self, day: date) -> tuple[Ints, Floats]:
        kind = self.calendar.day_type(day)
        h = self.history
        chosen = [i for i, d in enumerate(h.days) if d < day and (day - d).days <= LOOKBACK_DAYS]
        if chosen and not any(h.types[i] == kind for i in chosen):
            self.notes.add(f"no past {kind} in the history: profile from other days")
        rows = np.array(chosen, dtype=np.intp)
        ages = np.array([(day - h.days[i]).days for i in chosen], dtype=np.float64)
        weights = WEEK_DECAY ** ((ages - 1) // 7)
        weights *= np.array([_SIMILARITY[(kind, h.types[i])] for i in chosen], dtype=np.float64)
        if kind == WEEKDAY:
            same = np.array([h.days[i].weekday() == day.weekday() and h.types[i] == WEEKDAY for i in chosen])
            weights = np.where(same, weights * SAME_WEEKDAY_WEIGHT, weights)
        return rows, weights

    def at(self, day: date, tod: int) -> tuple[float, float, float]:
        """(p10, p50, p90) of the profile for local `day` at quarter-hour `tod`; NaN if no data."""
        key = (day, tod)
        if key in self._cache:
            return self._cache[key]
        result = (math.nan, math.nan, math.nan)
        blocks = self._day_blocks(day)
        if blocks is not None:
            values, weights = blocks[0][tod], blocks[1][tod]
            known = ~np.isnan(values)
            if known.any():
                q10, q50, q90 = _weighted_quantiles(values[known], weights[known], (0.1, 0.5, 0.9))
                result = (q10, q50, q90)
        self._cache[key] = result
        return result

    def _day_blocks(self, day: date) -> tuple[Floats, Floats] | None:
        """Row `tod` holds the values of quarter-hours tod-WINDOW..tod+WINDOW of each reference day
        (reference day major, the order the quantiles' tie-breaking has always seen) and their weights."""
        if day not in self._days:
            rows, weights = self._reference(day)
            if not len(rows):
                self._days[day] = None
            else:
                cols = (np.arange(SLOTS_PER_DAY)[:, None] + np.arange(-WINDOW, WINDOW + 1)[None, :]) % SLOTS_PER_DAY
                block = self.history.matrix[rows][:, cols].transpose(1, 0, 2)  # (tod, reference day, window)
                w = np.broadcast_to(weights[None, :, None], block.shape)
                self._days[day] = (block.reshape(SLOTS_PER_DAY, -1), w.reshape(SLOTS_PER_DAY, -1))
        return self._days[day]


def _no_country(country: str) -> tuple[str, ...]:
    if country:
        return ()
    return (NO_COUNTRY,)


def _cold_start(start: datetime, slots: int, zone: ZoneInfo, mean_w: float, reason: str) -> Forecast:
    local = pd.date_range(start + SLOT / 2, periods=slots, freq=pd.Timedelta(SLOT)).tz_convert(zone)
    p50 = np.array([COLD_START_SHAPE[h] / _SHAPE_MEAN * mean_w for h in local.hour])
    lo, hi = COLD_START_BAND
    return Forecast(
        start=start,
        step=SLOT,
        p10=tuple(float(v) for v in p50 * lo),
        p50=tuple(float(v) for v in p50),
        p90=tuple(float(v) for v in p50 * hi),
        degraded=(reason,),
        model_version=MODEL_VERSION,
    )


def forecast_load(
    history: Sequence[tuple[datetime, float]],
    start: datetime,
    slots: int,
    country: str,
    time_zone: str,
    subdivision: str | None = None,
) -> Forecast:
    """Mean site load per 15-minute slot from `start`, with p10/p50/p90.

    `history`: measured load (UTC-aware times, watts, any regular step; None/NaN allowed and counted).
    Only measurements before `start` are used. Days are local days of `time_zone`; holidays are
    those of `country` (ISO code) and `subdivision`.
    """
    start = check_start("start", start)
    slots = check_slots("slots", slots)
    calendar = _calendar(country, time_zone, subdivision)
    series = to_slots(history, "history")
    values = series.values
    first = series.start
    if first is not None and first < start:
        keep = min(len(values), int((start - first) / SLOT))
        values = values[:keep]
        window_start = start - timedelta(days=LOOKBACK_DAYS)
        if first < window_start:
            cut = int((window_start - first) / SLOT)
            values = values[cut:]
            first = first + SLOT * cut
        # Pad up to `start`, so a history ending early counts as missing.
        gap = int((start - first) / SLOT) - len(values)
        values = np.concatenate([values, np.full(gap, np.nan)])
    else:
        values = np.zeros(0)
    known = int(np.count_nonzero(~np.isnan(values)))
    missing = len(values) - known
    if known < MIN_SLOTS or first is None:
        mean_w = float(np.nanmean(values)) if known else DEFAULT_MEAN_W
        reason = (
            f"cold start: {known / 4:.1f} h of measured load (less than a day); "
            f"default residential profile scaled to a mean of {mean_w:.0f} W"
        )
        forecast = _cold_start(start, slots, calendar.zone, mean_w, reason)
        return replace(forecast, degraded=forecast.degraded + _no_country(country))
    hist = _History(values, first, calendar)
    profile = _Profile(hist, calendar)
    degraded: list[str] = []
    share = missing / len(values)
    if share > MAX_MISSING_SHARE:
        degraded.append(
            f"{share:.0%} of the load history is missing (NaN, None or gaps; {missing} of {len(values)} slots), "
            f"more than {MAX_MISSING_SHARE:.0%}"
        )
    local = pd.date_range(start, periods=slots, freq=pd.Timedelta(SLOT)).tz_convert(calendar.zone)
    p10 = np.empty(slots)
    p50 = np.empty(slots)
    p90 = np.empty(slots)
    fallback_mean = float(np.nanmean(values))
    for j, when in enumerate(local):
        q10, q50, q90 = profile.at(when.date(), when.hour * 4 + when.minute // 15)
        if math.isnan(q50):
            q10, q50, q90 = fallback_mean * 0.5, fallback_mean, fallback_mean * 1.8
            profile.notes.add("no past value at some times of day: the mean load used there")
        hours = (j + 0.5) * SLOT.total_seconds() / 3600.0
        widen = 1.0 + WIDEN_AT_48H * hours / 48.0
        p50[j] = q50
        p10[j] = p50[j] - (q50 - q10) * widen
        p90[j] = p50[j] + (q90 - q50) * widen
    floor = min(0.0, float(np.nanmin(values)))
    p50 = np.maximum(p50, floor)
    p10 = np.clip(p10, floor, p50)
    p90 = np.maximum(p90, p50)
    degraded.extend(sorted(profile.notes))
    degraded.extend(_no_country(country))
    return Forecast(
        start=start,
        step=SLOT,
        p10=tuple(float(v) for v in p10),
        p50=tuple(float(v) for v in p50),
        p90=tuple(float(v) for v in p90),
        degraded=tuple(degraded),
        model_version=MODEL_VERSION,
    )
