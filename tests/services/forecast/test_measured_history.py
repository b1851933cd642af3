"""RunForecast reads the site's measured load and PV from the telemetry store (stored through the real
ingest writer) by the channel convention of docs/forecasting.md: the load forecast is no cold start
and follows the measured level, the PV forecast is the clear sky times the correction learnt from
the measured PV, a gap in the history is flagged, and a site without a country code gets its load
forecast without holidays (said in the degraded reasons), not a refusal."""

from __future__ import annotations

import datetime as dt
import re
import socket

import asyncpg
import numpy as np
import pytest
from emma.forecast.v1 import forecast_pb2, forecast_pb2_grpc
from emma.registry.v1 import registry_pb2, registry_pb2_grpc
from google.protobuf import duration_pb2, field_mask_pb2

from services.edgelink.writer import IngestWriter, PendingBatch
from services.forecast.load import NO_COUNTRY
from services.forecast.model import SLOT, PvArray, PvSystem
from services.forecast.pv import forecast_pv
from services.telemetry import Columns
from tests.support.cloud import Host, new_edge
from tests.support.identity import authed_channel, grant
from tests.support.telemetry_data import add_series

UTC = dt.UTC
FACTOR = 0.6  # the measured PV is this share of what the description's clear sky gives
LOAD_BASE_W = 500.0
LOAD_EVENING_W = 900.0


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def _weather_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMMA_WEATHER_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("EMMA_WEATHER_RETRIES", "0")


def _load_w(t: dt.datetime) -> float:
    return LOAD_EVENING_W if 17 <= t.hour < 22 else LOAD_BASE_W


async def _store(pool: asyncpg.Pool, edge_pk: int, points: dict[int, list[tuple[dt.datetime, float]]]) -> None:
    """The points, one batch per series, through the real ingest writer."""
    writer = IngestWriter(pool)
    await writer.start()
    try:
        futures = []
        for seq, (series_id, rows) in enumerate(points.items(), start=1):
            cols = Columns(
                series_ids=np.full(len(rows), series_id, dtype=np.int64),
                times_unix_us=np.array([int(t.timestamp() * 1_000_000) for t, _ in rows], dtype=np.int64),
                values=np.array([v for _, v in rows], dtype=np.float64),
            )
            futures.append(await writer.submit(PendingBatch(edge_pk, seq, cols)))
        for f in futures:
            await f
    finally:
        await writer.stop()


async def test_runs_use_the_measured_load_and_pv(host: Host, db: asyncpg.Connection, migrated_url: str) -> None:
    operator = await grant(db, "acme", "operator")
    admin = await grant(db, "acme", "admin")
    edge, pk, _ = await new_edge(db, "measured")  # Madrid, no country code
    system = PvSystem(40.4, -3.7, 600.0, (PvArray(tilt_deg=30, azimuth_deg=180, kwp=5),))
    now = dt.datetime.now(UTC)
    first_day = (now - dt.timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
    until = now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)
    slots = int((until - first_day) / SLOT)
    clear = (
        forecast_pv(system, first_day, min(slots, 288), None).p50
        + forecast_pv(system, first_day + SLOT * 288, max(slots - 288, 1), None).p50
    )
    times = [first_day + SLOT * i for i in range(slots)]
    # One sample a slot, at its middle; the load misses its second day (a gap: a quarter or more of
    # the history from the first measured slot on, flagged, no crash). The 25 days before the site
    # reported are not counted as missing.
    gap = {first_day + dt.timedelta(days=1) + SLOT * i for i in range(96)}
    load = [(t + SLOT / 2, _load_w(t)) for t in times if t not in gap]
    pv = [(t + SLOT / 2, FACTOR * clear[i]) for i, t in enumerate(times)]
    battery = [(t + SLOT / 2, 2000.0) for t in times]  # not load: the optimizer plans batteries
    series = {
        await add_series(db, pk, "load_1/ActivePower"): load,
        await add_series(db, pk, "pv_1/ActivePower"): pv,
        await add_series(db, pk, "battery_1/ActivePower"): battery,
    }
    pool = await asyncpg.create_pool(migrated_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        await _store(pool, pk, series)
    finally:
        await pool.close()

    async with (
        host(["registry", "forecast"]) as (server, _),
        authed_channel(server.port, admin.token) as admin_ch,
        authed_channel(server.port, operator.token) as ch,
    ):
        site = str(edge.site_name)
        pv_desc = registry_pb2.PvSystem(
            arrays=[registry_pb2.PvArray(tilt_deg=30, azimuth_deg=180, peak_power_kw=5)], altitude_m=600
        )
        await registry_pb2_grpc.RegistryServiceStub(admin_ch).UpdateSite(
            registry_pb2.UpdateSiteRequest(
                site=registry_pb2.Site(name=site, pv_system=pv_desc),
                update_mask=field_mask_pb2.FieldMask(paths=["pv_system"]),
            )
        )
        fc = forecast_pb2_grpc.ForecastServiceStub(ch)
        run = await fc.RunForecast(
            forecast_pb2.RunForecastRequest(
                site=site, horizon=duration_pb2.Duration(seconds=24 * 3600), request_id="measured-1"
            )
        )
        assert run.state == forecast_pb2.FORECAST_RUN_STATE_SUCCEEDED
        by_kind = {f.kind: f for f in run.forecasts}
        load_reasons = list(by_kind[forecast_pb2.FORECAST_KIND_SITE_LOAD].degraded_reasons)
        assert not any("cold start" in r for r in load_reasons), load_reasons
        assert NO_COUNTRY in load_reasons
        missing = [r for r in load_reasons if "of the load history is missing" in r]
        assert len(missing) == 1, load_reasons
        gap_slots, window = map(int, re.search(r"; (\d+) of (\d+) slots", missing[0]).groups())  # type: ignore[union-attr]
        # The day's 96 slots (and the slot being measured when the run began); the window starts at
        # the first measured slot, not 28 days back.
        assert 96 <= gap_slots <= 97 and window <= slots + 1, missing

        got_load = await fc.GetLatestForecast(
            forecast_pb2.GetLatestForecastRequest(site=site, kind=forecast_pb2.FORECAST_KIND_SITE_LOAD)
        )
        for s in got_load.slots:
            t = s.start_time.ToDatetime(UTC)
            assert abs(s.p50_w - _load_w(t)) < 1.0, (t, s.p50_w)

        got_pv = await fc.GetLatestForecast(
            forecast_pb2.GetLatestForecastRequest(site=site, kind=forecast_pb2.FORECAST_KIND_PV_POWER)
        )
        start = got_pv.start_time.ToDatetime(UTC)
        expected = forecast_pv(system, start, len(got_pv.slots), None).p50
        energy = sum(s.p50_w for s in got_pv.slots)
        assert energy > 0
        assert abs(energy / sum(expected) - FACTOR) < 0.02
