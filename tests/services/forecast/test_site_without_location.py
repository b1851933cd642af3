"""A site with a PV description but no location (the registry's unset default, 0,0) on a real server
over real PostgreSQL: PV and net load are refused with FAILED_PRECONDITION and ErrorInfo `missing`
= `location` (before anything is stored), its load alone is forecast, and the scheduler's round
gives it its load only instead of failing the site. GetForecastAccuracy refuses a default range
that would begin before year 1 with a named field instead of an internal error."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc
import pytest
from emma.forecast.v1 import forecast_pb2, forecast_pb2_grpc
from emma.registry.v1 import registry_pb2, registry_pb2_grpc
from google.protobuf import duration_pb2, timestamp_pb2
from grpc_status import rpc_status

from services.errors import error_info_of
from services.forecast.config import SchedulerConfig
from services.forecast.scheduler import ForecastScheduler
from services.forecast.weather import WeatherConfig
from tests.support.cloud import Host
from tests.support.identity import authed_channel, grant

PV = registry_pb2.PvSystem(arrays=[registry_pb2.PvArray(tilt_deg=30, azimuth_deg=180, peak_power_kw=5)])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def _weather_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMMA_WEATHER_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("EMMA_WEATHER_RETRIES", "0")


async def _error(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    info = error_info_of(status)
    assert info is not None
    return caught.value.code(), info.reason, dict(info.metadata)


async def test_a_site_without_location_gets_its_load_and_a_named_refusal_for_pv(
    host: Host, db: asyncpg.Connection
) -> None:
    org = f"n{uuid.uuid4().hex[:8]}"
    operator = await grant(db, org, "operator")
    admin = await grant(db, org, "admin")
    async with (
        host(["registry", "forecast"]) as (server, runtime),
        authed_channel(server.port, admin.token) as admin_ch,
        authed_channel(server.port, operator.token) as ch,
    ):
        created = await registry_pb2_grpc.RegistryServiceStub(admin_ch).CreateSite(
            registry_pb2.CreateSiteRequest(
                parent=f"organizations/{org}",
                site_id="nowhere",
                # No location: the registry keeps 0,0, which the forecast reads as unset.
                site=registry_pb2.Site(display_name="Roof", time_zone="Europe/Madrid", country_code="ES", pv_system=PV),
            )
        )
        site = created.name
        fc = forecast_pb2_grpc.ForecastServiceStub(ch)
        six_hours = duration_pb2.Duration(seconds=6 * 3600)
        for kinds in ([], [forecast_pb2.FORECAST_KIND_PV_POWER], [forecast_pb2.FORECAST_KIND_NET_LOAD]):
            code, reason, meta = await _error(
                fc.RunForecast(
                    forecast_pb2.RunForecastRequest(
                        site=site, kinds=kinds, horizon=six_hours, request_id=f"pv-{uuid.uuid4()}"
                    )
                )
            )
            assert (code, reason, meta["missing"], meta["site"]) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                "STATE_CONFLICT",
                "location",
                site,
            ), kinds
        assert await db.fetchval("SELECT count(*) FROM forecast.runs WHERE org_id = $1", org) == 0

        load = await fc.RunForecast(
            forecast_pb2.RunForecastRequest(
                site=site, kinds=[forecast_pb2.FORECAST_KIND_SITE_LOAD], horizon=six_hours, request_id="load"
            )
        )
        assert load.state == forecast_pb2.FORECAST_RUN_STATE_SUCCEEDED
        assert [f.kind for f in load.forecasts] == [forecast_pb2.FORECAST_KIND_SITE_LOAD]
        assert any("cold start" in r for r in load.degraded_reasons)

        # The scheduler does not fail the site: it forecasts what can be forecast, its load.
        weather = WeatherConfig.from_env({"EMMA_WEATHER_URL": f"http://127.0.0.1:{_closed_port()}"})
        scheduler = ForecastScheduler(
            runtime.pool,
            "replica-x",
            SchedulerConfig(horizon_slots=8),
            weather,
            clock=lambda: datetime(2026, 6, 1, 6, 5, tzinfo=UTC),
        )
        ran = [str(s) for s in await scheduler.run_due() if s.org == org]
        assert ran == [site]
        row = await db.fetchrow("SELECT state, reason, run_id FROM forecast.schedule WHERE org_id = $1", org)
        assert row is not None and (row["state"], row["reason"]) == ("done", "")
        stored = await db.fetch("SELECT kind FROM forecast.forecasts WHERE run_id = $1", row["run_id"])
        assert [r["kind"] for r in stored] == ["site_load"]

        # The accuracy's default range is the 30 days before end_time: before year 1 it cannot exist.
        year_one = timestamp_pb2.Timestamp(seconds=-62_135_596_800 + 86_400)
        code, reason, meta = await _error(
            fc.GetForecastAccuracy(
                forecast_pb2.GetForecastAccuracyRequest(
                    site=site, kind=forecast_pb2.FORECAST_KIND_SITE_LOAD, end_time=year_one
                )
            )
        )
        assert (code, reason, meta["field"]) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID", "end_time")
