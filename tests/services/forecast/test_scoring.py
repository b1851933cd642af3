"""score(): the metrics on hand-checkable numbers, skipped gaps, and bad input."""

from __future__ import annotations

import math

import pytest

from services.forecast.errors import ForecastInputError
from services.forecast.scoring import score


def test_metrics_on_numbers_worked_out_by_hand() -> None:
    # errors +10, -20, +30 (the None slot and the NaN reference slot are skipped)
    result = score(
        [110.0, 180.0, 330.0, 5.0, 7.0], [100.0, 200.0, 300.0, None, 1.0], [100.0, 250.0, 200.0, 0.0, math.nan]
    )
    assert result.n == 3
    assert result.mae_w == pytest.approx(20.0)
    assert result.rmse_w == pytest.approx(math.sqrt((100 + 400 + 900) / 3))
    assert result.bias_w == pytest.approx(20.0 / 3)
    assert result.nmae == pytest.approx(20.0 / 200.0)
    # persistence errors 0, 50, 100: MAE 50, so skill = 1 - 20/50
    assert result.skill == pytest.approx(0.6)


def test_undefined_ratios_are_none_not_a_division_by_zero() -> None:
    night = score([0.0, 0.0], [0.0, 0.0], [0.0, 0.0])
    assert night.nmae is None and night.skill is None and night.mae_w == 0.0


def test_bad_input() -> None:
    with pytest.raises(ForecastInputError) as lengths:
        score([1.0], [1.0, 2.0], [1.0])
    assert lengths.value.field == "actual"
    with pytest.raises(ForecastInputError) as nothing:
        score([1.0, 2.0], [None, None], [1.0, 2.0])
    assert "no slot" in str(nothing.value)
