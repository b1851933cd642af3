"""One forecast run of one site: the registry's site -> PvSystem, weather (a source that is down makes
the PV forecast degraded, never missing), the models, and the net load derived from both."""

from __future__ import annotations

import logging
import math
import uuid
from datetime import datetime, timedelta
from typing import Protocol

from emma.registry.v1 import registry_pb2

from services.forecast.errors import ForecastError, WeatherError
from services.forecast.load import forecast_load
from services.forecast.model import SLOT, Forecast, PvArray, PvSystem, WeatherSeries
from services.forecast.pv import forecast_pv
from services.forecast.store import MadeForecast, save_run
from services.forecast.weather import OpenMeteoClient, WeatherConfig
from services.platform.migrations import Conn
from services.registry import SiteProfile

log = logging.getLogger("emma.forecast")

NET_LOAD_MODEL = "net-load/1"


class WeatherSource(Protocol):
    async def fetch(self, latitude: float, longitude: float, start: datetime, hours: int) -> WeatherSeries: ...


class MissingSiteData(ForecastError):
    """The site lacks what a requested kind needs: `missing` is "pv_system" or "location"."""

    def __init__(self, missing: str, message: str) -> None:
        super().__init__(message)
        self.missing = missing


def first_slot(issue_time: datetime) -> datetime:
    """The issue time rounded up to the next 15-minute boundary."""
    floor = issue_time.replace(minute=issue_time.minute - issue_time.minute % 15, second=0, microsecond=0)
    return floor if floor == issue_time else floor + SLOT


def pv_system_of(profile: SiteProfile) -> PvSystem:
    """The models' PvSystem from the registry's description; MissingSiteData when it lacks one."""
    if profile.pv_system is None:
        raise MissingSiteData("pv_system", f"{profile.site} has no PV description (Site.pv_system)")
    if not profile.has_location:
        raise MissingSiteData("location", f"{profile.site} has no location (Site.location)")
    pv: registry_pb2.PvSystem = profile.pv_system
    arrays = tuple(
        PvArray(
            tilt_deg=a.tilt_deg,
            azimuth_deg=a.azimuth_deg % 360.0,  # the registry allows 360, the same direction as 0
            kwp=a.peak_power_kw,
            **({"losses_fraction": a.losses_fraction} if a.HasField("losses_fraction") else {}),
        )
        for a in pv.arrays
    )
    return PvSystem(
        profile.latitude_deg, profile.longitude_deg, pv.altitude_m, arrays, inverter_limit_w=pv.inverter_limit_w
    )


def net_load(load: Forecast, pv: Forecast) -> Forecast:
    """Load minus PV. Quantiles pair load's p10 with PV's p90 and the reverse: a band at least as wide
    as the true one for any dependence between the two, so p10 <= p50 <= p90 holds."""
    return Forecast(
        start=load.start,
        step=load.step,
        p10=tuple(lo - hi for lo, hi in zip(load.p10, pv.p90, strict=True)),
        p50=tuple(a - b for a, b in zip(load.p50, pv.p50, strict=True)),
        p90=tuple(hi - lo for hi, lo in zip(load.p90, pv.p10, strict=True)),
        degraded=tuple(dict.fromkeys(load.degraded + pv.degraded)),
        model_version=f"{NET_LOAD_MODEL}({load.model_version}; {pv.model_version})",
    )


async def make_forecasts(
    profile: SiteProfile,
    kinds: set[str],
    issue_time: datetime,
    slots: int,
    load_history: list[tuple[datetime, float]],
    weather: WeatherSource | None,
) -> list[MadeForecast]:
    """The requested kinds for the site. MissingSiteData before anything is computed."""
    start = first_slot(issue_time)
    system = pv_system_of(profile) if kinds & {"pv_power", "net_load"} else None
    made: dict[str, MadeForecast] = {}
    if system is not None:
        series: WeatherSeries | None = None
        reasons: tuple[str, ...] = ()
        if weather is None:
            reasons = ("weather unavailable: no weather source configured; clear sky used",)
        else:
            try:
                hours = math.ceil((start - issue_time + SLOT * slots) / timedelta(hours=1)) + 1
                series = await weather.fetch(system.latitude, system.longitude, issue_time, hours)
            except WeatherError as exc:
                log.warning("weather unavailable for %s: %s", profile.site, exc)
                reasons = (f"weather unavailable: {exc}",)
        pv = forecast_pv(system, start, slots, series)
        pv = Forecast(
            pv.start, pv.step, pv.p10, pv.p50, pv.p90, tuple(dict.fromkeys(reasons + pv.degraded)), pv.model_version
        )
        made["pv_power"] = MadeForecast(
            "pv_power", pv, series.source if series else "", series.fetched_at if series else None
        )
    if kinds & {"site_load", "net_load"}:
        load = forecast_load(load_history, start, slots, profile.country_code, profile.time_zone)
        made["site_load"] = MadeForecast("site_load", load)
    if "net_load" in kinds:
        pv_made = made["pv_power"]
        made["net_load"] = MadeForecast(
            "net_load",
            net_load(made["site_load"].forecast, pv_made.forecast),
            pv_made.weather_source,
            pv_made.weather_fetch_time,
        )
    return [made[k] for k in ("pv_power", "site_load", "net_load") if k in kinds]


async def run_site(
    conn: Conn,
    profile: SiteProfile,
    kinds: set[str],
    slots: int,
    weather_config: WeatherConfig,
    *,
    issue_time: datetime,
    trigger: str,
    creator: str,
    request_id: str | None = None,
) -> uuid.UUID:
    """One run: forecast, then store it in one transaction; returns the run id. MissingSiteData and
    ForecastInputError before anything is stored."""
    weather = OpenMeteoClient(weather_config)
    try:
        made = await make_forecasts(profile, kinds, issue_time, slots, [], weather)
    finally:
        await weather.aclose()
    async with conn.transaction():
        return await save_run(
            conn, profile.site, issue_time, made, trigger=trigger, creator=creator, request_id=request_id
        )


def kinds_for(profile: SiteProfile) -> set[str]:
    """What the scheduler forecasts: everything for a site with PV and a location, its load otherwise."""
    if profile.pv_system is not None and profile.has_location:
        return {"pv_power", "site_load", "net_load"}
    return {"site_load"}
