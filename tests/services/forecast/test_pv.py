"""The PV model against an independent computation of the same physics, clipping, the no-weather
path, learnt correction and bad input.

The independent computation (`_independent_day_energy`) shares no code with the model: its own solar
geometry (Spencer's declination and equation of time, not pvlib's SPA), the published formulas of
Kasten-Young airmass, Ineichen-Perez clear sky, Hay-Davies transposition, the ASHRAE incidence
modifier, Faiman's cell temperature and PVWatts DC power, evaluated every minute (the model
evaluates 15-minute midpoints). Only the Linke turbidity (climatology data, not a computation) is
read from pvlib's table.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from pvlib import clearsky

from services.forecast.errors import ForecastInputError
from services.forecast.model import MAX_HORIZON_SLOTS, SLOT, PvArray, PvSystem, WeatherSeries
from services.forecast.pv import forecast_pv, learn_correction

# Munich, a south-facing 10 kWp roof, mid-June (the Linke turbidity's mid-month value applies).
LAT, LON, ALT = 48.14, 11.58, 520.0
DAY = datetime(2024, 6, 15, tzinfo=UTC)
GAMMA = -0.0037
LOSSES = 0.14
AIR_C = 20.0  # the model's ambient temperature without weather


def _system(limit_w: float = 0.0, tilt: float = 30.0, azimuth: float = 180.0, kwp: float = 10.0) -> PvSystem:
    return PvSystem(LAT, LON, ALT, (PvArray(tilt, azimuth, kwp, LOSSES),), inverter_limit_w=limit_w)


def _independent_day_energy(tilt: float, azimuth: float, kwp: float) -> float:
    """Energy (Wh) of one clear day, from the formulas, one-minute steps."""
    tl = float(
        clearsky.lookup_linke_turbidity(
            pd.DatetimeIndex([DAY + timedelta(hours=12)]), LAT, LON, interp_turbidity=False
        ).iloc[0]
    )
    doy = DAY.timetuple().tm_yday
    lat = math.radians(LAT)
    beta = math.radians(tilt)
    gamma_s = math.radians(azimuth)
    pressure = 101325.0 * (1.0 - 2.25577e-5 * ALT) ** 5.25588
    fh1 = math.exp(-ALT / 8000.0)
    fh2 = math.exp(-ALT / 1250.0)
    cg1 = 5.09e-5 * ALT + 0.868
    cg2 = 3.92e-5 * ALT + 0.0387
    b = 2.0 * math.pi * doy / 365.0
    e0 = 1366.1 * (
        1.00011
        + 0.034221 * math.cos(b)
        + 0.00128 * math.sin(b)
        + 0.000719 * math.cos(2 * b)
        + 0.000077 * math.sin(2 * b)
    )
    energy = 0.0
    for minute in range(24 * 60):
        hour = (minute + 0.5) / 60.0
        g = 2.0 * math.pi / 365.0 * (doy - 1 + (hour - 12.0) / 24.0)
        eqtime = 229.18 * (
            0.000075
            + 0.001868 * math.cos(g)
            - 0.032077 * math.sin(g)
            - 0.014615 * math.cos(2 * g)
            - 0.040849 * math.sin(2 * g)
        )
        decl = (
            0.006918
            - 0.399912 * math.cos(g)
            + 0.070257 * math.sin(g)
            - 0.006758 * math.cos(2 * g)
            + 0.000907 * math.sin(2 * g)
            - 0.002697 * math.cos(3 * g)
            + 0.00148 * math.sin(3 * g)
        )
        ha = math.radians((hour * 60.0 + eqtime + 4.0 * LON) / 4.0 - 180.0)
        cosz = math.sin(lat) * math.sin(decl) + math.cos(lat) * math.cos(decl) * math.cos(ha)
        if cosz <= 0.0:
            continue
        zen_deg = math.degrees(math.acos(cosz))
        sun_az = math.atan2(math.sin(ha), math.cos(ha) * math.sin(lat) - math.tan(decl) * math.cos(lat)) + math.pi
        am = 1.0 / (cosz + 0.50572 * (96.07995 - zen_deg) ** -1.6364)
        ama = am * pressure / 101325.0
        ghi = cg1 * e0 * cosz * math.exp(-cg2 * ama * (fh1 + fh2 * (tl - 1.0)))
        bnci = e0 * (0.664 + 0.163 / fh1) * math.exp(-0.09 * ama * (tl - 1.0))
        bnci2 = ghi * min(max((1.0 - (0.1 - 0.2 * math.exp(-tl)) / (0.1 + 0.882 / fh1)) / cosz, 0.0), 1e20)
        dni = min(bnci, bnci2)
        dhi = ghi - dni * cosz
        cos_aoi = math.cos(beta) * cosz + math.sin(beta) * math.sin(math.acos(cosz)) * math.cos(sun_az - gamma_s)
        direct = dni * max(cos_aoi, 0.0)
        ai = dni / e0
        rb = max(cos_aoi, 0.0) / max(cosz, 0.01745)
        sky_diffuse = dhi * (ai * rb + (1.0 - ai) * (1.0 + math.cos(beta)) / 2.0)
        ground = ghi * 0.25 * (1.0 - math.cos(beta)) / 2.0
        modifier = min(max(1.0 - 0.05 * (1.0 / cos_aoi - 1.0), 0.0), 1.0) if cos_aoi > 0 else 0.0
        effective = direct * modifier + sky_diffuse + ground
        cell = AIR_C + (direct + sky_diffuse + ground) / (25.0 + 6.84 * 1.0)
        dc = effective / 1000.0 * kwp * 1000.0 * (1.0 + GAMMA * (cell - 25.0))
        energy += max(dc, 0.0) * (1.0 - LOSSES) / 60.0
    return energy


@pytest.mark.parametrize(("tilt", "azimuth"), [(30.0, 180.0), (45.0, 110.0), (0.0, 180.0)])
def test_clear_sky_day_energy_matches_an_independent_computation_within_1_percent(tilt: float, azimuth: float) -> None:
    forecast = forecast_pv(_system(tilt=tilt, azimuth=azimuth), DAY, 96, None)
    model_wh = sum(forecast.p50) * SLOT.total_seconds() / 3600.0
    expected_wh = _independent_day_energy(tilt, azimuth, 10.0)
    print(f"tilt {tilt} azimuth {azimuth}: model {model_wh:.0f} Wh, independent {expected_wh:.0f} Wh")
    assert expected_wh > 30_000.0  # a June day on 10 kWp: the computation did produce a day
    assert model_wh == pytest.approx(expected_wh, rel=0.01)


def test_output_is_clipped_at_the_inverter_limit() -> None:
    free = forecast_pv(_system(), DAY, 96, None)
    clipped = forecast_pv(_system(limit_w=5000.0), DAY, 96, None)
    assert max(free.p50) > 6000.0
    assert max(clipped.p90) <= 5000.0
    assert max(clipped.p50) == 5000.0
    for a, b in zip(free.p50, clipped.p50, strict=True):
        assert b == pytest.approx(min(a, 5000.0))


def test_without_weather_the_clear_sky_is_scaled_by_the_correction_and_marked_degraded() -> None:
    one = forecast_pv(_system(), DAY, 96, None)
    scaled = forecast_pv(_system(), DAY, 96, None, correction=0.8)
    assert any("no weather" in reason for reason in one.degraded)
    assert any("no correction" in reason for reason in one.degraded)
    assert not any("no correction" in reason for reason in scaled.degraded)
    for a, b in zip(one.p50, scaled.p50, strict=True):
        assert b == pytest.approx(0.8 * a)
    assert all(lo <= mid <= hi for lo, mid, hi in zip(one.p10, one.p50, one.p90, strict=True))
    assert one.p50[0] == 0.0  # 02:00 local: night
    assert one.start == DAY and one.step == SLOT and one.slots == 96


def _cloud_only(percent: float) -> WeatherSeries:
    times = tuple(DAY + timedelta(hours=h) for h in range(1, 25))
    none: tuple[float | None, ...] = (None,) * 24
    return WeatherSeries(times, none, none, none, (AIR_C,) * 24, (percent,) * 24, "test", DAY)


def test_cloud_cover_alone_scales_the_clear_sky_as_larson_et_al() -> None:
    """Overcast (100 %) leaves 35 % of clear-sky GHI. The energy ratio is a little above: diffuse light
    loses nothing to the incidence modifier and overcast cells run cooler."""
    system = _system(tilt=0.0)
    clear = forecast_pv(system, DAY, 96, _cloud_only(0.0))
    overcast = forecast_pv(system, DAY, 96, _cloud_only(100.0))
    ratio = sum(overcast.p50) / sum(clear.p50)
    assert 0.35 <= ratio <= 0.40
    assert not overcast.degraded  # weather covered every slot
    # Overcast skies are less certain than clear ones: the p10..p90 band is wider relative to p50.
    noon = 44
    assert (overcast.p50[noon] - overcast.p10[noon]) / overcast.p50[noon] > (
        clear.p50[noon] - clear.p10[noon]
    ) / clear.p50[noon]


def test_weather_shorter_than_the_horizon_is_used_where_it_exists_and_says_so() -> None:
    forecast = forecast_pv(_system(), DAY, 192, _cloud_only(100.0))
    assert any("weather covers 96 of 192 slots" in reason for reason in forecast.degraded)
    # Day two falls back to the clear sky: far more than the overcast first day.
    assert sum(forecast.p50[96:]) > 2.0 * sum(forecast.p50[:96])


def test_learn_correction_finds_the_ratio_of_clear_days_and_ignores_cloudy_ones() -> None:
    system = _system()
    start = DAY - timedelta(days=4)
    clear = (
        forecast_pv(system, start, 2 * 96, None).p50
        + forecast_pv(system, start + 2 * timedelta(days=1), 2 * 96, None).p50
    )
    daily_scale = [0.9, 0.3, 0.9, 0.88]  # day two was cloudy
    measured = [(start + SLOT * i, clear[i] * daily_scale[i // 96]) for i in range(4 * 96)]
    factor, reason = learn_correction(system, measured)
    assert factor == pytest.approx(0.9, abs=0.01)
    assert "3 clear-ish of 4" in reason
    assert learn_correction(system, []) == (1.0, "no measured PV: correction 1.0")


def test_learn_correction_is_bounded() -> None:
    system = _system(kwp=1.0)
    clear = forecast_pv(system, DAY, 96, None)
    measured = [(DAY + SLOT * i, v * 5.0) for i, v in enumerate(clear.p50)]
    factor, reason = learn_correction(system, measured)
    assert factor == 1.3
    assert "outside" in reason


def test_bad_input_names_the_field() -> None:
    with pytest.raises(ForecastInputError) as empty:
        PvSystem(LAT, LON, ALT, ())
    assert empty.value.field == "arrays"
    with pytest.raises(ForecastInputError) as tilt:
        PvArray(95.0, 180.0, 5.0)
    assert tilt.value.field == "tilt_deg"
    with pytest.raises(ForecastInputError) as nan_kwp:
        PvArray(30.0, 180.0, math.nan)
    assert nan_kwp.value.field == "kwp"
    with pytest.raises(ForecastInputError) as latitude:
        PvSystem(91.0, LON, ALT, (PvArray(30.0, 180.0, 5.0),))
    assert latitude.value.field == "latitude"
    with pytest.raises(ForecastInputError) as horizon:
        forecast_pv(_system(), DAY, MAX_HORIZON_SLOTS + 1, None)
    assert horizon.value.field == "slots"
    with pytest.raises(ForecastInputError) as naive:
        forecast_pv(_system(), DAY.replace(tzinfo=None), 4, None)
    assert naive.value.field == "start"
    with pytest.raises(ForecastInputError) as off_grid:
        forecast_pv(_system(), DAY + timedelta(minutes=7), 4, None)
    assert off_grid.value.field == "start"
    with pytest.raises(ForecastInputError) as correction:
        forecast_pv(_system(), DAY, 4, None, correction=float("nan"))
    assert correction.value.field == "correction"
    assert np.isfinite(forecast_pv(_system(), DAY, MAX_HORIZON_SLOTS, None).p50).all()


def test_nan_inf_and_none_in_the_measured_pv_are_skipped_not_learnt_from() -> None:
    """Days whose measurements are mostly not numbers are not used; the rest still give the factor.
    With nothing but NaN the factor is 1.0 and the reason says why; nothing raises."""
    system = _system()
    start = DAY - timedelta(days=3)
    clear = forecast_pv(system, start, 3 * 96, None).p50
    bad: tuple[float | None, ...] = (math.nan, math.inf, -math.inf, None)
    measured: list[tuple[datetime, float | None]] = []
    for i, value in enumerate(clear):
        day = i // 96
        # Day one: every value broken. Days two and three: measured at 0.7 with one broken value in ten.
        broken = day == 0 or i % 10 == 0
        measured.append((start + SLOT * i, bad[i % 4] if broken else 0.7 * value))
    factor, reason = learn_correction(system, measured)  # type: ignore[arg-type]
    assert factor == pytest.approx(0.7, abs=0.01)
    assert "of 2 measured days" in reason
    nothing = [(t, math.nan) for t, _ in measured]
    assert learn_correction(system, nothing) == (1.0, "no day with enough measured PV: correction 1.0")
