"""Sun and clear sky for the PV model: solar position, Ineichen clear-sky irradiance and the
quarter-hour grid every PV computation runs on. Pure numpy/pvlib, no I/O after the first lookup of
a place's Linke turbidity (pvlib's climatology file, read once per place and cached).
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import numpy as np
import numpy.typing as npt
import pandas as pd
from pvlib import atmosphere, clearsky, irradiance, solarposition

from services.forecast.model import SLOT

Floats = npt.NDArray[np.float64]

# Linke turbidity is stored on a 1/12 degree grid; rounding the key to 0.01 degree keeps the cache
# small without ever mixing two grid cells' values.
_TURBIDITY_KEY_DIGITS = 2


@dataclass(frozen=True)
class SkyGrid:
    """The sun and the clear sky at the middle of each quarter-hour slot from `start`.

    Slot values are evaluated at the slot's midpoint: the mean of a smooth curve over 15 minutes
    is its midpoint value to well under 1 %, and the day's energy is the sum of slot means x 0.25 h.
    """

    start: datetime
    mid: pd.DatetimeIndex
    zenith: Floats  # apparent (refraction-corrected) zenith, degrees
    azimuth: Floats  # degrees clockwise from north
    cos_zenith: Floats  # of the true zenith, clipped at 0
    dni_extra: Floats
    airmass: Floats  # relative (Kasten-Young), NaN below the horizon
    ghi: Floats  # clear sky
    dni: Floats
    dhi: Floats

    def __len__(self) -> int:
        return len(self.mid)


@lru_cache(maxsize=4096)
def monthly_linke_turbidity(latitude: float, longitude: float) -> tuple[float, ...]:
    """The 12 monthly Linke turbidity values of pvlib's climatology at a place (cached)."""
    months = pd.DatetimeIndex([datetime(2015, m, 15, tzinfo=UTC) for m in range(1, 13)])
    values = clearsky.lookup_linke_turbidity(months, latitude, longitude, interp_turbidity=False)
    return tuple(float(v) for v in values)


def linke_turbidity(times: pd.DatetimeIndex, latitude: float, longitude: float) -> Floats:
    """Linke turbidity at `times`, interpolated between mid-month values as pvlib does."""
    monthly = monthly_linke_turbidity(round(latitude, _TURBIDITY_KEY_DIGITS), round(longitude, _TURBIDITY_KEY_DIGITS))
    values = np.concatenate([[monthly[-1]], monthly, [monthly[0]]])
    out = np.empty(len(times))
    doy = np.asarray(times.day_of_year, dtype=float)
    leap = np.asarray(times.is_leap_year, dtype=bool)
    for is_leap in (False, True):
        chosen = leap == is_leap
        if chosen.any():
            out[chosen] = np.interp(doy[chosen], _month_middles(is_leap), values)
    return out


@lru_cache(maxsize=2)
def _month_middles(leap: bool) -> Floats:
    days = np.array([calendar.monthrange(2015, m)[1] for m in range(1, 13)], dtype=np.float64)
    total = 365.0
    if leap:
        days[1] += 1
        total = 366.0
    return np.concatenate([[-31 / 2.0], np.cumsum(days) - days / 2.0, [total + 31 / 2.0]])


def sky(latitude: float, longitude: float, altitude_m: float, start: datetime, slots: int) -> SkyGrid:
    """Solar position and Ineichen clear-sky irradiance at the midpoints of `slots` slots from `start`."""
    mid = pd.date_range(start + SLOT / 2, periods=slots, freq=pd.Timedelta(SLOT), tz=UTC)
    position = solarposition.get_solarposition(mid, latitude, longitude, altitude=altitude_m)
    apparent = np.asarray(position["apparent_zenith"], dtype=float)
    true_zenith = np.asarray(position["zenith"], dtype=float)
    azimuth = np.asarray(position["azimuth"], dtype=float)
    dni_extra = np.asarray(irradiance.get_extra_radiation(mid), dtype=float)
    airmass = np.asarray(atmosphere.get_relative_airmass(apparent), dtype=float)
    pressure = atmosphere.alt2pres(altitude_m)
    absolute = np.asarray(atmosphere.get_absolute_airmass(airmass, pressure), dtype=float)
    turbidity = linke_turbidity(mid, latitude, longitude)
    with np.errstate(divide="ignore", invalid="ignore"):  # pvlib divides by cos(zenith) = 0 below the horizon
        clear = clearsky.ineichen(apparent, absolute, turbidity, altitude=altitude_m, dni_extra=dni_extra)
    ghi = np.nan_to_num(np.asarray(clear["ghi"], dtype=float))
    dni = np.nan_to_num(np.asarray(clear["dni"], dtype=float))
    dhi = np.nan_to_num(np.asarray(clear["dhi"], dtype=float))
    cos_zenith = np.clip(np.cos(np.radians(true_zenith)), 0.0, None)
    return SkyGrid(start, mid, apparent, azimuth, cos_zenith, dni_extra, airmass, ghi, dni, dhi)


def floor_hour(when: datetime) -> datetime:
    return when.replace(minute=0, second=0, microsecond=0)


def ceil_hour(when: datetime) -> datetime:
    floored = floor_hour(when)
    return floored if floored == when else floored + timedelta(hours=1)
