"""Replay a measured series as if live: issue a forecast every `issue_every` from what was known
then, and score each against what happened, per horizon band, next to the naive references.

References: persistence (the last measured value held flat), the same time yesterday and the same
time last week (where the history reaches back that far). Every score of a band is computed on the
same slots as the model's, except the last-week columns, which exist only where a week of history
precedes the slot (the model is scored again on exactly those slots for that comparison).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

import numpy as np

from services.forecast.errors import ForecastInputError
from services.forecast.load import forecast_load
from services.forecast.model import MAX_HORIZON_SLOTS, SLOT, Forecast, PvSystem
from services.forecast.pv import forecast_pv, learn_correction
from services.forecast.scoring import Scores, score
from services.forecast.series import Floats, to_slots

Model = Literal["load", "pv"]
# (history known at issue time, issue time, horizon slots) -> the forecast from the issue time.
Forecaster = Callable[[Sequence[tuple[datetime, float]], datetime, int], Forecast]

DAY_SLOTS = 96
WEEK_SLOTS = 7 * DAY_SLOTS
# Horizon bands (first slot, end slot exclusive): the next hour, the intraday, day-ahead, day two.
DEFAULT_BANDS: tuple[tuple[int, int], ...] = ((0, 4), (4, 24), (24, 96), (96, 192))


@dataclass(frozen=True)
class BandScores:
    """One horizon band. `model` has skill against persistence; `model_vs_yesterday` and
    `model_vs_last_week` are the model's scores with skill against those references (the latter on
    the slots where last week is known). The reference rows are their own errors, with skill
    against persistence."""

    first_slot: int
    end_slot: int
    model: Scores
    persistence: Scores
    yesterday: Scores | None
    model_vs_yesterday: Scores | None
    last_week: Scores | None
    model_vs_last_week: Scores | None

    @property
    def label(self) -> str:
        return f"{self.first_slot * 15 / 60:g}-{self.end_slot * 15 / 60:g} h"


@dataclass(frozen=True)
class BacktestResult:
    model: str
    issues: int
    first_issue: datetime
    last_issue: datetime
    bands: tuple[BandScores, ...]
    degraded: tuple[str, ...] = field(default=())  # distinct reasons the forecasts gave


def _issue_times(first: datetime, end: datetime, min_history: timedelta, issue_every: timedelta) -> list[datetime]:
    # Issue on a grid anchored at UTC midnight, so runs over the same data issue at the same times.
    midnight = first.replace(hour=0, minute=0, second=0, microsecond=0)
    earliest = first + min_history
    steps = math.ceil((earliest - midnight) / issue_every)
    issue = midnight + issue_every * steps
    out = []
    while issue < end - SLOT:
        out.append(issue)
        issue += issue_every
    return out


def _latest_known(values: Floats, slot: int, issued_at: int, period: int) -> float:
    """The value one period (a day, a week) before `slot`, or whole periods further back until it was
    known at issue time; NaN when the history does not reach back that far."""
    back = slot - period * max(1, math.ceil((slot - issued_at + 1) / period))
    return float(values[back]) if back >= 0 else math.nan


def _score_or_none(forecast: Floats, actual: Floats, reference: Floats) -> Scores | None:
    keep = np.isfinite(forecast) & np.isfinite(actual) & np.isfinite(reference)
    if not keep.any():
        return None
    return score(list(forecast[keep]), list(actual[keep]), list(reference[keep]))


def backtest(
    history: Sequence[tuple[datetime, float]],
    model: Model,
    *,
    issue_every: timedelta,
    horizon_slots: int,
    country: str = "",
    time_zone: str = "UTC",
    subdivision: str | None = None,
    system: PvSystem | None = None,
    min_history: timedelta = timedelta(days=1),
    bands: Sequence[tuple[int, int]] = DEFAULT_BANDS,
    forecaster: Forecaster | None = None,
) -> BacktestResult:
    """Scores of `model` on `history` replayed as if live (see the module's docstring).

    `load` needs `country` and `time_zone`; `pv` needs `system` (its forecasts use no weather:
    clear sky x the correction learnt from the measurements before each issue time). `forecaster`
    replaces EMMA's model (called with the history known at issue time, the issue time and the
    horizon), so another model is scored by the same harness on the same slots (forecast-models.md's
    statsforecast comparison).
    """
    if model not in ("load", "pv"):
        raise ForecastInputError("model", f"must be 'load' or 'pv', got {model!r}")
    if model == "pv" and system is None:
        raise ForecastInputError("system", "a PV backtest needs the site's PV system")
    if not 1 <= horizon_slots <= MAX_HORIZON_SLOTS:
        raise ForecastInputError("horizon_slots", f"must be 1..{MAX_HORIZON_SLOTS}, got {horizon_slots}")
    if issue_every < SLOT or issue_every % SLOT:
        raise ForecastInputError("issue_every", "must be a positive multiple of 15 minutes")
    series = to_slots(history, "history")
    if series.start is None or series.end is None:
        raise ForecastInputError("history", "is empty")
    values = series.values
    issues = _issue_times(series.start, series.end, min_history, issue_every)
    if not issues:
        hours = (series.end - series.start) / timedelta(hours=1)
        raise ForecastInputError(
            "history",
            f"covers {hours:g} h from {series.start.isoformat()}: the first forecast is issued after "
            f"{min_history / timedelta(hours=1):g} h of it (on the {issue_every / timedelta(hours=1):g} h grid from "
            "UTC midnight) with at least one slot after it to score",
        )
    clipped = [(a, min(b, horizon_slots)) for a, b in bands if a < horizon_slots]
    rows: dict[str, list[list[float]]] = {k: [[] for _ in clipped] for k in ("f", "a", "p", "y", "w")}
    reasons: set[str] = set()
    samples = [(t, v) for t, v in history]
    for issue in issues:
        at = int((issue - series.start) / SLOT)
        known = [(t, v) for t, v in samples if t < issue]
        if forecaster is not None:
            forecast = forecaster(known, issue, horizon_slots)
        else:
            forecast = _forecast(model, known, issue, horizon_slots, country, time_zone, subdivision, system)
        reasons.update(forecast.degraded)
        past = values[:at]
        finite = past[np.isfinite(past)]
        last = float(finite[-1]) if len(finite) else math.nan
        for b, (lo, hi) in enumerate(clipped):
            for k in range(lo, hi):
                slot = at + k
                actual = values[slot] if slot < len(values) else math.nan
                rows["f"][b].append(forecast.p50[k])
                rows["a"][b].append(actual)
                rows["p"][b].append(last)
                rows["y"][b].append(_latest_known(values, slot, at, DAY_SLOTS))
                rows["w"][b].append(_latest_known(values, slot, at, WEEK_SLOTS))
    out = []
    for b, (lo, hi) in enumerate(clipped):
        f, a, p, y, w = (np.array(rows[k][b], dtype=np.float64) for k in ("f", "a", "p", "y", "w"))
        # The model's own band: slots with an actual and persistence; yesterday/last week on theirs.
        model_scores = _score_or_none(f, a, p)
        if model_scores is None:
            continue
        both = np.isfinite(a) & np.isfinite(p)
        persistence = score(list(p[both]), list(a[both]), list(p[both]))
        with_y = np.isfinite(y)
        with_w = np.isfinite(w)
        out.append(
            BandScores(
                first_slot=lo,
                end_slot=hi,
                model=model_scores,
                persistence=persistence,
                yesterday=_score_or_none(np.where(with_y, y, np.nan), a, p),
                model_vs_yesterday=_score_or_none(np.where(with_y, f, np.nan), a, y),
                last_week=_score_or_none(np.where(with_w, w, np.nan), a, p),
                model_vs_last_week=_score_or_none(np.where(with_w, f, np.nan), a, w),
            )
        )
    return BacktestResult(model, len(issues), issues[0], issues[-1], tuple(out), tuple(sorted(reasons)))


def _forecast(
    model: Model,
    known: Sequence[tuple[datetime, float]],
    issue: datetime,
    horizon_slots: int,
    country: str,
    time_zone: str,
    subdivision: str | None,
    system: PvSystem | None,
) -> Forecast:
    if model == "load":
        return forecast_load(known, issue, horizon_slots, country, time_zone, subdivision)
    assert system is not None  # checked by backtest()
    correction, _ = learn_correction(system, known)
    return forecast_pv(system, issue, horizon_slots, None, correction=correction)
