"""ForecastService on a real gRPC server over real PostgreSQL, with the registry's real sites: a run
stores p10 <= p50 <= p90 for every kind, is idempotent by request_id and never overwritten; latest,
list and accuracy read it back; viewers read but cannot run; every bad input gets its status and
ErrorInfo reason. The weather source is a closed loopback port: down, so PV is degraded, not missing."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Awaitable
from typing import Any

import asyncpg
import grpc
import pytest
from emma.common.v1 import types_pb2
from emma.forecast.v1 import forecast_pb2, forecast_pb2_grpc
from emma.registry.v1 import registry_pb2, registry_pb2_grpc
from google.protobuf import duration_pb2
from grpc_status import rpc_status

from services.errors import error_info_of
from tests.support.cloud import Host
from tests.support.identity import authed_channel, grant

ACME = "organizations/acme"
PV = registry_pb2.PvSystem(
    arrays=[registry_pb2.PvArray(tilt_deg=30, azimuth_deg=180, peak_power_kw=5)], inverter_limit_w=4000, altitude_m=600
)


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


async def _site(reg: registry_pb2_grpc.RegistryServiceStub, pv: bool) -> str:
    site = registry_pb2.Site(
        display_name="Roof",
        location=types_pb2.GeoLocation(latitude_deg=40.4, longitude_deg=-3.7),
        time_zone="Europe/Madrid",
        country_code="ES",
    )
    if pv:
        site.pv_system.CopyFrom(PV)
    created = await reg.CreateSite(
        registry_pb2.CreateSiteRequest(parent=ACME, site_id=f"s-{uuid.uuid4().hex[:8]}", site=site)
    )
    return created.name


def _hours(h: float) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=int(h * 3600))


async def test_run_stores_ordered_quantiles_and_reads_them_back(host: Host, db: asyncpg.Connection) -> None:
    operator = await grant(db, "acme", "operator")
    admin = await grant(db, "acme", "admin")
    async with (
        host(["registry", "forecast"]) as (server, _),
        authed_channel(server.port, admin.token) as admin_ch,
        authed_channel(server.port, operator.token) as ch,
    ):
        site = await _site(registry_pb2_grpc.RegistryServiceStub(admin_ch), pv=True)
        fc = forecast_pb2_grpc.ForecastServiceStub(ch)
        request = forecast_pb2.RunForecastRequest(site=site, horizon=_hours(24), request_id="run-1")
        run = await fc.RunForecast(request)
        assert run.state == forecast_pb2.FORECAST_RUN_STATE_SUCCEEDED
        assert run.trigger == forecast_pb2.FORECAST_TRIGGER_ON_DEMAND
        assert [f.kind for f in run.forecasts] == sorted(
            [
                forecast_pb2.FORECAST_KIND_NET_LOAD,
                forecast_pb2.FORECAST_KIND_PV_POWER,
                forecast_pb2.FORECAST_KIND_SITE_LOAD,
            ],
            key=lambda k: forecast_pb2.ForecastKind.Name(k).removeprefix("FORECAST_KIND_").lower(),
        )
        # Weather down: PV is degraded with the reason, not missing; no history: load says cold start.
        assert any(r.startswith("weather unavailable") for r in run.degraded_reasons), run.degraded_reasons
        assert any("cold start" in r for r in run.degraded_reasons), run.degraded_reasons
        # The same request_id returns the same run; nothing new is stored.
        assert await fc.RunForecast(request) == run
        assert await db.fetchval("SELECT count(*) FROM forecast.runs WHERE request_id = 'run-1'") == 1

        for kind in (
            forecast_pb2.FORECAST_KIND_PV_POWER,
            forecast_pb2.FORECAST_KIND_SITE_LOAD,
            forecast_pb2.FORECAST_KIND_NET_LOAD,
        ):
            latest = await fc.GetLatestForecast(forecast_pb2.GetLatestForecastRequest(site=site, kind=kind))
            assert len(latest.slots) == 96 and latest.run == run.name
            assert all(s.p10_w <= s.p50_w <= s.p90_w for s in latest.slots)
            assert latest.start_time.ToSeconds() % 900 == 0
            assert latest.issue_time.ToDatetime() <= latest.start_time.ToDatetime()
        pv = await fc.GetLatestForecast(
            forecast_pb2.GetLatestForecastRequest(
                site=site, kind=forecast_pb2.FORECAST_KIND_PV_POWER, horizon=_hours(6)
            )
        )
        assert len(pv.slots) == 24
        assert max(s.p90_w for s in pv.slots) <= 4000 + 1e-6  # clipped at the inverter limit

        # A second run is stored next to the first: the first stays answerable by its issue time.
        second = await fc.RunForecast(
            forecast_pb2.RunForecastRequest(site=site, horizon=_hours(24), request_id="run-2")
        )
        listed = await fc.ListForecasts(forecast_pb2.ListForecastsRequest(parent=site, page_size=4))
        assert len(listed.forecasts) == 4 and listed.next_page_token and not listed.forecasts[0].slots
        assert listed.forecasts[0].run == second.name
        rest = await fc.ListForecasts(
            forecast_pb2.ListForecastsRequest(parent=site, page_size=4, page_token=listed.next_page_token)
        )
        assert len(rest.forecasts) == 2 and not rest.next_page_token
        before = await fc.GetLatestForecast(
            forecast_pb2.GetLatestForecastRequest(
                site=site, kind=forecast_pb2.FORECAST_KIND_SITE_LOAD, as_of_time=second.issue_time
            )
        )
        assert before.run == second.name
        first_issue = run.issue_time
        old = await fc.GetLatestForecast(
            forecast_pb2.GetLatestForecastRequest(
                site=site, kind=forecast_pb2.FORECAST_KIND_SITE_LOAD, as_of_time=first_issue
            )
        )
        assert old.run == run.name
        full = await fc.ListForecasts(
            forecast_pb2.ListForecastsRequest(
                parent=site, kind=forecast_pb2.FORECAST_KIND_PV_POWER, view=forecast_pb2.FORECAST_VIEW_FULL
            )
        )
        assert [len(f.slots) for f in full.forecasts] == [96, 96]

        accuracy = await fc.GetForecastAccuracy(
            forecast_pb2.GetForecastAccuracyRequest(site=site, kind=forecast_pb2.FORECAST_KIND_PV_POWER)
        )
        assert accuracy.site == site and list(accuracy.bands) == []  # nothing scored yet


async def test_roles_and_bad_input(host: Host, db: asyncpg.Connection) -> None:
    viewer = await grant(db, "acme", "viewer")
    operator = await grant(db, "acme", "operator")
    admin = await grant(db, "acme", "admin")
    async with (
        host(["registry", "forecast"]) as (server, _),
        authed_channel(server.port, admin.token) as admin_ch,
        authed_channel(server.port, operator.token) as op_ch,
        authed_channel(server.port, viewer.token) as viewer_ch,
    ):
        reg = registry_pb2_grpc.RegistryServiceStub(admin_ch)
        with_pv = await _site(reg, pv=True)
        without_pv = await _site(reg, pv=False)
        fc = forecast_pb2_grpc.ForecastServiceStub(op_ch)
        viewer_fc = forecast_pb2_grpc.ForecastServiceStub(viewer_ch)

        code, reason, _ = await _error(
            viewer_fc.RunForecast(forecast_pb2.RunForecastRequest(site=with_pv, request_id="v"))
        )
        assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_INSUFFICIENT")
        code, reason, _ = await _error(
            viewer_fc.GetLatestForecast(
                forecast_pb2.GetLatestForecastRequest(site=with_pv, kind=forecast_pb2.FORECAST_KIND_PV_POWER)
            )
        )
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")  # readable, none yet

        code, reason, meta = await _error(
            fc.RunForecast(forecast_pb2.RunForecastRequest(site=without_pv, request_id="no-pv"))
        )
        assert (code, reason, meta["missing"]) == (grpc.StatusCode.FAILED_PRECONDITION, "STATE_CONFLICT", "pv_system")
        # Load alone needs no PV: a cold start, degraded with the reason.
        load_only = await fc.RunForecast(
            forecast_pb2.RunForecastRequest(
                site=without_pv, kinds=[forecast_pb2.FORECAST_KIND_SITE_LOAD], request_id="load", horizon=_hours(1)
            )
        )
        assert [f.kind for f in load_only.forecasts] == [forecast_pb2.FORECAST_KIND_SITE_LOAD]
        assert any("cold start" in r for r in load_only.degraded_reasons)

        bad: list[tuple[Awaitable[Any], grpc.StatusCode, str, str]] = [
            (
                fc.RunForecast(forecast_pb2.RunForecastRequest(site=f"{ACME}/sites/nope", request_id="x")),
                grpc.StatusCode.NOT_FOUND,
                "RESOURCE_NOT_FOUND",
                "",
            ),
            (
                fc.RunForecast(forecast_pb2.RunForecastRequest(site=with_pv, request_id="h", horizon=_hours(72.25))),
                grpc.StatusCode.INVALID_ARGUMENT,
                "FIELD_INVALID",
                "horizon",
            ),
            (
                fc.RunForecast(forecast_pb2.RunForecastRequest(site=with_pv, request_id="h2", horizon=_hours(0.1))),
                grpc.StatusCode.INVALID_ARGUMENT,
                "FIELD_INVALID",
                "horizon",
            ),
            (
                fc.RunForecast(forecast_pb2.RunForecastRequest(site=with_pv)),
                grpc.StatusCode.INVALID_ARGUMENT,
                "FIELD_INVALID",
                "request_id",
            ),
            (
                fc.RunForecast(forecast_pb2.RunForecastRequest(site="sites/x", request_id="y")),
                grpc.StatusCode.INVALID_ARGUMENT,
                "FIELD_INVALID",
                "site",
            ),
            (
                fc.GetLatestForecast(forecast_pb2.GetLatestForecastRequest(site=with_pv)),
                grpc.StatusCode.INVALID_ARGUMENT,
                "FIELD_INVALID",
                "kind",
            ),
            (
                fc.GetLatestForecast(
                    forecast_pb2.GetLatestForecastRequest(
                        site=with_pv, kind=forecast_pb2.FORECAST_KIND_PV_POWER, horizon=_hours(100)
                    )
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "FIELD_INVALID",
                "horizon",
            ),
            (
                fc.ListForecasts(forecast_pb2.ListForecastsRequest(parent=with_pv, page_size=1001)),
                grpc.StatusCode.INVALID_ARGUMENT,
                "FIELD_INVALID",
                "page_size",
            ),
            (
                fc.ListForecasts(forecast_pb2.ListForecastsRequest(parent=with_pv, page_token="forged")),
                grpc.StatusCode.INVALID_ARGUMENT,
                "PAGE_TOKEN_INVALID",
                "",
            ),
            (
                fc.GetForecastAccuracy(
                    forecast_pb2.GetForecastAccuracyRequest(
                        site=with_pv,
                        kind=forecast_pb2.FORECAST_KIND_PV_POWER,
                        start_time={"seconds": 0},
                        end_time={"seconds": 400 * 86400},
                    )
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "FIELD_INVALID",
                "end_time",
            ),
        ]
        for call, want_code, want_reason, field in bad:
            code, reason, meta = await _error(call)
            assert (code, reason, meta.get("field", "")) == (want_code, want_reason, field)
