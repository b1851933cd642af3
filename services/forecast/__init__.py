"""Forecasts: PV production, site load and net load for the next hours at 15-minute resolution with
p10/p50/p90, stored per run and never overwritten; ForecastService (docs/forecasting.md). The models
(model.py, pv.py, load.py, weather.py, scoring.py, backtest.py) are pure; runner.py feeds them a
site's registry description, and store.py/queries.py keep and read what they made.
"""

from __future__ import annotations

from typing import Any

from emma.forecast.v1 import forecast_pb2, forecast_pb2_grpc

from services.identity import Access
from services.platform.registration import ServiceSpec, Worker, service_spec
from services.platform.runtime import Runtime

# What other packages may use of forecast; everything else in services/forecast/ is private.
__all__ = ["DEPENDS_ON", "POLICY", "SERVICES", "TABLES"]

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
