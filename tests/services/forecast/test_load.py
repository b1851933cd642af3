"""The load model on series whose answer is known by construction: holidays, weekly seasonality,
cold start, missing values, DST, bad input."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.forecast.errors import ForecastInputError
from services.forecast.load import DEFAULT_MEAN_W, forecast_load
from services.forecast.model import MAX_HORIZON_SLOTS, SLOT

PARIS = ZoneInfo("Europe/Paris")


def _history(
    start: date, days: int, watts: dict[int, float], missing_every: int = 0
) -> list[tuple[datetime, float | None]]:
    """Hourly samples: `watts[weekday]` all day (Monday 0), from local midnight of `start`."""
    first = datetime(start.year, start.month, start.day, tzinfo=PARIS).astimezone(UTC)
    out: list[tuple[datetime, float | None]] = []
    for h in range(days * 24):
        when = first + timedelta(hours=h)
        value: float | None = watts[when.astimezone(PARIS).weekday()]
        if missing_every and h % missing_every == 0:
            value = None if h % 2 else math.nan
        out.append((when, value))
    return out


WEEK = {0: 1000.0, 1: 1000.0, 2: 1000.0, 3: 1000.0, 4: 1000.0, 5: 600.0, 6: 300.0}


def _local_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=PARIS).astimezone(UTC)


def test_a_public_holiday_is_forecast_like_a_sunday() -> None:
    # Thursday 2022-05-26 is Ascension Day in France; the day before is an ordinary Wednesday.
    history = _history(date(2022, 5, 2), 23, WEEK)
    holiday = forecast_load(history, _local_midnight(date(2022, 5, 26)), 96, "FR", "Europe/Paris")
    assert set(holiday.p50) == {300.0}
    workday = forecast_load(history, _local_midnight(date(2022, 5, 25)), 96, "FR", "Europe/Paris")
    assert set(workday.p50) == {1000.0}
    # Without France's calendar the same Thursday is a weekday.
    elsewhere = forecast_load(history, _local_midnight(date(2022, 5, 26)), 96, "JP", "Europe/Paris")
    assert set(elsewhere.p50) == {1000.0}
    assert not holiday.degraded


def test_weekly_seasonality_a_weekday_with_its_own_pattern() -> None:
    week = {**WEEK, 0: 2000.0}  # Mondays are laundry days
    history = _history(date(2022, 3, 7), 28, week)
    monday = forecast_load(history, _local_midnight(date(2022, 4, 4)), 96, "FR", "Europe/Paris")
    tuesday = forecast_load(history, _local_midnight(date(2022, 4, 5)), 96, "FR", "Europe/Paris")
    assert set(monday.p50) == {2000.0}
    assert set(tuesday.p50) == {1000.0}


def test_cold_start_uses_the_default_profile_scaled_to_what_was_measured() -> None:
    start = datetime(2022, 5, 10, tzinfo=UTC)
    few = [(start - timedelta(hours=10) + timedelta(hours=h), 800.0) for h in range(10)]
    forecast = forecast_load(few, start, 96, "FR", "Europe/Paris")
    assert forecast.degraded and "cold start: 10.0 h" in forecast.degraded[0]
    assert sum(forecast.p50) / 96 == pytest.approx(800.0, rel=0.03)
    nothing = forecast_load([], start, 96, "FR", "Europe/Paris")
    assert sum(nothing.p50) / 96 == pytest.approx(DEFAULT_MEAN_W, rel=0.03)
    assert "cold start: 0.0 h" in nothing.degraded[0]
    assert all(lo <= mid <= hi for lo, mid, hi in zip(nothing.p10, nothing.p50, nothing.p90, strict=True))


def test_nan_and_none_in_history_are_skipped_counted_and_flagged() -> None:
    # A third of the hours missing, the same hours every day (24 is a multiple of 3).
    history = _history(date(2022, 5, 2), 14, WEEK, missing_every=3)
    forecast = forecast_load(history, _local_midnight(date(2022, 5, 16)), 96, "FR", "Europe/Paris")
    assert sorted(forecast.p50)[48] == 1000.0
    # Quarter-hours no day ever measured get the mean load, and the forecast says so.
    assert any("no past value at some times of day" in reason for reason in forecast.degraded)
    assert any(
        "33% of the load history is missing (NaN, None or gaps; 448 of 1344 slots)" in reason
        for reason in forecast.degraded
    )
    clean = forecast_load(
        _history(date(2022, 5, 2), 14, WEEK), _local_midnight(date(2022, 5, 16)), 96, "FR", "Europe/Paris"
    )
    assert not clean.degraded


def test_across_a_dst_change_every_slot_is_forecast() -> None:
    history = _history(date(2022, 10, 3), 27, WEEK)
    start = _local_midnight(date(2022, 10, 30))  # Sunday, 25 local hours
    forecast = forecast_load(history, start, 4 * 25, "FR", "Europe/Paris")
    assert forecast.slots == 100 and set(forecast.p50) == {300.0}
    assert forecast.start == start and forecast.step == SLOT


def test_history_after_the_start_is_not_used() -> None:
    history = _history(date(2022, 5, 2), 14, WEEK)
    start = _local_midnight(date(2022, 5, 9))  # a week in: the second week must not leak in
    leaky = [(t, v if t < start else 9999.0) for t, v in history]
    assert (
        forecast_load(leaky, start, 96, "FR", "Europe/Paris").p50
        == forecast_load(history, start, 96, "FR", "Europe/Paris").p50
    )


def test_bad_input_names_the_field() -> None:
    history = _history(date(2022, 5, 2), 3, WEEK)
    start = _local_midnight(date(2022, 5, 5))
    cases = {
        "slots": lambda: forecast_load(history, start, MAX_HORIZON_SLOTS + 1, "FR", "Europe/Paris"),
        "start": lambda: forecast_load(history, start.replace(tzinfo=None), 4, "FR", "Europe/Paris"),
        "time_zone": lambda: forecast_load(history, start, 4, "FR", "Mars/Olympus"),
        "country": lambda: forecast_load(history, start, 4, "XX", "Europe/Paris"),
        "history[1]": lambda: forecast_load([history[1], history[0]], start, 4, "FR", "Europe/Paris"),
        "history[0]": lambda: forecast_load(
            [(history[0][0].replace(tzinfo=None), 1.0)], start, 4, "FR", "Europe/Paris"
        ),
    }
    for field, call in cases.items():
        with pytest.raises(ForecastInputError) as caught:
            call()
        assert caught.value.field == field, field
