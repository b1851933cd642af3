"""Scoring of stored forecasts once the actuals arrived: a load forecast issued 12 hours ago from the
site's measured history is scored against what the edge measured since (stored through the real
ingest writer), per horizon band, by two scorers racing without scoring it twice; GetForecastAccuracy
returns the scores, equal to MAE, bias and skill against persistence computed here from the stored
slots and the measured values."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket

import asyncpg
import numpy as np
from emma.forecast.v1 import forecast_pb2, forecast_pb2_grpc

from services.edgelink.writer import IngestWriter, PendingBatch
from services.forecast.model import SLOT
from services.forecast.runner import forecast_site
from services.forecast.scorer import score_due
from services.forecast.weather import WeatherConfig
from services.telemetry import Columns
from tests.support.cloud import Host, new_edge
from tests.support.identity import authed_channel, grant
from tests.support.telemetry_data import add_series

UTC = dt.UTC


def _down_weather() -> WeatherConfig:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return WeatherConfig.from_env({"EMMA_WEATHER_URL": f"http://127.0.0.1:{port}", "EMMA_WEATHER_RETRIES": "0"})


def _measured_w(t: dt.datetime, issue: dt.datetime) -> float:
    """A daily shape; after the issue time the site uses 100 W more than the history said."""
    base = 900.0 if 17 <= t.hour < 22 else 400.0 + 10.0 * (t.minute // 15)
    return base + (100.0 if t >= issue else 0.0)


async def _store(pool: asyncpg.Pool, edge_pk: int, series_id: int, rows: list[tuple[dt.datetime, float]]) -> None:
    writer = IngestWriter(pool)
    await writer.start()
    try:
        cols = Columns(
            series_ids=np.full(len(rows), series_id, dtype=np.int64),
            times_unix_us=np.array([int(t.timestamp() * 1_000_000) for t, _ in rows], dtype=np.int64),
            values=np.array([v for _, v in rows], dtype=np.float64),
        )
        await (await writer.submit(PendingBatch(edge_pk, 1, cols)))
    finally:
        await writer.stop()


async def test_stored_forecasts_are_scored_when_actuals_arrive(
    host: Host, db: asyncpg.Connection, migrated_url: str
) -> None:
    viewer = await grant(db, "acme", "viewer")
    edge, pk, _ = await new_edge(db, "scored")
    now = dt.datetime.now(UTC)
    until = now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)
    issue = until - dt.timedelta(hours=12)
    first = issue - dt.timedelta(days=3)
    times = [first + SLOT * i for i in range(int((until - first) / SLOT))]
    series = await add_series(db, pk, "load_1/ActivePower")
    async with host(["registry", "forecast"]) as (server, runtime), authed_channel(server.port, viewer.token) as ch:
        await _store(runtime.pool, pk, series, [(t + SLOT / 2, _measured_w(t, issue)) for t in times])
        run_id = await forecast_site(
            runtime.pool, edge.site_name, _down_weather(), kinds={"site_load"}, slots=32, issue_time=issue
        )
        forecast_id = await db.fetchval("SELECT forecast_id FROM forecast.forecasts WHERE run_id = $1", run_id)

        # Not due yet while the scoring delay has not passed since its last slot.
        assert forecast_id not in await score_due(runtime.pool, now, dt.timedelta(hours=6))
        assert await db.fetchval("SELECT scored_at FROM forecast.forecasts WHERE forecast_id = $1", forecast_id) is None

        racing = await asyncio.gather(*(score_due(runtime.pool, now, dt.timedelta(0)) for _ in range(2)))
        scored = [f for ids in racing for f in ids]
        assert len(scored) == len(set(scored)) and forecast_id in scored
        assert await score_due(runtime.pool, now, dt.timedelta(0)) == []  # never scored twice

        accuracy = await forecast_pb2_grpc.ForecastServiceStub(ch).GetForecastAccuracy(
            forecast_pb2.GetForecastAccuracyRequest(site=str(edge.site_name), kind=forecast_pb2.FORECAST_KIND_SITE_LOAD)
        )

    stored = await db.fetch(
        "SELECT slot_start, p50_w FROM forecast.forecast_values WHERE forecast_id = $1 ORDER BY slot_start",
        forecast_id,
    )
    persistence = _measured_w(issue - SLOT, issue)
    got = {(b.horizon_start.ToTimedelta(), b.horizon_end.ToTimedelta()): b for b in accuracy.bands}
    hours = dt.timedelta(hours=1)
    assert sorted(got) == [(0 * hours, 6 * hours), (6 * hours, 24 * hours)]
    for (lo, hi), band in got.items():
        rows = [r for r in stored if lo <= r["slot_start"] - issue < hi]
        errors = [r["p50_w"] - _measured_w(r["slot_start"], issue) for r in rows]
        reference = [persistence - _measured_w(r["slot_start"], issue) for r in rows]
        mae = sum(abs(e) for e in errors) / len(errors)
        assert band.forecast_count == 1
        assert band.slot_count == len(rows) == (24 if lo == dt.timedelta(0) else 8)
        assert abs(band.mae_w - mae) < 1e-6
        assert abs(band.bias_w - sum(errors) / len(errors)) < 1e-6
        assert abs(band.skill - (1 - mae / (sum(abs(e) for e in reference) / len(reference)))) < 1e-9
    assert 90.0 < got[(dt.timedelta(0), dt.timedelta(hours=6))].mae_w < 110.0  # the 100 W the site added
