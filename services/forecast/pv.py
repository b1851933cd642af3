"""PV power forecast of one site: pvlib's sun and clear sky, the weather's irradiance mapped onto
quarter-hour slots, transposition to each array, a cell temperature model, PVWatts DC power,
losses and inverter clipping; p10/p90 from a documented uncertainty heuristic.

docs/forecast-models.md has the formulas and the reasons behind each constant.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import pvlib
from pvlib import iam, irradiance, temperature

from services.forecast.errors import ForecastInputError
from services.forecast.model import SLOT, Forecast, PvSystem, WeatherSeries, check_slots, check_start
from services.forecast.series import Floats, Ints, to_slots
from services.forecast.solar import SkyGrid, ceil_hour, floor_hour, sky

MODEL_VERSION = f"pv-1 pvlib-{pvlib.__version__} ineichen haydavies faiman pvwatts"

# Crystalline silicon's power temperature coefficient (PVWatts' "standard" module: -0.37 %/K).
GAMMA_PDC = -0.0037
# ASHRAE incidence angle modifier parameter (pvlib's default b).
IAM_B = 0.05
# Ground reflectance: grass/soil, pvlib's default.
ALBEDO = 0.25
# Without a temperature forecast the cell temperature model gets this ambient temperature.
DEFAULT_AIR_C = 20.0
# Wind is not forecast here; Faiman's model is evaluated at a light breeze.
WIND_M_S = 1.0
# Clear-sky index bounds: above 1 happens (cloud enhancement, low sun), above 1.5 is an error.
MAX_CLEARNESS = 1.5
# Larson et al. (2016): GHI = (offset + (1 - offset) * (1 - cloud)) * GHI_clear, offset 35 %.
CLOUD_OFFSET = 0.35
# Bounds of a learnt correction factor: outside them the measurements describe another system.
MIN_CORRECTION = 0.3
MAX_CORRECTION = 1.3
# The uncertainty heuristic (relative half-width of p10..p90 around p50).
SPREAD_BASE = 0.05
SPREAD_CLOUD = 0.5
SPREAD_HORIZON_H = 48.0
SPREAD_MAX = 0.95
ENHANCEMENT = 0.05  # cloud enhancement margin above clear sky for p90
# Without weather, the sky's cloudiness is unknown: the spread assumes half-cloudy.
UNKNOWN_CLOUDINESS = 0.5


def _check_correction(correction: float) -> float:
    if isinstance(correction, bool) or not isinstance(correction, int | float) or not math.isfinite(correction):
        raise ForecastInputError("correction", f"must be a finite number, got {correction!r}")
    if not 0.0 < correction <= 2.0:
        raise ForecastInputError("correction", f"must be in (0, 2], got {correction:g}")
    return float(correction)


class _SlotWeather:
    """The weather on the slot grid: GHI/DNI/DHI per slot (NaN where unknown), air temperature,
    cloudiness 0..1 for the uncertainty, and which slots it covered."""

    def __init__(self, grid: SkyGrid, weather: WeatherSeries | None) -> None:
        n = len(grid)
        self.ghi = np.full(n, np.nan)
        self.dhi = np.full(n, np.nan)
        self.temp = np.full(n, DEFAULT_AIR_C)
        self.cloudiness = np.full(n, UNKNOWN_CLOUDINESS)
        self.covered = np.zeros(n, dtype=bool)
        if weather is None or len(weather.times) == 0:
            return
        mid_s = grid.mid.as_unit("ns").asi8 / 1e9
        times_s = np.array([t.timestamp() for t in weather.times])
        index = _interval_index(times_s, mid_s)
        inside = index >= 0
        safe = np.where(inside, index, 0)

        def column(values: Sequence[float | None]) -> Floats:
            raw = np.array([np.nan if v is None else float(v) for v in values])
            out = raw[safe]
            out[~inside] = np.nan
            return out

        ghi_w, dni_w, dhi_w, cloud_w = (
            column(weather.ghi_w_m2),
            column(weather.dni_w_m2),
            column(weather.dhi_w_m2),
            column(weather.cloud_cover_pct),
        )
        # Mean clear-sky GHI and cos(zenith) over each weather interval (complete: the grid is
        # extended to whole hours), to turn the interval's mean into a clearness index.
        groups = np.where(inside, index, -1)
        cs_mean = _group_mean(grid.ghi, groups)
        cos_mean = _group_mean(grid.cos_zenith, groups)
        # GHI from DNI and DHI when the source gave those but not GHI (closure equation).
        ghi_from_parts = dhi_w + dni_w * cos_mean
        ghi_w = np.where(np.isnan(ghi_w), ghi_from_parts, ghi_w)
        with np.errstate(divide="ignore", invalid="ignore"):
            clearness = np.where(cs_mean > 1.0, ghi_w / cs_mean, 0.0)
            diffuse_fraction = np.where(ghi_w > 0.0, np.clip(dhi_w / ghi_w, 0.0, 1.0), np.nan)
        clearness = np.clip(clearness, 0.0, MAX_CLEARNESS)
        from_cloud = (CLOUD_OFFSET + (1.0 - CLOUD_OFFSET) * (1.0 - np.clip(cloud_w / 100.0, 0.0, 1.0))) * grid.ghi
        has_ghi = ~np.isnan(ghi_w)
        self.ghi = np.where(has_ghi, clearness * grid.ghi, from_cloud)
        self.dhi = np.where(has_ghi & ~np.isnan(diffuse_fraction), diffuse_fraction * self.ghi, np.nan)
        self.covered = ~np.isnan(self.ghi)
        cloud_known = ~np.isnan(cloud_w)
        self.cloudiness = np.where(
            cloud_known,
            np.clip(cloud_w / 100.0, 0.0, 1.0),
            np.where(has_ghi & (cs_mean > 1.0), np.clip(1.0 - clearness, 0.0, 1.0), UNKNOWN_CLOUDINESS),
        )
        temps = np.array([np.nan if v is None else float(v) for v in weather.temp_air_c])
        known = ~np.isnan(temps)
        if known.any():
            self.temp = np.interp(mid_s, times_s[known], temps[known])
            outside = (mid_s < times_s[known][0] - 3600) | (mid_s > times_s[known][-1] + 3600)
            self.temp[outside] = DEFAULT_AIR_C


def _interval_index(times_s: Floats, mid_s: Floats) -> Ints:
    """For each slot midpoint, the weather value whose interval (previous label, label] holds it, -1 if none.

    Open-Meteo labels irradiance by the end of the interval it averages ("preceding hour mean").
    """
    if len(times_s) == 0:
        return np.full(len(mid_s), -1)
    steps = np.diff(times_s)
    first_step = steps[0] if len(steps) else 3600.0
    starts = np.concatenate([[times_s[0] - first_step], times_s[:-1]])
    index = np.searchsorted(times_s, mid_s, side="left")
    valid = index < len(times_s)
    safe = np.where(valid, index, 0)
    valid &= mid_s > starts[safe]
    return np.where(valid, index, -1)


def _group_mean(values: Floats, groups: Ints) -> Floats:
    """Each element replaced by the mean of its group (groups >= 0); NaN where the group is -1."""
    out = np.full(len(values), np.nan)
    valid = groups >= 0
    if not valid.any():
        return out
    keys = groups[valid]
    sums = np.bincount(keys, weights=values[valid])
    counts = np.bincount(keys)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts
    out[valid] = means[keys]
    return out


def _split(grid: SkyGrid, ghi: Floats, dhi: Floats) -> tuple[Floats, Floats]:
    """DNI and DHI from GHI: the given diffuse fraction where known, else Erbs' decomposition."""
    erbs = irradiance.erbs(ghi, 90.0 - np.degrees(np.arcsin(np.clip(grid.cos_zenith, 0.0, 1.0))), grid.mid)
    dhi_out = np.where(np.isnan(dhi), np.asarray(erbs["dhi"], dtype=float), dhi)
    dhi_out = np.clip(np.nan_to_num(dhi_out), 0.0, ghi)
    with np.errstate(divide="ignore", invalid="ignore"):
        dni = np.where(grid.cos_zenith > 0.0436, (ghi - dhi_out) / grid.cos_zenith, 0.0)  # sun above 2.5 deg
    dni = np.clip(np.nan_to_num(dni), 0.0, grid.dni_extra)
    return dni, dhi_out


def ac_power(system: PvSystem, grid: SkyGrid, ghi: Floats, dni: Floats, dhi: Floats, temp_air: Floats) -> Floats:
    """AC power in W per slot before clipping: each array's plane-of-array irradiance, cell
    temperature and PVWatts DC power, less its losses, summed."""
    total = np.zeros(len(grid))
    above = grid.cos_zenith > 0.0
    for array in system.arrays:
        poa = irradiance.get_total_irradiance(
            array.tilt_deg,
            array.azimuth_deg,
            grid.zenith,
            grid.azimuth,
            dni,
            ghi,
            dhi,
            dni_extra=grid.dni_extra,
            airmass=grid.airmass,
            albedo=ALBEDO,
            model="haydavies",
        )
        aoi = irradiance.aoi(array.tilt_deg, array.azimuth_deg, grid.zenith, grid.azimuth)
        modifier = np.asarray(iam.ashrae(aoi, b=IAM_B), dtype=float)
        direct = np.nan_to_num(np.asarray(poa["poa_direct"], dtype=float)) * modifier
        diffuse = np.nan_to_num(np.asarray(poa["poa_diffuse"], dtype=float))
        effective = np.clip(direct + diffuse, 0.0, None)
        poa_global = np.clip(np.nan_to_num(np.asarray(poa["poa_global"], dtype=float)), 0.0, None)
        cell = np.asarray(temperature.faiman(poa_global, temp_air, WIND_M_S), dtype=float)
        dc = np.asarray(pvlib.pvsystem.pvwatts_dc(effective, cell, array.kwp * 1000.0, GAMMA_PDC), dtype=float)
        total += np.where(above, np.clip(dc, 0.0, None), 0.0) * (1.0 - array.losses_fraction)
    return total


def _quantiles(p50: Floats, clear: Floats, cloudiness: Floats, hours_ahead: Floats) -> tuple[Floats, Floats]:
    widening = 1.0 + hours_ahead / SPREAD_HORIZON_H
    spread = np.clip((SPREAD_BASE + SPREAD_CLOUD * cloudiness) * widening, 0.0, SPREAD_MAX)
    p10 = p50 * (1.0 - spread)
    p90 = p50 + spread * np.clip(clear - p50, 0.0, None) + ENHANCEMENT * p50
    return p10, p90


def forecast_pv(
    system: PvSystem,
    start: datetime,
    slots: int,
    weather: WeatherSeries | None,
    correction: float = 1.0,
) -> Forecast:
    """Mean AC power per 15-minute slot from `start` with p10/p50/p90.

    With weather: its irradiance (or cloud cover) on the slots. Without, or where the weather has
    no value: the clear sky, marked degraded. `correction` scales the result (learn_correction's
    factor from the site's own measurements; 1.0 when nothing was learnt).
    """
    start = check_start("start", start)
    slots = check_slots("slots", slots)
    correction = _check_correction(correction)
    # Whole hours around the window, so each hourly weather interval's clear-sky mean is complete.
    grid_start = floor_hour(start)
    grid_end = ceil_hour(start + SLOT * slots)
    grid_slots = int((grid_end - grid_start) / SLOT)
    grid = sky(system.latitude, system.longitude, system.altitude_m, grid_start, grid_slots)
    slot_weather = _SlotWeather(grid, weather)
    covered = slot_weather.covered
    ghi = np.where(covered, slot_weather.ghi, grid.ghi)
    dni, dhi = _split(grid, ghi, np.where(covered, slot_weather.dhi, grid.dhi))
    dni = np.where(covered, dni, grid.dni)
    temp = slot_weather.temp
    power = ac_power(system, grid, ghi, dni, dhi, temp) * correction
    clear = ac_power(system, grid, grid.ghi, grid.dni, grid.dhi, temp) * correction
    first = int((start - grid_start) / SLOT)
    window = slice(first, first + slots)
    hours_ahead: Floats = (np.arange(slots, dtype=np.float64) + 0.5) * (SLOT.total_seconds() / 3600.0)
    p50 = power[window]
    p10, p90 = _quantiles(p50, clear[window], slot_weather.cloudiness[window], hours_ahead)
    if system.inverter_limit_w > 0.0:
        p10, p50, p90 = (np.minimum(q, system.inverter_limit_w) for q in (p10, p50, p90))
    p10 = np.clip(p10, 0.0, p50)
    p90 = np.maximum(p90, p50)
    degraded: list[str] = []
    n_covered = int(covered[window].sum())
    if weather is None:
        degraded.append("no weather forecast: clear-sky model x correction")
    elif n_covered < slots:
        degraded.append(f"weather covers {n_covered} of {slots} slots: clear sky used for the rest")
    if degraded and correction == 1.0:
        degraded.append("no correction learnt from measured PV")
    return Forecast(
        start=start,
        step=SLOT,
        p10=tuple(float(v) for v in p10),
        p50=tuple(float(v) for v in p50),
        p90=tuple(float(v) for v in p90),
        degraded=tuple(degraded),
        model_version=MODEL_VERSION,
    )


# A day counts as clear-ish when its measured/clear-sky ratio is at least this share of the best day's.
CLEARISH_SHARE = 0.85
# A day is usable when measurements cover this share of its daylight slots.
MIN_DAY_COVERAGE = 0.8
LEARN_DAYS = 14


# 1,000 sites x (LEARN_DAYS + 1) days: each entry is 96 floats (under 1 kB), so about 15 MB at most.
_CLEAR_DAYS_CACHED = 16_384
_clear_days: OrderedDict[tuple[PvSystem, datetime], Floats] = OrderedDict()
# Runs may compute in several executor threads; the lock covers the cache's bookkeeping only.
_clear_days_lock = threading.Lock()


def clear_days(system: PvSystem, first_day: datetime, days: int) -> Floats:
    """The system's clear-sky AC power (20 °C air) in the 96 slots of each UTC day from `first_day`.

    Cached per system and day: a site's correction is learnt again on every run (every 6 hours)
    over the last LEARN_DAYS, and solar position for those 1,400 slots was 12 % of a 1,000-site
    round's CPU; a day's clear sky never changes. The days not cached yet are computed in one call
    (pvlib's fixed cost per call is most of a single day's)."""
    keys = [(system, first_day + timedelta(days=d)) for d in range(days)]
    with _clear_days_lock:
        known = {key: _clear_days[key] for key in keys if key in _clear_days}
    missing = [d for d, key in enumerate(keys) if key not in known]
    if missing:
        lo, hi = missing[0], missing[-1] + 1
        grid = sky(system.latitude, system.longitude, system.altitude_m, keys[lo][1], (hi - lo) * 96)
        clear = ac_power(system, grid, grid.ghi, grid.dni, grid.dhi, np.full(len(grid), DEFAULT_AIR_C))
        for d in range(lo, hi):
            known[keys[d]] = clear[(d - lo) * 96 : (d - lo + 1) * 96]
    with _clear_days_lock:
        for key in keys:
            _clear_days[key] = known[key]
            _clear_days.move_to_end(key)
        while len(_clear_days) > _CLEAR_DAYS_CACHED:
            _clear_days.popitem(last=False)
    return np.concatenate([known[key] for key in keys])


def learn_correction(system: PvSystem, measured: Sequence[tuple[datetime, float]]) -> tuple[float, str]:
    """The ratio of measured to modelled clear-sky energy over the recent clear-ish days, bounded.

    `measured` is AC power in W at any regular step (UTC, each value the mean from its time to the
    next). Days are UTC days; the last LEARN_DAYS are used. Returns (factor, reason); the factor is
    1.0 when no day qualifies, and the reason says why.
    """
    slots = to_slots(measured, "measured")
    if slots.start is None or len(slots.values) == 0:
        return 1.0, "no measured PV: correction 1.0"
    first_day = slots.start.replace(hour=0, minute=0)
    last_end = slots.start + SLOT * len(slots.values)
    first_day = max(first_day, (last_end - timedelta(days=LEARN_DAYS)).replace(hour=0, minute=0))
    days = int((last_end - first_day) / timedelta(days=1)) + 1
    clear = clear_days(system, first_day, days)
    offset = int((slots.start - first_day) / SLOT)
    values = np.full(len(clear), np.nan)
    lo = max(offset, 0)
    hi = min(offset + len(slots.values), len(clear))
    values[lo:hi] = slots.values[lo - offset : hi - offset]
    ratios: list[tuple[datetime, float]] = []
    for d in range(days):
        day = slice(d * 96, (d + 1) * 96)
        daylight = clear[day] > 0.0
        if not daylight.any():
            continue
        seen = daylight & ~np.isnan(values[day])
        if seen.sum() < MIN_DAY_COVERAGE * daylight.sum():
            continue
        modelled = float(clear[day][seen].sum())
        if modelled <= 0.0:
            continue
        ratios.append((first_day + timedelta(days=d), float(np.nansum(values[day][seen])) / modelled))
    if not ratios:
        return 1.0, "no day with enough measured PV: correction 1.0"
    best = max(r for _, r in ratios)
    if best <= 0.0:
        return 1.0, "measured PV is zero on every day: correction 1.0"
    clearish = [(d, r) for d, r in ratios if r >= CLEARISH_SHARE * best]
    factor = float(np.median([r for _, r in clearish]))
    bounded = min(max(factor, MIN_CORRECTION), MAX_CORRECTION)
    dates = ", ".join(d.astimezone(UTC).date().isoformat() for d, _ in clearish)
    reason = f"correction {bounded:.3f} from {len(clearish)} clear-ish of {len(ratios)} measured days ({dates})"
    if bounded != factor:
        reason += f"; learnt {factor:.3f} was outside [{MIN_CORRECTION}, {MAX_CORRECTION}]"
    return bounded, reason
