"""The Open-Meteo client against the weather replay server (a real HTTP server on loopback serving a
real recorded answer): values as recorded, retries after 5xx/429, a down source, a refused query;
broken answers are refused WeatherErrors (never another exception) and leave the PV forecast
degraded, not missing."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from emma.registry.v1 import registry_pb2

from launcher.weather_replay import Fault, WeatherReplayServer, running_weather_replay
from launcher.weather_replay.app import RECORDING
from services.forecast.errors import WeatherConfigError, WeatherError
from services.forecast.model import PvArray, PvSystem
from services.forecast.pv import forecast_pv
from services.forecast.runner import make_forecasts
from services.forecast.weather import OpenMeteoClient, SharedWeather, WeatherConfig, parse_forecast
from services.names import SiteName
from services.platform.registration import build_workers, running_workers
from services.platform.runtime import Runtime
from services.registry import SiteProfile
from tests.support.cloud import platform_config

START = datetime(2026, 12, 5, tzinfo=UTC)


def _config(url: str, retries: int = 3, read_timeout_s: float = 5.0) -> WeatherConfig:
    return WeatherConfig(url=url, retries=retries, backoff_s=0.01, backoff_max_s=0.02, read_timeout_s=read_timeout_s)


async def test_fetch_returns_the_recorded_values_re_dated_to_the_requested_window() -> None:
    recorded = json.loads(RECORDING.read_text(encoding="utf-8"))["hourly"]
    async with running_weather_replay() as server:
        client = OpenMeteoClient(_config(server.url))
        try:
            series = await client.fetch(52.52, 13.41, START, 48)
        finally:
            await client.aclose()
        asked = server.requests[0]
    assert (
        asked["hourly"] == "shortwave_radiation,direct_normal_irradiance,diffuse_radiation,temperature_2m,cloud_cover"
    )
    assert asked["timezone"] == "GMT" and asked["start_date"] == "2026-12-05" and asked["end_date"] == "2026-12-07"
    assert series.source == "open-meteo"
    assert series.times[0] == START and series.times[1] - series.times[0] == timedelta(hours=1)
    assert len(series.times) == 72
    assert list(series.ghi_w_m2[:48]) == [float(v) for v in recorded["shortwave_radiation"]]
    assert list(series.dni_w_m2[:48]) == [float(v) for v in recorded["direct_normal_irradiance"]]
    assert list(series.dhi_w_m2[:48]) == [float(v) for v in recorded["diffuse_radiation"]]
    assert list(series.temp_air_c[:48]) == [float(v) for v in recorded["temperature_2m"]]
    assert list(series.cloud_cover_pct[:48]) == [float(v) for v in recorded["cloud_cover"]]
    assert series.ghi_w_m2[48] == recorded["shortwave_radiation"][0]  # the recording repeats


async def test_the_shift_is_stated_in_a_header() -> None:
    async with running_weather_replay() as server, httpx.AsyncClient() as http:
        answer = await http.get(
            f"{server.url}/v1/forecast",
            params={
                "latitude": "1",
                "longitude": "2",
                "hourly": "cloud_cover",
                "start_date": "2026-12-05",
                "end_date": "2026-12-05",
            },
        )
    assert answer.status_code == 200
    assert "re-dated to 2026-12-05T00:00..2026-12-05T23:00" in answer.headers["x-replay-shift"]


async def test_5xx_and_429_are_retried_then_the_answer_is_used() -> None:
    async with running_weather_replay() as server:
        server.inject(Fault(status=500))
        server.inject(Fault(status=429))
        client = OpenMeteoClient(_config(server.url))
        try:
            series = await client.fetch(52.52, 13.41, START, 24)
        finally:
            await client.aclose()
        assert len(server.requests) == 3
    assert len(series.times) == 48


async def test_a_source_that_stays_down_is_a_retryable_weather_error() -> None:
    async with running_weather_replay() as server:
        server.inject(Fault(status=503, count=10))
        client = OpenMeteoClient(_config(server.url, retries=2))
        try:
            with pytest.raises(WeatherError) as down:
                await client.fetch(52.52, 13.41, START, 24)
        finally:
            await client.aclose()
        assert len(server.requests) == 3
    assert down.value.retry is True and "HTTP 503 after 3 attempts" in str(down.value)


async def test_a_hanging_source_times_out_and_is_retryable() -> None:
    async with WeatherReplayServer(faults=[Fault(hang_s=5.0, count=10)]) as server:
        client = OpenMeteoClient(_config(server.url, retries=1, read_timeout_s=0.2))
        try:
            with pytest.raises(WeatherError) as slow:
                await client.fetch(52.52, 13.41, START, 24)
        finally:
            await client.aclose()
    assert slow.value.retry is True and "timeout" in str(slow.value)


async def test_nothing_listening_is_retryable() -> None:
    async with running_weather_replay() as server:
        url = server.url
    client = OpenMeteoClient(_config(url, retries=1))
    try:
        with pytest.raises(WeatherError) as refused:
            await client.fetch(52.52, 13.41, START, 24)
    finally:
        await client.aclose()
    assert refused.value.retry is True and "connection failed" in str(refused.value)


async def test_an_error_body_is_a_refused_query_not_retried() -> None:
    async with running_weather_replay() as server:
        client = OpenMeteoClient(_config(server.url))
        try:
            with pytest.raises(WeatherError) as refused:
                # 16 days is the most Open-Meteo forecasts: the replay refuses like the API does.
                await client.fetch(52.52, 13.41, START, 16 * 24)
        finally:
            await client.aclose()
        assert len(server.requests) == 1
    assert refused.value.retry is False and "HTTP 400" in str(refused.value) and "within 16 days" in str(refused.value)


async def test_the_fetched_weather_drives_the_pv_forecast() -> None:
    """Horizontal array: each recorded hour's GHI comes back as that hour's energy (within the
    temperature and incidence effects), computed here from the recording alone."""
    recorded = json.loads(RECORDING.read_text(encoding="utf-8"))["hourly"]
    async with running_weather_replay() as server:
        client = OpenMeteoClient(_config(server.url))
        try:
            series = await client.fetch(52.52, 13.41, START, 24)
        finally:
            await client.aclose()
    system = PvSystem(52.52, 13.41, 38.0, (PvArray(0.0, 180.0, 10.0, 0.14),))
    forecast = forecast_pv(system, START, 96, series)
    assert not forecast.degraded
    # Hour labelled T is the mean over (T-1h, T]: the recorded day is labels 01:00 .. 24:00.
    ghi_wh = sum(float(v) for v in recorded["shortwave_radiation"][1:25])
    expected_wh = ghi_wh / 1000.0 * 10_000.0 * (1 - 0.14)
    model_wh = sum(forecast.p50) / 4.0
    assert model_wh == pytest.approx(expected_wh, rel=0.05)


def test_config_from_env() -> None:
    assert WeatherConfig.from_env({}).url == "https://api.open-meteo.com"
    assert WeatherConfig.from_env({"EMMA_WEATHER_URL": "http://127.0.0.1:9000/"}).url == "http://127.0.0.1:9000"
    with pytest.raises(WeatherConfigError, match="EMMA_WEATHER_URL"):
        WeatherConfig.from_env({"EMMA_WEATHER_URL": "http://weather.example.com"})
    with pytest.raises(WeatherConfigError, match="EMMA_WEATHER_RETRIES"):
        WeatherConfig.from_env({"EMMA_WEATHER_RETRIES": "many"})


async def test_a_process_shares_one_client_and_closes_it_after_its_workers_stop() -> None:
    # One httpx client (its TLS context and connection pool) for all runs of a process, not one per run.
    runtime = Runtime(config=platform_config(""), pool=None)  # type: ignore[arg-type]
    async with running_weather_replay() as server:
        config = _config(server.url)
        shared = SharedWeather.of(runtime, config)
        assert SharedWeather.of(runtime, config) is shared  # the scheduler finds the servicer's instance
        await shared.fetch(52.5, 13.4, START, 48)
        client = shared._client
        await shared.fetch(48.1, 11.6, START, 24)
        assert client is not None and shared._client is client
        workers = build_workers([], runtime)
        assert len(workers) == 1  # the closer, which stops last
        async with running_workers(workers):
            assert not client._client.is_closed
        assert client._client.is_closed and shared._client is None and runtime.closers == []
        assert build_workers([], runtime) == []  # nothing left to close: no worker


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ({"utc_offset_seconds": 10**20, "hourly": {"time": ["2026-12-05T00:00"]}}, "is not a UTC offset"),
        ({"utc_offset_seconds": True, "hourly": {"time": ["2026-12-05T00:00"]}}, "is not a UTC offset"),
        ({"utc_offset_seconds": 3600, "hourly": {"time": ["0001-01-01T00:00"]}}, "unreadable time"),
        ({"utc_offset_seconds": -3600, "hourly": {"time": ["9999-12-31T23:30"]}}, "unreadable time"),
        ({"hourly": {"time": [1733356800]}}, "unreadable time"),
        ({"hourly": {"time": ["2026-12-05T00:00"], "cloud_cover": [1, 2]}}, "one value per time"),
        ({"hourly": {"time": ["2026-12-05T00:00", "2026-12-05T00:00"]}}, "strictly increasing"),
        ({"hourly": {"time": ["2026-12-05T00:00"], "shortwave_radiation": [10**400]}}, "inconsistent answer"),
    ],
)
def test_a_broken_answer_is_a_refused_weather_error_never_another_exception(
    answer: dict[str, object], problem: str
) -> None:
    with pytest.raises(WeatherError) as caught:
        parse_forecast(json.dumps(answer).encode(), START)
    assert caught.value.retry is False and problem in str(caught.value)


def test_times_in_the_answer_are_moved_to_utc() -> None:
    local = {"utc_offset_seconds": 3600, "hourly": {"time": ["2026-12-05T01:00"], "temperature_2m": [float("nan")]}}
    series = parse_forecast(json.dumps(local).encode(), START)
    assert series.times == (START,) and series.temp_air_c == (None,)  # NaN is no value
    stated = {"utc_offset_seconds": 3600, "hourly": {"time": ["2026-12-05T05:00+05:00"]}}
    assert parse_forecast(json.dumps(stated).encode(), START).times == (START,)


async def test_a_source_answering_garbage_makes_the_pv_forecast_degraded_not_missing() -> None:
    """A real HTTP server on loopback whose 200 answer is broken (an offset no time zone has): the
    run gets the clear-sky PV forecast with the reason, as when the source is down."""
    body = json.dumps({"utc_offset_seconds": 10**20, "hourly": {"time": ["2026-12-05T00:00"]}}).encode()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        writer.write(head.encode() + b"Connection: close\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = OpenMeteoClient(_config(f"http://127.0.0.1:{port}"))
    profile = SiteProfile(
        SiteName("acme", "garbage"),
        52.52,
        13.41,
        "Europe/Berlin",
        "DE",
        registry_pb2.PvSystem(arrays=[registry_pb2.PvArray(tilt_deg=30, azimuth_deg=180, peak_power_kw=5)]),
    )
    executor = ThreadPoolExecutor(max_workers=1)
    try:
        made = await make_forecasts(profile, {"pv_power"}, START, 96, [], client, executor=executor)
    finally:
        executor.shutdown()
        await client.aclose()
        server.close()
    (pv,) = made
    assert pv.weather_source == "" and sum(pv.forecast.p50) > 0
    assert any(r.startswith("weather unavailable: open-meteo: utc_offset_seconds") for r in pv.forecast.degraded)
