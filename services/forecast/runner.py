"""One forecast run of one site: the registry's site -> PvSystem, weather (a source that is down makes
the PV forecast degraded, never missing), the models, and the net load derived from both."""

from __future__ import annotations

import asyncio
import atexit
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Protocol

import asyncpg
from emma.registry.v1 import registry_pb2

from core.env import env_flag
from services.forecast.config import ForecastConfigError
from services.forecast.errors import ForecastError, MissingSiteData, WeatherError
from services.forecast.load import LOOKBACK_DAYS, forecast_load
from services.forecast.measured import Measured, read_measured
from services.forecast.model import SLOT, Forecast, PvArray, PvSystem, WeatherSeries
from services.forecast.pv import LEARN_DAYS, forecast_pv, learn_correction
from services.forecast.store import MadeForecast, save_run
from services.forecast.weather import OpenMeteoClient, WeatherConfig
from services.names import SiteName
from services.platform.migrations import Conn
from services.registry import SiteProfile, site_profile

log = logging.getLogger("emma.forecast")

NET_LOAD_MODEL = "net-load/1"


class WeatherSource(Protocol):
    async def fetch(self, latitude: float, longitude: float, start: datetime, hours: int) -> WeatherSeries: ...


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


# The models are CPU work (about 18 ms per site, 40 ms when the site's clear-sky days are not cached
# yet): they run in an executor so the event loop keeps serving RPCs and ingest while a round of sites
# is forecast. By default that is one worker process (EMMA_FORECAST_MODEL_PROCESS=on): a thread would
# hold the GIL the event loop needs, so a 1,000-site round ran on one core; the process runs the
# models on another core and keeps the models' caches (clear-sky days, turbidity) for the process's
# lifetime. "off" runs them in one thread of the server process.
_default_executor: Executor | None = None
_default_executor_lock = threading.Lock()


def default_executor() -> Executor:
    """The process-wide model executor (made on first use, from EMMA_FORECAST_MODEL_PROCESS)."""
    global _default_executor
    with _default_executor_lock:
        if _default_executor is None:
            if env_flag(os.environ, "EMMA_FORECAST_MODEL_PROCESS", True, ForecastConfigError):
                # spawn, not fork: the server process has gRPC's and asyncio's threads.
                _default_executor = ProcessPoolExecutor(
                    max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_exit_with_parent
                )
                atexit.register(_stop_default_executor)
            else:
                _default_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forecast-model")
        return _default_executor


def _models_loaded() -> None:
    """Nothing to run: unpickling this function in the model process imports this module, and with it
    the models' pvlib, pandas and scipy."""


def start_model_process() -> Future[None] | None:
    """Start the model process now and have it import the models, beside whatever this process does
    next; None when the models run in a thread. For a process that knows it will forecast soon (`emma up`,
    which forecasts its demo sites before it is ready): the start and the imports took 2.7 s of its
    first forecast on session 18's machine."""
    executor = default_executor()
    return executor.submit(_models_loaded) if isinstance(executor, ProcessPoolExecutor) else None


def _exit_with_parent() -> None:
    """In the model process: exit once the server process is gone. A server killed with kill -9 left its
    model process behind for good (the pool's own pipes did not end it): idle, holding the models'
    memory, one more after every such kill. Its parent's sentinel is ready when the parent exits."""
    parent = multiprocessing.parent_process()
    if parent is None:  # not a child of a multiprocessing parent (the initializer called by hand)
        return

    def watch(sentinel: int = parent.sentinel) -> None:
        multiprocessing.connection.wait([sentinel])
        os._exit(0)  # nothing of a run is worth finishing for a server that is gone

    threading.Thread(target=watch, name="forecast-model-parent", daemon=True).start()


def _stop_default_executor() -> None:
    """At exit, stop the model process while the interpreter is whole: left to the garbage collector
    at the interpreter's teardown, the pool's callback found its modules gone and printed a traceback
    ("'NoneType' object has no attribute 'debug'") on every stop of a server that had forecast."""
    global _default_executor
    with _default_executor_lock:
        executor, _default_executor = _default_executor, None
    if executor is not None:
        executor.shutdown(wait=True, cancel_futures=True)


def _drop_broken(executor: Executor) -> None:
    """Forget a process pool whose worker died, so the next run starts a new one."""
    global _default_executor
    with _default_executor_lock:
        if _default_executor is executor:
            _default_executor = None


def compute_forecasts(
    profile: SiteProfile,
    system: PvSystem | None,
    kinds: set[str],
    start: datetime,
    slots: int,
    load_history: Sequence[tuple[datetime, float]],
    pv_history: Sequence[tuple[datetime, float]],
    series: WeatherSeries | None,
    weather_reasons: tuple[str, ...],
    notes: Sequence[str] = (),
) -> list[MadeForecast]:
    """The models, synchronously (run it in an executor): PV with the correction learnt from the
    measured PV, load from the measured load, and their net load. `notes` are degraded reasons of the
    inputs (e.g. the site has no load channel) added to the load forecast."""
    made: dict[str, MadeForecast] = {}
    if system is not None:
        correction, _ = learn_correction(system, pv_history) if pv_history else (1.0, "")
        pv = forecast_pv(system, start, slots, series, correction)
        pv = replace(pv, degraded=tuple(dict.fromkeys(weather_reasons + pv.degraded)))
        made["pv_power"] = MadeForecast(
            "pv_power", pv, series.source if series else "", series.fetched_at if series else None
        )
    if kinds & {"site_load", "net_load"}:
        load = forecast_load(load_history, start, slots, profile.country_code, profile.time_zone)
        load = replace(load, degraded=tuple(dict.fromkeys(tuple(notes) + load.degraded)))
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


async def _weather(
    system: PvSystem, weather: WeatherSource | None, site: SiteName, issue_time: datetime, start: datetime, slots: int
) -> tuple[WeatherSeries | None, tuple[str, ...]]:
    if weather is None:
        return None, ("weather unavailable: no weather source configured; clear sky used",)
    try:
        hours = math.ceil((start - issue_time + SLOT * slots) / timedelta(hours=1)) + 1
        return await weather.fetch(system.latitude, system.longitude, issue_time, hours), ()
    except WeatherError as exc:
        log.warning("weather unavailable for %s: %s", site, exc)
        return None, (f"weather unavailable: {exc}",)


async def make_forecasts(
    profile: SiteProfile,
    kinds: set[str],
    issue_time: datetime,
    slots: int,
    load_history: Sequence[tuple[datetime, float]],
    weather: WeatherSource | None,
    pv_history: Sequence[tuple[datetime, float]] = (),
    *,
    notes: Sequence[str] = (),
    executor: Executor | None = None,
) -> list[MadeForecast]:
    """The requested kinds for the site: the weather fetched here, the models run in `executor` (a
    shared one-thread pool by default). MissingSiteData before anything is computed."""
    start = first_slot(issue_time)
    system = pv_system_of(profile) if kinds & {"pv_power", "net_load"} else None
    series: WeatherSeries | None = None
    reasons: tuple[str, ...] = ()
    if system is not None:
        series, reasons = await _weather(system, weather, profile.site, issue_time, start, slots)
    work = partial(
        compute_forecasts,
        profile,
        system,
        kinds,
        start,
        slots,
        load_history,
        pv_history,
        series,
        reasons,
        notes,
    )
    chosen = executor or default_executor()
    try:
        return await asyncio.get_running_loop().run_in_executor(chosen, work)
    except BrokenProcessPool as exc:
        _drop_broken(chosen)
        raise ForecastError(f"the forecast model process stopped ({exc}); the next run starts a new one") from None


async def measured_history(conn: Conn, site: SiteName, issue_time: datetime) -> tuple[Measured, tuple[str, ...]]:
    """The site's measured load (LOOKBACK_DAYS) and PV (LEARN_DAYS) before the first forecast slot, and
    the notes to attach when the site has no load channel."""
    start = first_slot(issue_time)
    measured = await read_measured(conn, site, start - timedelta(days=max(LOOKBACK_DAYS, LEARN_DAYS)), start)
    pv_from = start - timedelta(days=LEARN_DAYS)
    # The load from its first measured slot on: the days before a site reported are not "missing"
    # (a young site was flagged "89 % of the load history is missing" for its first three weeks),
    # and the model then sees what a backtest of the same series sees. Gaps after it still count.
    known = next((i for i, (_, v) in enumerate(measured.load) if math.isfinite(v)), len(measured.load))
    measured = replace(measured, load=measured.load[known:], pv=[(t, v) for t, v in measured.pv if t >= pv_from])
    notes: tuple[str, ...] = ()
    if not measured.load_channels:
        notes = (
            "no measured load: the site's edges have no load*/ActivePower channel and no grid*/ActivePower "
            "meter to derive it from (docs/forecasting.md)",
        )
    return measured, notes


async def run_site(
    pool: asyncpg.Pool,
    profile: SiteProfile,
    kinds: set[str],
    slots: int,
    weather_config: WeatherConfig,
    *,
    issue_time: datetime,
    trigger: str,
    creator: str,
    request_id: str | None = None,
    executor: Executor | None = None,
    weather: WeatherSource | None = None,
) -> uuid.UUID:
    """One run: read the measured history, fetch the weather (no database connection held while
    waiting for it), run the models off the event loop, store the run in one transaction; returns
    the run id. MissingSiteData and ForecastInputError before anything is stored. `weather` replaces
    the client made from `weather_config` (a test's or a replay's source)."""
    if kinds & {"pv_power", "net_load"}:
        pv_system_of(profile)  # refuse before reading anything
    async with pool.acquire() as conn:
        measured, notes = await measured_history(conn, profile.site, issue_time)
    client = OpenMeteoClient(weather_config) if weather is None else None
    try:
        made = await make_forecasts(
            profile,
            kinds,
            issue_time,
            slots,
            measured.load,
            weather or client,
            measured.pv,
            notes=notes,
            executor=executor,
        )
    finally:
        if client is not None:
            await client.aclose()
    async with pool.acquire() as conn, conn.transaction():
        return await save_run(
            conn, profile.site, issue_time, made, trigger=trigger, creator=creator, request_id=request_id
        )


async def forecast_site(
    pool: asyncpg.Pool,
    site: SiteName,
    weather_config: WeatherConfig,
    *,
    kinds: set[str] | None = None,
    slots: int = 4 * 48,
    issue_time: datetime | None = None,
    creator: str = "scheduler",
    executor: Executor | None = None,
    weather: WeatherSource | None = None,
) -> uuid.UUID:
    """Forecast one site now (a scheduled-style run, for the CLI and the bench): `kinds` defaults to
    what the scheduler would run (kinds_for). Raises MissingSiteData, ForecastInputError, and
    ForecastError("no such site") for an unknown site."""
    async with pool.acquire() as conn:
        profile = await site_profile(conn, site)
    if profile is None:
        raise ForecastError(f"{site}: no such site")
    return await run_site(
        pool,
        profile,
        kinds if kinds is not None else kinds_for(profile),
        slots,
        weather_config,
        issue_time=issue_time or datetime.now(UTC),
        trigger="scheduled",
        creator=creator,
        executor=executor,
        weather=weather,
    )


def kinds_for(profile: SiteProfile) -> set[str]:
    """What the scheduler forecasts: everything for a site with PV and a location, its load otherwise."""
    if profile.pv_system is not None and profile.has_location:
        return {"pv_power", "site_load", "net_load"}
    return {"site_load"}
