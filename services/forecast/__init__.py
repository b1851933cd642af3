"""Forecasts: PV production, site load and net load for the next hours at 15-minute resolution with
p10/p50/p90, stored per run and never overwritten; ForecastService (docs/forecasting.md). The models
(model.py, pv.py, load.py, weather.py, scoring.py, backtest.py) are pure; runner.py feeds them a
site's registry description, and store.py/queries.py keep and read what they made.
"""

from __future__ import annotations

import uuid
from concurrent.futures import Executor
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import asyncpg
from emma.forecast.v1 import forecast_pb2, forecast_pb2_grpc

from services.forecast.errors import ForecastError, ForecastInputError, MissingSiteData
from services.forecast.readers import latest_forecast_values
from services.identity import Access
from services.names import SiteName
from services.platform.registration import ServiceSpec, Worker, service_spec
from services.platform.runtime import Runtime

if TYPE_CHECKING:
    from services.forecast.backtest import BacktestResult
    from services.forecast.weather import WeatherConfig

# What other packages may use of forecast; everything else in services/forecast/ is private.
__all__ = [
    "DEPENDS_ON",
    "POLICY",
    "SERVICES",
    "TABLES",
    "ForecastError",
    "ForecastInputError",
    "MissingSiteData",
    "backtest_site",
    "forecast_site",
    "latest_forecast_values",
    "start_model_process",
]

# The services this domain may import (their package faces); see docs/architecture.md. The registry
# for a site's location, calendar and PV description; telemetry for its measured load and PV.
DEPENDS_ON: tuple[str, ...] = ("identity", "registry", "telemetry")
# The tables this domain alone reads and writes (services/migrations/0010_forecast.sql).
TABLES: tuple[str, ...] = (
    "forecast.forecast_values",
    "forecast.forecasts",
    "forecast.runs",
    "forecast.schedule",
    "forecast.scores",
)


def _forecast(runtime: Runtime) -> Any:
    from services.forecast.servicer import ForecastServicer

    return ForecastServicer(runtime)


def _scheduler(runtime: Runtime) -> Worker:
    # The scheduler (every site once per round, then scoring) runs wherever the forecast service runs;
    # EMMA_FORECAST_SCHEDULER=off leaves it idle. Replicas share the work through forecast.schedule.
    from services.forecast.scheduler import scheduler_of

    return scheduler_of(runtime)


# The gRPC services this domain serves (services/catalog.py hosts them) and their background worker.
SERVICES: tuple[ServiceSpec, ...] = (
    service_spec(
        "forecast",
        forecast_pb2,
        "ForecastService",
        forecast_pb2_grpc.add_ForecastServiceServicer_to_server,
        _forecast,
        workers=(_scheduler,),
    ),
)

_FC = "/emma.forecast.v1.ForecastService/"
# A site's forecasts are its organization's data: members read them (VIEWER); a run costs a weather
# request and CPU, so asking for one is an operator's action, like sending a command.
POLICY: dict[str, Access] = {
    _FC + "GetLatestForecast": Access.VIEWER,
    _FC + "ListForecasts": Access.VIEWER,
    _FC + "RunForecast": Access.OPERATOR,
    _FC + "GetForecastAccuracy": Access.VIEWER,
}


# Entry points for the CLI and the bench. The models (pvlib, pandas) load on first use, so a process
# that only hosts other services does not pay for importing them.


async def forecast_site(
    pool: asyncpg.Pool,
    site: SiteName,
    weather: WeatherConfig | None = None,
    *,
    kinds: set[str] | None = None,
    slots: int = 4 * 48,
    issue_time: datetime | None = None,
    creator: str = "scheduler",
    executor: Executor | None = None,
) -> uuid.UUID:
    """Forecast one site now (as the scheduler does) and store the run; returns its id.

    `weather`: the source's settings (default: from the process's EMMA_WEATHER_* variables); `kinds`
    (pv_power, site_load, net_load) default to all for a site with PV and a location, its load
    otherwise; `slots` of 15 minutes (1..288); `issue_time` default now; `executor` runs the models
    (default: the domain's one-thread pool). Raises ForecastError (unknown site), MissingSiteData
    (PV without description or location) or ForecastInputError (a description the models refuse)."""
    import os

    from services.forecast.runner import forecast_site as run
    from services.forecast.weather import WeatherConfig

    return await run(
        pool,
        site,
        weather or WeatherConfig.from_env(os.environ),
        kinds=kinds,
        slots=slots,
        issue_time=issue_time,
        creator=creator,
        executor=executor,
    )


def start_model_process() -> None:
    """Start the process the models run in (EMMA_FORECAST_MODEL_PROCESS) now, with its imports of pvlib,
    pandas and scipy, beside what this process does next: for a process that will forecast soon, so the
    first forecast does not wait for them (`emma up`, which forecasts its demo sites before it is ready)."""
    from services.forecast.runner import start_model_process as start

    start()


async def backtest_site(
    pool: asyncpg.Pool,
    site: SiteName,
    model: Literal["load", "pv"],
    start: datetime,
    end: datetime,
    *,
    issue_every: timedelta = timedelta(hours=6),
    horizon_slots: int = 4 * 48,
    executor: Executor | None = None,
) -> BacktestResult:
    """Replay the site's measured load or PV over [start, end) as if live (issues from one day after the
    first measured slot in the range, every `issue_every`); returns the scores per horizon band next to
    persistence, same time yesterday and last week (services/forecast/backtest.py BacktestResult). Raises
    ForecastError, MissingSiteData or ForecastInputError (e.g. no measured history)."""
    from services.forecast.site_backtest import backtest_site as run

    return await run(
        pool, site, model, start, end, issue_every=issue_every, horizon_slots=horizon_slots, executor=executor
    )
