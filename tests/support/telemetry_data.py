"""Telemetry test data stored the way production stores it: through the real ingest writer."""

from __future__ import annotations

import asyncio
import datetime as dt
import random

import asyncpg
import numpy as np

from services.edgelink.writer import IngestWriter, PendingBatch
from services.platform.migrations import Conn
from services.telemetry import Columns


async def add_series(db: Conn, edge_pk: int, channel: str, unit: str = "W") -> int:
    await db.execute(
        "INSERT INTO telemetry.series (edge_pk, channel, unit) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        edge_pk,
        channel,
        unit,
    )
    sql = "SELECT id FROM telemetry.series WHERE edge_pk = $1 AND channel = $2"
    return int(await db.fetchval(sql, edge_pk, channel))


async def ingest_samples(
    pool: asyncpg.Pool,
    edge_pk: int,
    series_id: int,
    start: dt.datetime,
    count: int,
    step_s: float,
    seed: int = 1,
    chunk: int = 5000,
) -> list[tuple[dt.datetime, float]]:
    """Store `count` samples through the real ingest writer (ledger, COPY, latest, rollup dirt)."""
    rng = random.Random(seed)
    times = [start + dt.timedelta(seconds=i * step_s) for i in range(count)]
    values = [round(rng.uniform(-5000, 5000), 3) for _ in times]
    base = int(
        await pool.fetchval(
            "SELECT coalesce(max(batch_seq), 0) FROM telemetry.batch_ledger WHERE edge_pk = $1", edge_pk
        )
    )
    writer = IngestWriter(pool)
    await writer.start()
    try:
        futures = []
        for n, i in enumerate(range(0, count, chunk)):
            cols = Columns(
                series_ids=np.full(len(times[i : i + chunk]), series_id, dtype=np.int64),
                times_unix_us=np.array([int(t.timestamp() * 1_000_000) for t in times[i : i + chunk]], dtype=np.int64),
                values=np.array(values[i : i + chunk], dtype=np.float64),
            )
            futures.append(await writer.submit(PendingBatch(edge_pk, base + n + 1, cols)))
        await asyncio.gather(*futures)
    finally:
        await writer.stop()
    return list(zip(times, values, strict=True))


async def raw_aggregates(
    db: Conn, series_id: int, start: dt.datetime, end: dt.datetime, width_s: int, agg_sql: str
) -> list[tuple[dt.datetime, float, int]]:
    """(bucket, aggregate, count) straight from the raw rows: what history answers must equal."""
    rows = await db.fetch(
        f"""SELECT date_bin(make_interval(secs => $4), time, timestamptz 'epoch') AS b, {agg_sql} AS v,
                   count(*) AS n
            FROM telemetry.samples WHERE series_id = $1 AND time >= $2 AND time < $3 GROUP BY 1 ORDER BY 1""",
        series_id,
        start,
        end,
        width_s,
    )
    return [(r["b"], float(r["v"]), int(r["n"])) for r in rows]
