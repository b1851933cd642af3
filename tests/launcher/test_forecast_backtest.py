"""`emma forecast backtest` as a real subprocess on a real PostgreSQL holding a site's ingested load:
it prints what the forecast domain's backtest computes (the same scores, band by band) and refuses
bad arguments and sites it cannot replay with one line and exit code 1."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import os
import re

import asyncpg
import numpy as np

from services.edgelink.writer import IngestWriter, PendingBatch
from services.forecast import backtest_site
from services.telemetry import Columns
from tests.support.cli_process import EMMA
from tests.support.cloud import new_edge
from tests.support.telemetry_data import add_series

UTC = dt.UTC
SLOT = dt.timedelta(minutes=15)
START = dt.datetime(2026, 3, 2, tzinfo=UTC)
DAYS = 4


def _load_w(t: dt.datetime) -> float:
    """A household routine with a weekday-independent morning and evening peak, and some noise."""
    hour = t.hour + t.minute / 60
    wobble = 40.0 * math.sin(t.timestamp() / 5400.0)
    return 300.0 + wobble + 800.0 * math.exp(-((hour - 7.5) ** 2)) + 1200.0 * math.exp(-(((hour - 19.5) / 1.5) ** 2))


async def backtest(database: str, *args: str) -> tuple[int, list[str], str]:
    proc = await asyncio.create_subprocess_exec(
        EMMA,
        "forecast",
        "backtest",
        *args,
        env={**os.environ, "DATABASE_URL": database},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode().splitlines(), err.decode()


async def _ingest_load(pool: asyncpg.Pool, edge_pk: int, series: int) -> None:
    times = [START + SLOT * i for i in range(DAYS * 96)]
    writer = IngestWriter(pool)
    await writer.start()
    try:
        cols = Columns(
            series_ids=np.full(len(times), series, dtype=np.int64),
            times_unix_us=np.array([int((t + SLOT / 2).timestamp() * 1e6) for t in times], dtype=np.int64),
            values=np.array([_load_w(t) for t in times], dtype=np.float64),
        )
        await (await writer.submit(PendingBatch(edge_pk, 1, cols)))
    finally:
        await writer.stop()


async def test_backtest_prints_the_domains_scores_per_band(db: asyncpg.Connection, migrated_url: str) -> None:
    edge, pk, _ = await new_edge(db, "backtest", time_zone="UTC")
    series = await add_series(db, pk, "load_1/ActivePower")
    pool = await asyncpg.create_pool(migrated_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        await _ingest_load(pool, pk, series)
        expected = await backtest_site(
            pool, edge.site_name, "load", START, START + dt.timedelta(days=DAYS), issue_every=dt.timedelta(hours=6)
        )
    finally:
        await pool.close()
    last_day = (START + dt.timedelta(days=DAYS - 1)).date().isoformat()
    site = str(edge.site_name)
    code, lines, err = await backtest(
        migrated_url, "--site", site, "--from", START.date().isoformat(), "--to", last_day
    )
    assert code == 0, err
    assert lines[0].startswith(f"{site}: load backtest, {expected.issues} forecasts issued")
    for band in expected.bands:
        printed = next(line for line in lines if line.startswith(f"  {band.label}: model: "))
        mae, skill = re.search(r"MAE ([\d.]+) W, .* skill ([+-][\d.]+)", printed).groups()  # type: ignore[union-attr]
        assert float(mae) == round(band.model.mae_w, 1)
        assert band.model.skill is not None and float(skill) == round(band.model.skill, 3)
    # The routine repeats every day, so the day-ahead band beats persistence.
    day_ahead = next(b for b in expected.bands if b.first_slot == 24)
    assert day_ahead.model.skill is not None and day_ahead.model.skill > 0


async def test_backtest_refuses_what_it_cannot_replay(db: asyncpg.Connection, migrated_url: str) -> None:
    edge, _, _ = await new_edge(db, "backtest-bad", time_zone="UTC")
    site = str(edge.site_name)
    for args, message in (
        (("--site", site, "--from", "2026-03-05", "--to", "2026-03-01"), "is before --from"),
        (("--site", "sites/x", "--from", "2026-03-01", "--to", "2026-03-02"), "--site"),
        (("--site", site, "--from", "2026-03-01", "--to", "2026-03-02", "--model", "pv"), "pv_system"),
        (("--site", site, "--from", "2026-03-01", "--to", "2026-03-05"), site),  # no measured load
        (("--site", "organizations/acme/sites/nowhere", "--from", "2026-03-01", "--to", "2026-03-02"), "nowhere"),
    ):
        code, lines, err = await backtest(migrated_url, *args)
        assert code == 1, (args, lines, err)
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)
    code, _, err = await backtest(migrated_url, "--site", site, "--from", "1/3/2026", "--to", "2026-03-02")
    assert code == 2 and "is not a date" in err
