"""Accuracy of a forecast against what happened, and against a reference forecast.

Skill is 1 - MAE / MAE_reference: 0 means no better than the reference (persistence unless told
otherwise), 1 perfect, below 0 worse. Only positions where the actual, the forecast and the
reference all have a finite value count, so a model and its reference are scored on the same slots.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.forecast.errors import ForecastInputError
from services.forecast.series import Floats


@dataclass(frozen=True)
class Scores:
    """n: slots scored. mae_w, rmse_w, bias_w (mean forecast - actual) in watts. nmae: MAE / mean
    actual (None when the mean actual is 0, e.g. PV at night). skill: 1 - MAE / MAE of the reference
    (None when the reference is perfect, MAE 0)."""

    n: int
    mae_w: float
    rmse_w: float
    nmae: float | None
    bias_w: float
    skill: float | None


def _floats(name: str, values: Sequence[float | None]) -> Floats:
    try:
        return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        raise ForecastInputError(name, "must hold numbers or None") from None


def score(forecast: Sequence[float], actual: Sequence[float | None], persistence: Sequence[float]) -> Scores:
    """Scores of `forecast` against `actual` (None/NaN skipped), with skill against `persistence`.

    ForecastInputError when the lengths differ or no slot has all three values.
    """
    if not (len(forecast) == len(actual) == len(persistence)):
        raise ForecastInputError(
            "actual",
            f"forecast, actual and reference must be as long: {len(forecast)}, {len(actual)}, {len(persistence)}",
        )
    f = _floats("forecast", forecast)
    a = _floats("actual", actual)
    p = _floats("persistence", persistence)
    keep = np.isfinite(f) & np.isfinite(a) & np.isfinite(p)
    n = int(keep.sum())
    if n == 0:
        raise ForecastInputError("actual", "no slot has an actual value to score against")
    error = f[keep] - a[keep]
    mae = float(np.mean(np.abs(error)))
    mean_actual = float(np.mean(a[keep]))
    reference_mae = float(np.mean(np.abs(p[keep] - a[keep])))
    return Scores(
        n=n,
        mae_w=mae,
        rmse_w=float(np.sqrt(np.mean(error * error))),
        nmae=mae / mean_actual if mean_actual != 0.0 else None,
        bias_w=float(np.mean(error)),
        skill=1.0 - mae / reference_mae if reference_mae > 0.0 else None,
    )
