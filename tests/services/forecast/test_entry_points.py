"""The face's entry points for the CLI and the bench, over real PostgreSQL and a real ingested load:
forecast_site stores a run like the scheduler's; backtest_site replays the measured load as if live
and the load model beats persistence on a site with a daily routine; bad input raises the face's
errors."""

from __future__ import annotations

import datetime as dt
import math
import socket

import asyncpg
import numpy as np
import pytest

from services.edgelink.writer import IngestWriter, PendingBatch
from services.forecast import ForecastError, ForecastInputError, MissingSiteData, backtest_site, forecast_site
from services.forecast.weather import WeatherConfig
from services.names import SiteName
from services.telemetry import Columns
from tests.support.cloud import new_edge
from tests.support.telemetry_data import add_series

UTC = dt.UTC
SLOT = dt.timedelta(minutes=15)


def _load_w(t: dt.datetime) -> float:
    """A household routine: a morning and an evening peak over a base load."""
    hour = t.hour + t.minute / 60
    return 300.0 + 800.0 * math.exp(-((hour - 7.5) ** 2)) + 1200.0 * math.exp(-(((hour - 19.5) / 1.5) ** 2))


async def test_forecast_and_backtest_a_stored_site(db: asyncpg.Connection, migrated_url: str) -> None:
    edge, pk, _ = await new_edge(db, "entry", time_zone="UTC")
    series = await add_series(db, pk, "load_1/ActivePower")
    start = dt.datetime(2026, 3, 2, tzinfo=UTC)
    times = [start + SLOT * i for i in range(4 * 96)]
    pool = await asyncpg.create_pool(migrated_url, min_size=1, max_size=4)
    assert pool is not None
    try:
        writer = IngestWriter(pool)
        await writer.start()
        try:
            cols = Columns(
                series_ids=np.full(len(times), series, dtype=np.int64),
                times_unix_us=np.array([int((t + SLOT / 2).timestamp() * 1e6) for t in times], dtype=np.int64),
                values=np.array([_load_w(t) for t in times], dtype=np.float64),
            )
            await (await writer.submit(PendingBatch(pk, 1, cols)))
        finally:
            await writer.stop()

        result = await backtest_site(
            pool, edge.site_name, "load", start, times[-1] + SLOT, issue_every=dt.timedelta(hours=6), horizon_slots=96
        )
        assert result.issues >= 8
        day_ahead = next(b for b in result.bands if b.first_slot == 24)
        assert day_ahead.model.skill is not None and day_ahead.model.skill > 0.5

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            down = f"http://127.0.0.1:{s.getsockname()[1]}"
        weather = WeatherConfig.from_env({"EMMA_WEATHER_URL": down, "EMMA_WEATHER_RETRIES": "0"})
        run_id = await forecast_site(pool, edge.site_name, weather, slots=8, issue_time=times[-1] + SLOT)
        kinds = await db.fetch("SELECT kind, model_version FROM forecast.forecasts WHERE run_id = $1", run_id)
        assert [r["kind"] for r in kinds] == ["site_load"]  # no PV description: its load only

        with pytest.raises(ForecastError):
            await forecast_site(pool, SiteName("acme", "nowhere"), weather)
        with pytest.raises(MissingSiteData):
            await backtest_site(pool, edge.site_name, "pv", start, times[-1])
        with pytest.raises(ForecastInputError):
            await backtest_site(pool, edge.site_name, "load", start - dt.timedelta(days=30), start)
    finally:
        await pool.close()
