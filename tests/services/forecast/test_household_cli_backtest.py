"""`emma forecast backtest` on the real household series (tests/data/load/SOURCES.md) stored as a
site's telemetry: the series goes through the real ingest writer into a real PostgreSQL as the
`load_1` and `pv_1` ActivePower channels of a site with the household's country, time zone,
location and the assumed PV description of test_backtest.py; the command, run as a subprocess
exactly as docs/forecasting.md shows it, prints the same scores, line for line, as the domain's
backtest computes from the CSV file itself (the tables of docs/forecast-models.md), and the load
model beats persistence in every band."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import os
import uuid
from pathlib import Path

import asyncpg
import numpy as np
from emma.common.v1 import types_pb2
from emma.registry.v1 import registry_pb2, registry_pb2_grpc

from launcher.forecast_cli import backtest_lines
from services.edgelink.writer import IngestWriter, PendingBatch
from services.forecast.backtest import backtest
from services.forecast.model import PvArray, PvSystem
from services.names import EdgeName
from services.registry import ensure_edge
from services.telemetry import Columns
from tests.support.cli_process import EMMA
from tests.support.cloud import Host
from tests.support.identity import authed_channel, grant
from tests.support.telemetry_data import add_series

DATA = Path(__file__).parents[2] / "data" / "load" / "emhass_household_pv_load_30min_2022-05-08_15.csv"
SLOT = dt.timedelta(minutes=15)
# test_backtest.py's assumed system: central France, one south-facing 30 degree array of 5 kWp.
HOUSEHOLD = registry_pb2.Site(
    display_name="Household",
    location=types_pb2.GeoLocation(latitude_deg=45.75, longitude_deg=4.85),
    time_zone="Europe/Paris",
    country_code="FR",
    pv_system=registry_pb2.PvSystem(
        arrays=[registry_pb2.PvArray(tilt_deg=30, azimuth_deg=180, peak_power_kw=5)], altitude_m=200
    ),
)
# The same system as the models see it (losses default to 0.14 on both sides).
HOUSEHOLD_PV = PvSystem(45.75, 4.85, 200.0, (PvArray(30.0, 180.0, 5.0),))


def _rows() -> list[dict[str, str]]:
    with DATA.open(newline="") as f:
        return list(csv.DictReader(f))


def _column(rows: list[dict[str, str]], name: str) -> list[tuple[dt.datetime, float]]:
    return [(dt.datetime.fromisoformat(r["timestamp"]), float(r[name])) for r in rows]


async def _store(pool: asyncpg.Pool, edge_pk: int, series: dict[int, list[tuple[dt.datetime, float]]]) -> None:
    """Each 30-minute mean as two samples, in the middle of each of its 15-minute slots: the stored
    15-minute means are then exactly the file's values."""
    writer = IngestWriter(pool)
    await writer.start()
    try:
        futures = []
        for seq, (series_id, values) in enumerate(series.items(), start=1):
            times = [t + SLOT / 2 + SLOT * k for t, _ in values for k in (0, 1)]
            cols = Columns(
                series_ids=np.full(len(times), series_id, dtype=np.int64),
                times_unix_us=np.array([int(t.timestamp() * 1_000_000) for t in times], dtype=np.int64),
                values=np.array([v for _, v in values for _ in (0, 1)], dtype=np.float64),
            )
            futures.append(await writer.submit(PendingBatch(edge_pk, seq, cols)))
        await asyncio.gather(*futures)
    finally:
        await writer.stop()


async def _cli(database: str, *args: str) -> tuple[int, list[str], str]:
    proc = await asyncio.create_subprocess_exec(
        EMMA,
        "forecast",
        "backtest",
        *args,
        env={**os.environ, "DATABASE_URL": database},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode is not None
    return proc.returncode, out.decode().splitlines(), err.decode()


async def test_the_command_prints_the_documented_household_scores(
    host: Host, db: asyncpg.Connection, migrated_url: str
) -> None:
    org = f"h{uuid.uuid4().hex[:8]}"
    admin = await grant(db, org, "admin")
    async with host(["registry"]) as (server, _), authed_channel(server.port, admin.token) as ch:
        created = await registry_pb2_grpc.RegistryServiceStub(ch).CreateSite(
            registry_pb2.CreateSiteRequest(parent=f"organizations/{org}", site_id="household", site=HOUSEHOLD)
        )
    site = created.name
    pk = await ensure_edge(db, EdgeName(org, "household", "gw"), time_zone="Europe/Paris")
    rows = _rows()
    load, pv = _column(rows, "P_Load"), _column(rows, "P_PV")
    pool = await asyncpg.create_pool(migrated_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        load_id = await add_series(db, pk, "load_1/ActivePower")
        pv_id = await add_series(db, pk, "pv_1/ActivePower")
        await _store(pool, pk, {load_id: load, pv_id: pv})
    finally:
        await pool.close()

    six = dt.timedelta(hours=6)
    expected = {
        "load": backtest(load, "load", issue_every=six, horizon_slots=192, country="FR", time_zone="Europe/Paris"),
        "pv": backtest(pv, "pv", issue_every=six, horizon_slots=192, system=HOUSEHOLD_PV),
    }
    for model, result in expected.items():
        code, lines, err = await _cli(
            migrated_url, "--site", site, "--from", "2022-05-07", "--to", "2022-05-15", "--model", model
        )
        print("\n" + "\n".join(lines))
        assert code == 0, err
        assert lines == backtest_lines(site, result)
        assert result.issues == 28 and len(result.bands) == 4
    for band in expected["load"].bands:
        assert band.model.skill is not None and band.model.skill > 0.0, band.label
