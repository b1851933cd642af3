"""A site that meters only its grid connection: its load is derived from the power balance,
grid + PV + battery - EV (docs/forecasting.md, "Measured history"), read from the real telemetry
store (samples stored through the real ingest writer); a site with load devices keeps using them."""

from __future__ import annotations

import datetime as dt
import math

import asyncpg
import numpy as np

from services.edgelink.writer import IngestWriter, PendingBatch
from services.forecast.measured import read_measured
from services.forecast.model import SLOT
from services.forecast.runner import measured_history
from services.telemetry import Columns
from tests.support.cloud import new_edge
from tests.support.telemetry_data import add_series

UTC = dt.UTC
SLOTS = 8


async def _store(pool: asyncpg.Pool, edge_pk: int, points: dict[int, list[tuple[dt.datetime, float]]]) -> None:
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


def _start() -> dt.datetime:
    now = dt.datetime.now(UTC) - dt.timedelta(days=1)
    return now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)


async def test_a_grid_only_site_gets_its_load_from_the_power_balance(db: asyncpg.Connection, migrated_url: str) -> None:
    edge, pk, _ = await new_edge(db, "gridonly")
    start = _start()
    times = [start + SLOT * i + SLOT / 2 for i in range(SLOTS)]
    grid = [1200.0, 800.0, -300.0, -1500.0, 0.0, 250.0, 400.0, 900.0]  # > 0 import, < 0 export
    pv = [0.0, 500.0, 1800.0, 3000.0, 2500.0, 1000.0, 200.0, 0.0]
    battery = [300.0, 0.0, -700.0, -1000.0, 0.0, 500.0, 600.0, 0.0]  # > 0 discharging
    ev = [0.0, 0.0, 0.0, 0.0, 1100.0, 1100.0, 0.0, 0.0]  # > 0 charging a car
    missing_battery = 6  # one slot the battery did not report: unknown, not a drop
    series = {
        await add_series(db, pk, "grid_1/ActivePower"): list(zip(times, grid, strict=True)),
        await add_series(db, pk, "pv_1/ActivePower"): list(zip(times, pv, strict=True)),
        await add_series(db, pk, "battery_1/ActivePower"): [
            (t, b) for i, (t, b) in enumerate(zip(times, battery, strict=True)) if i != missing_battery
        ],
        await add_series(db, pk, "ev_1/ActivePower"): list(zip(times, ev, strict=True)),
        # A grid channel in another unit is not summed with watts.
        await add_series(db, pk, "grid_2/ActivePower", unit="kW"): [(t, 99.0) for t in times],
    }
    pool = await asyncpg.create_pool(migrated_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        await _store(pool, pk, series)
    finally:
        await pool.close()

    measured = await read_measured(db, edge.site_name, start, start + SLOT * SLOTS)
    assert measured.load_source == "derived: grid + PV + battery - EV"
    assert set(measured.load_channels) == {
        f"{edge.edge}: {c}/ActivePower" for c in ("grid_1", "pv_1", "battery_1", "ev_1")
    }
    for i, (t, value) in enumerate(measured.load):
        assert t == start + SLOT * i
        if i == missing_battery:
            assert math.isnan(value)
        else:
            assert value == grid[i] + pv[i] + battery[i] - ev[i], i
    assert [v for _, v in measured.pv] == pv
    # The run sees a measured load (not the "no measured load" cold start).
    _, notes = await measured_history(db, edge.site_name, start + SLOT * SLOTS)
    assert notes == ()


async def test_load_devices_win_over_the_grid_meter_and_a_site_without_either_has_no_load(
    db: asyncpg.Connection, migrated_url: str
) -> None:
    metered, pk, _ = await new_edge(db, "loadmetered")
    bare, bare_pk, _ = await new_edge(db, "pvonly")
    start = _start()
    times = [start + SLOT * i + SLOT / 2 for i in range(SLOTS)]
    series = {
        await add_series(db, pk, "load_1/ActivePower"): [(t, 450.0) for t in times],
        await add_series(db, pk, "grid_1/ActivePower"): [(t, -2000.0) for t in times],
    }
    pool = await asyncpg.create_pool(migrated_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        await _store(pool, pk, series)
        await _store(pool, bare_pk, {await add_series(db, bare_pk, "pv_1/ActivePower"): [(t, 10.0) for t in times]})
    finally:
        await pool.close()

    measured = await read_measured(db, metered.site_name, start, start + SLOT * SLOTS)
    assert measured.load_source == "load devices"
    assert measured.load_channels == (f"{metered.edge}: load_1/ActivePower",)
    assert [v for _, v in measured.load] == [450.0] * SLOTS

    none = await read_measured(db, bare.site_name, start, start + SLOT * SLOTS)
    assert none.load == [] and none.load_channels == () and none.load_source == ""
    _, notes = await measured_history(db, bare.site_name, start + SLOT * SLOTS)
    assert notes and notes[0].startswith("no measured load")
