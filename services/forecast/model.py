"""The forecast models' shared vocabulary: a PV system's description, a forecast with quantiles, a
weather series. Pure values, validated when built, so every model can trust what it is given.

Times are UTC and aware; power is in watts; a forecast has one value per 15-minute slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from services.forecast.errors import ForecastError, ForecastInputError

SLOT = timedelta(minutes=15)
MAX_HORIZON_SLOTS = 4 * 72

# Bounds of a plausible installation; beyond them an input is a typo, not a site.
MAX_ARRAYS = 64
MAX_KWP = 1_000_000.0  # 1 GWp: larger than any site EMMA manages
MIN_ALTITUDE_M = -500.0
MAX_ALTITUDE_M = 9_000.0


def _finite(field: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ForecastInputError(field, f"must be a finite number, got {value!r}")
    return float(value)


def _within(field: str, value: float, low: float, high: float, *, high_open: bool = False) -> None:
    v = _finite(field, value)
    if v < low or v > high or (high_open and v == high):
        bracket = ")" if high_open else "]"
        raise ForecastInputError(field, f"must be in [{low:g}, {high:g}{bracket}, got {v:g}")


def is_slot_boundary(when: datetime) -> bool:
    """Whether `when` is aware and falls on a 15-minute boundary."""
    return when.tzinfo is not None and when.second == 0 and when.microsecond == 0 and when.minute % 15 == 0


def check_start(field: str, start: datetime) -> datetime:
    """`start` as UTC; ForecastInputError naming `field` unless aware and on a 15-minute boundary."""
    if start.tzinfo is None or start.utcoffset() is None:
        raise ForecastInputError(field, "must be timezone-aware (UTC)")
    start = start.astimezone(UTC)
    if not is_slot_boundary(start):
        raise ForecastInputError(field, f"must be on a 15-minute boundary, got {start.isoformat()}")
    return start


def check_slots(field: str, slots: int) -> int:
    """`slots` if 1..MAX_HORIZON_SLOTS, else ForecastInputError naming `field`."""
    if isinstance(slots, bool) or not isinstance(slots, int) or not 1 <= slots <= MAX_HORIZON_SLOTS:
        raise ForecastInputError(field, f"must be 1..{MAX_HORIZON_SLOTS} slots of 15 minutes, got {slots!r}")
    return slots


@dataclass(frozen=True)
class PvArray:
    """One plane of modules. azimuth is compass degrees (0 north, 90 east, 180 south, 270 west)."""

    tilt_deg: float
    azimuth_deg: float
    kwp: float
    losses_fraction: float = 0.14  # wiring, soiling, mismatch, inverter (PVWatts' default of 14 %)

    def __post_init__(self) -> None:
        for field, problem in self.problems():
            raise ForecastInputError(field, problem)

    def problems(self, prefix: str = "") -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        checks: tuple[tuple[str, float, float, float, bool], ...] = (
            ("tilt_deg", self.tilt_deg, 0.0, 90.0, False),
            ("azimuth_deg", self.azimuth_deg, 0.0, 360.0, True),
            ("kwp", self.kwp, 0.0, MAX_KWP, False),
            ("losses_fraction", self.losses_fraction, 0.0, 1.0, True),
        )
        for name, value, low, high, high_open in checks:
            try:
                _within(prefix + name, value, low, high, high_open=high_open)
            except ForecastInputError as exc:
                found.append((exc.field, exc.message))
        if not found and self.kwp <= 0.0:
            found.append((prefix + "kwp", f"must be above 0, got {self.kwp:g}"))
        return found


@dataclass(frozen=True)
class PvSystem:
    """A site's PV installation: where it is, its arrays, and the inverter's AC limit (0: none)."""

    latitude: float
    longitude: float
    altitude_m: float
    arrays: tuple[PvArray, ...]
    inverter_limit_w: float = 0.0

    def __post_init__(self) -> None:
        _within("latitude", self.latitude, -90.0, 90.0)
        _within("longitude", self.longitude, -180.0, 180.0)
        _within("altitude_m", self.altitude_m, MIN_ALTITUDE_M, MAX_ALTITUDE_M)
        _within("inverter_limit_w", self.inverter_limit_w, 0.0, MAX_KWP * 1000.0)
        if not isinstance(self.arrays, tuple) or not self.arrays:
            raise ForecastInputError("arrays", "a PV system needs at least one array")
        if len(self.arrays) > MAX_ARRAYS:
            raise ForecastInputError("arrays", f"at most {MAX_ARRAYS} arrays, got {len(self.arrays)}")
        for i, array in enumerate(self.arrays):
            if not isinstance(array, PvArray):
                raise ForecastInputError(f"arrays[{i}]", f"must be a PvArray, got {type(array).__name__}")

    @property
    def kwp(self) -> float:
        return sum(a.kwp for a in self.arrays)


@dataclass(frozen=True)
class Forecast:
    """Power in watts for `len(p50)` consecutive slots from `start`, with the 10 % and 90 % quantiles.

    `degraded` lists readable reasons why the forecast is worse than it should be (no weather, cold
    start, missing history); empty when it is not.
    """

    start: datetime
    step: timedelta
    p10: tuple[float, ...]
    p50: tuple[float, ...]
    p90: tuple[float, ...]
    degraded: tuple[str, ...]
    model_version: str

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.start.utcoffset() != timedelta(0) or not is_slot_boundary(self.start):
            raise ForecastError(f"forecast start {self.start.isoformat()} is not UTC on a 15-minute boundary")
        if self.step != SLOT:
            raise ForecastError(f"forecast step must be {SLOT}, got {self.step}")
        if not (len(self.p10) == len(self.p50) == len(self.p90)):
            raise ForecastError("p10, p50 and p90 must have one value per slot each")
        for i, (lo, mid, hi) in enumerate(zip(self.p10, self.p50, self.p90, strict=True)):
            if not (math.isfinite(lo) and math.isfinite(mid) and math.isfinite(hi)) or not lo <= mid <= hi:
                raise ForecastError(f"slot {i}: quantiles must be finite with p10 <= p50 <= p90")

    @property
    def slots(self) -> int:
        return len(self.p50)

    @property
    def end(self) -> datetime:
        return self.start + self.step * len(self.p50)

    def times(self) -> tuple[datetime, ...]:
        """The start of each slot."""
        return tuple(self.start + self.step * i for i in range(len(self.p50)))


@dataclass(frozen=True)
class WeatherSeries:
    """Hourly (or finer) weather at one place, as the source gave it; None where it has no value.

    Irradiance values are the mean over the interval *ending* at each time (Open-Meteo's convention
    for shortwave radiation); temperatures and cloud cover are instantaneous.
    """

    times: tuple[datetime, ...]
    ghi_w_m2: tuple[float | None, ...]
    dni_w_m2: tuple[float | None, ...]
    dhi_w_m2: tuple[float | None, ...]
    temp_air_c: tuple[float | None, ...]
    cloud_cover_pct: tuple[float | None, ...]
    source: str
    fetched_at: datetime

    def __post_init__(self) -> None:
        n = len(self.times)
        for name in ("ghi_w_m2", "dni_w_m2", "dhi_w_m2", "temp_air_c", "cloud_cover_pct"):
            if len(getattr(self, name)) != n:
                raise ForecastError(f"weather series: {name} has {len(getattr(self, name))} values for {n} times")
        for t in self.times:
            if t.tzinfo is None or t.utcoffset() != timedelta(0):
                raise ForecastError(f"weather series: time {t.isoformat()} is not UTC")
        if any(b <= a for a, b in zip(self.times, self.times[1:], strict=False)):
            raise ForecastError("weather series: times must be strictly increasing")
