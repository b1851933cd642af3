"""RunForecast's request handling on a real server: a request_id reused for another horizon, other
kinds or another site is ALREADY_EXISTS REQUEST_ID_REUSED (its first run stays the answer to the
original request); while the weather source keeps the run waiting, the run holds no database
connection; the models run in the executor they are given, not on the event loop's thread."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import grpc
import pytest
from emma.common.v1 import types_pb2
from emma.forecast.v1 import forecast_pb2, forecast_pb2_grpc
from emma.registry.v1 import registry_pb2, registry_pb2_grpc
from google.protobuf import duration_pb2
from grpc_status import rpc_status

from services.errors import error_info_of
from services.forecast import runner
from services.names import SiteName
from services.registry import SiteProfile
from tests.support.cloud import Host
from tests.support.identity import authed_channel, grant

T = TypeVar("T")
PV = registry_pb2.PvSystem(arrays=[registry_pb2.PvArray(tilt_deg=30, azimuth_deg=180, peak_power_kw=5)])


class _StalledWeather:
    """A loopback TCP server that accepts the weather request and answers nothing until released."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.release = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.asked.set()
        await self.release.wait()
        writer.close()  # no answer: the client sees the source as down

    async def __aenter__(self) -> _StalledWeather:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        assert self._server is not None
        self._server.close()


async def _site(reg: registry_pb2_grpc.RegistryServiceStub) -> str:
    site = registry_pb2.Site(
        display_name="Roof",
        location=types_pb2.GeoLocation(latitude_deg=40.4, longitude_deg=-3.7),
        time_zone="Europe/Madrid",
        country_code="ES",
        pv_system=PV,
    )
    created = await reg.CreateSite(
        registry_pb2.CreateSiteRequest(parent="organizations/acme", site_id=f"r-{uuid.uuid4().hex[:8]}", site=site)
    )
    return created.name


def _hours(h: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=h * 3600)


async def test_request_id_reused_for_other_content_is_refused(
    host: Host, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMMA_WEATHER_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("EMMA_WEATHER_RETRIES", "0")
    operator = await grant(db, "acme", "operator")
    admin = await grant(db, "acme", "admin")
    async with (
        host(["registry", "forecast"]) as (server, _),
        authed_channel(server.port, admin.token) as admin_ch,
        authed_channel(server.port, operator.token) as ch,
    ):
        reg = registry_pb2_grpc.RegistryServiceStub(admin_ch)
        site, other = await _site(reg), await _site(reg)
        fc = forecast_pb2_grpc.ForecastServiceStub(ch)
        kinds = [forecast_pb2.FORECAST_KIND_SITE_LOAD]
        first = forecast_pb2.RunForecastRequest(site=site, kinds=kinds, horizon=_hours(6), request_id="same")
        run = await fc.RunForecast(first)
        for changed in (
            forecast_pb2.RunForecastRequest(site=site, kinds=kinds, horizon=_hours(12), request_id="same"),
            forecast_pb2.RunForecastRequest(site=site, horizon=_hours(6), request_id="same"),
            forecast_pb2.RunForecastRequest(site=other, kinds=kinds, horizon=_hours(6), request_id="same"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await fc.RunForecast(changed)
            assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
            status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
            assert status is not None
            info = error_info_of(status)
            assert info is not None
            assert info.reason == "REQUEST_ID_REUSED"
            assert dict(info.metadata) == {"request_id": "same"}
        assert await fc.RunForecast(first) == run
        assert await db.fetchval("SELECT count(*) FROM forecast.runs WHERE request_id = 'same'") == 1


async def test_no_connection_is_held_while_the_weather_is_awaited(
    host: Host, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    operator = await grant(db, "acme", "operator")
    admin = await grant(db, "acme", "admin")
    async with _StalledWeather() as weather:
        monkeypatch.setenv("EMMA_WEATHER_URL", f"http://127.0.0.1:{weather.port}")
        monkeypatch.setenv("EMMA_WEATHER_RETRIES", "0")
        async with (
            host(["registry", "forecast"]) as (server, runtime),
            authed_channel(server.port, admin.token) as admin_ch,
            authed_channel(server.port, operator.token) as ch,
        ):
            site = await _site(registry_pb2_grpc.RegistryServiceStub(admin_ch))
            call = asyncio.ensure_future(
                forecast_pb2_grpc.ForecastServiceStub(ch).RunForecast(
                    forecast_pb2.RunForecastRequest(site=site, horizon=_hours(6), request_id="stalled")
                )
            )
            await asyncio.wait_for(weather.asked.wait(), 10)
            # The run waits for the weather: every connection of the pool is idle.
            assert runtime.pool.get_idle_size() == runtime.pool.get_size()
            weather.release.set()
            run = await call
            assert any(r.startswith("weather unavailable") for r in run.degraded_reasons)


class _Recording(ThreadPoolExecutor):
    """A real thread pool that records on which thread each submitted job ran."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="models-under-test")
        self.ran_on: list[str] = []

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        def job() -> T:
            self.ran_on.append(threading.current_thread().name)
            return fn(*args, **kwargs)

        return super().submit(job)


async def test_models_run_in_the_given_executor() -> None:
    profile = SiteProfile(SiteName("acme", "x"), 40.4, -3.7, "Europe/Madrid", "ES", PV)
    executor = _Recording()
    try:
        made = await runner.make_forecasts(
            profile, {"pv_power", "site_load"}, datetime(2026, 6, 1, 6, tzinfo=UTC), 8, [], None, executor=executor
        )
    finally:
        executor.shutdown()
    assert [m.kind for m in made] == ["pv_power", "site_load"]
    assert len(executor.ran_on) == 1 and executor.ran_on[0].startswith("models-under-test")
    assert threading.current_thread().name not in executor.ran_on
