"""Keeping the telemetry store in shape: partitions ahead, retention, and the rollups.

Rollups: a 15-minute bucket of an edge is recomputed from its raw rows once the bucket has closed
(plus a grace period for batches in flight), and again whenever late data marks it dirty. The hour
rollup is then recomputed from the four 15-minute rows. Claiming dirty buckets uses FOR UPDATE SKIP
LOCKED inside the transaction that writes the rollups, so several replicas can run this at once and
a crash leaves the buckets dirty for the next run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import asyncpg

from services.platform.config import IngestConfig
from services.platform.migrations import Conn

log = logging.getLogger("emma.telemetry.maintenance")

PARTITION_CHECK_INTERVAL_S = 3600.0

_CLAIM = """
DELETE FROM telemetry.rollup_dirty d
USING (SELECT edge_pk, bucket FROM telemetry.rollup_dirty
       WHERE bucket + interval '15 minutes' + make_interval(secs => $1) <= now()
       ORDER BY bucket LIMIT $2 FOR UPDATE SKIP LOCKED) c
WHERE d.edge_pk = c.edge_pk AND d.bucket = c.bucket
RETURNING d.edge_pk, d.bucket
"""

_ROLLUP_15M = """
INSERT INTO telemetry.rollup_15m AS r (series_id, bucket, min_value, max_value, sum_value, count, last_time, last_value)
SELECT s.series_id, d.bucket, min(s.value), max(s.value), sum(s.value), count(*), max(s.time),
       (array_agg(s.value ORDER BY s.time DESC))[1]
FROM unnest($1::bigint[], $2::timestamptz[]) AS d(edge_pk, bucket)
JOIN telemetry.series ser ON ser.edge_pk = d.edge_pk
JOIN telemetry.samples s ON s.series_id = ser.id AND s.time >= d.bucket AND s.time < d.bucket + interval '15 minutes'
GROUP BY s.series_id, d.bucket
ON CONFLICT (series_id, bucket) DO UPDATE SET min_value = EXCLUDED.min_value, max_value = EXCLUDED.max_value,
    sum_value = EXCLUDED.sum_value, count = EXCLUDED.count, last_time = EXCLUDED.last_time,
    last_value = EXCLUDED.last_value
"""

_ROLLUP_1H = """
INSERT INTO telemetry.rollup_1h AS r (series_id, bucket, min_value, max_value, sum_value, count, last_time, last_value)
SELECT q.series_id, h.hour, min(q.min_value), max(q.max_value), sum(q.sum_value), sum(q.count), max(q.last_time),
       (array_agg(q.last_value ORDER BY q.last_time DESC))[1]
FROM (SELECT DISTINCT edge_pk, date_trunc('hour', bucket) AS hour
      FROM unnest($1::bigint[], $2::timestamptz[]) AS d(edge_pk, bucket)) h
JOIN telemetry.series ser ON ser.edge_pk = h.edge_pk
JOIN telemetry.rollup_15m q ON q.series_id = ser.id AND q.bucket >= h.hour AND q.bucket < h.hour + interval '1 hour'
GROUP BY q.series_id, h.hour
ON CONFLICT (series_id, bucket) DO UPDATE SET min_value = EXCLUDED.min_value, max_value = EXCLUDED.max_value,
    sum_value = EXCLUDED.sum_value, count = EXCLUDED.count, last_time = EXCLUDED.last_time,
    last_value = EXCLUDED.last_value
"""


async def roll_up_closed_buckets(conn: Conn, grace_s: float, limit: int = 200) -> int:
    """Recompute up to `limit` dirty, closed 15-minute buckets; returns how many."""
    async with conn.transaction():
        claimed = await conn.fetch(_CLAIM, grace_s, limit)
        if not claimed:
            return 0
        edges = [r["edge_pk"] for r in claimed]
        buckets = [r["bucket"] for r in claimed]
        await conn.execute(_ROLLUP_15M, edges, buckets)
        await conn.execute(_ROLLUP_1H, edges, buckets)
    return len(claimed)


async def ensure_partitions(conn: Conn, today: dt.date | None = None) -> int:
    """Partitions for yesterday to three days ahead; older days are created on demand by ingest."""
    today = today or dt.datetime.now(dt.UTC).date()
    created = await conn.fetchval(
        "SELECT telemetry.ensure_partitions($1, $2)", today - dt.timedelta(days=1), today + dt.timedelta(days=3)
    )
    return int(created)


async def drop_expired_partitions(conn: Conn, retention_days: int, today: dt.date | None = None) -> int:
    """Raw samples older than the retention go, a whole day at a time; rollups stay."""
    today = today or dt.datetime.now(dt.UTC).date()
    dropped = await conn.fetchval(
        "SELECT telemetry.drop_partitions_before($1)", today - dt.timedelta(days=retention_days)
    )
    return int(dropped)


class TelemetryMaintenance:
    """Background loop: rollups every few seconds, partitions and retention every hour."""

    def __init__(self, pool: asyncpg.Pool, config: IngestConfig, *, rollups: bool, retention: bool) -> None:
        self._pool = pool
        self._config = config
        self._rollups = rollups
        self._retention = retention
        self._task: asyncio.Task[None] | None = None
        self.buckets_rolled_up = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="telemetry-maintenance")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        next_partition_check = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with self._pool.acquire() as conn:
                    if loop.time() >= next_partition_check:
                        await ensure_partitions(conn)
                        if self._retention:
                            await drop_expired_partitions(conn, self._config.retention_days)
                        next_partition_check = loop.time() + PARTITION_CHECK_INTERVAL_S
                    if self._rollups:
                        while (n := await roll_up_closed_buckets(conn, self._config.rollup_grace_s)) > 0:
                            self.buckets_rolled_up += n
            except Exception:
                log.warning("telemetry maintenance failed; retrying", exc_info=True)
            await asyncio.sleep(self._config.rollup_interval_s)
