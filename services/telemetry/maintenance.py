"""Keeping the telemetry store in shape: partitions ahead, retention, and the rollups.

Rollups: a 15-minute bucket of an edge is recomputed from its raw rows once the bucket has closed
(plus a grace period for batches in flight), and again whenever late data marks it dirty. The hour
rollup is then recomputed from the four 15-minute rows. Claiming dirty buckets uses FOR UPDATE SKIP
LOCKED inside the transaction that writes the rollups, so several replicas can run this at once and
a crash leaves the buckets dirty for the next run.

On the TimescaleDB path (migration 0006) the rollups are continuous aggregates. A refresh cannot run
inside a transaction, so closed dirty buckets first move to rollup_refreshing (history reads them
from raw rows meanwhile), the aggregates are refreshed over exactly those buckets, and the rows leave
rollup_refreshing afterwards. Late data that arrives during a refresh marks its bucket dirty again,
so it is refreshed in the next round; a crash leaves rows in rollup_refreshing, which the next round
refreshes first. One replica refreshes at a time (an advisory lock).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import asyncpg

from core.tasks import stop_task
from services.platform.config import IngestConfig
from services.platform.db import log_failed_pass
from services.platform.migrations import Conn
from services.telemetry.buckets import ROLLUP_BUCKET, ROLLUP_BUCKET_SQL

log = logging.getLogger("emma.telemetry.maintenance")

PARTITION_CHECK_INTERVAL_S = 3600.0

_CLAIM = f"""
DELETE FROM telemetry.rollup_dirty d
USING (SELECT edge_pk, bucket FROM telemetry.rollup_dirty
       WHERE bucket + {ROLLUP_BUCKET_SQL} + make_interval(secs => $1) <= now()
       ORDER BY bucket LIMIT $2 FOR UPDATE SKIP LOCKED) c
WHERE d.edge_pk = c.edge_pk AND d.bucket = c.bucket
RETURNING d.edge_pk, d.bucket
"""

# Recomputing a clean bucket from raw rows gives the same row again, so a run of claimed buckets is
# recomputed whole for every series of the edges involved: one index range scan per series instead
# of one probe per (series, bucket).
_ROLLUP_15M = f"""
INSERT INTO telemetry.rollup_15m AS r
       (series_id, bucket, min_value, max_value, sum_value, count, last_time, last_value)
SELECT series_id, date_bin({ROLLUP_BUCKET_SQL}, time, timestamptz 'epoch'), min(value), max(value), sum(value),
       count(*), max(time), (array_agg(value ORDER BY time DESC))[1]
FROM telemetry.samples
WHERE series_id = ANY($1::bigint[]) AND time >= $2::timestamptz AND time < $3::timestamptz
GROUP BY 1, 2
ON CONFLICT (series_id, bucket) DO UPDATE SET min_value = EXCLUDED.min_value, max_value = EXCLUDED.max_value,
    sum_value = EXCLUDED.sum_value, count = EXCLUDED.count, last_time = EXCLUDED.last_time,
    last_value = EXCLUDED.last_value
"""

_ROLLUP_1H = """
INSERT INTO telemetry.rollup_1h AS r
       (series_id, bucket, min_value, max_value, sum_value, count, last_time, last_value)
SELECT series_id, date_bin('1 hour', bucket, timestamptz 'epoch'), min(min_value), max(max_value), sum(sum_value),
       sum(count), max(last_time), (array_agg(last_value ORDER BY last_time DESC))[1]
FROM telemetry.rollup_15m
WHERE series_id = ANY($1::bigint[]) AND bucket >= $2::timestamptz AND bucket < $3::timestamptz
GROUP BY 1, 2
ON CONFLICT (series_id, bucket) DO UPDATE SET min_value = EXCLUDED.min_value, max_value = EXCLUDED.max_value,
    sum_value = EXCLUDED.sum_value, count = EXCLUDED.count, last_time = EXCLUDED.last_time,
    last_value = EXCLUDED.last_value
"""

# Claims closed dirty buckets for a continuous-aggregate refresh (TimescaleDB path).
_MOVE_TO_REFRESHING = f"""
WITH moved AS ({_CLAIM})
INSERT INTO telemetry.rollup_refreshing SELECT edge_pk, bucket FROM moved ON CONFLICT DO NOTHING
"""

_REFRESH = "CALL refresh_continuous_aggregate($1::regclass, $2::timestamptz, $3::timestamptz)"

# "TELE" in ASCII: one replica refreshes the continuous aggregates at a time.
REFRESH_LOCK_KEY = 0x54454C45

HOUR = dt.timedelta(hours=1)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _runs(buckets: list[dt.datetime]) -> list[tuple[dt.datetime, dt.datetime]]:
    """Sorted bucket starts -> [start, end) ranges, split where buckets are more than an hour apart."""
    runs: list[tuple[dt.datetime, dt.datetime]] = []
    for b in sorted(set(buckets)):
        if runs and b - runs[-1][1] <= HOUR:
            runs[-1] = (runs[-1][0], b + ROLLUP_BUCKET)
        else:
            runs.append((b, b + ROLLUP_BUCKET))
    return runs


def _floor_hour(t: dt.datetime) -> dt.datetime:
    return EPOCH + ((t - EPOCH) // HOUR) * HOUR


def _ceil_hour(t: dt.datetime) -> dt.datetime:
    return _floor_hour(t - dt.timedelta(microseconds=1)) + HOUR


async def roll_up_closed_buckets(conn: Conn, grace_s: float, limit: int = 500) -> int:
    """Recompute up to `limit` dirty, closed 15-minute buckets (and their hours); returns how many."""
    async with conn.transaction():
        claimed = await conn.fetch(_CLAIM, grace_s, limit)
        if not claimed:
            return 0
        edges = sorted({r["edge_pk"] for r in claimed})
        series = [
            r["id"]
            for r in await conn.fetch(
                "SELECT id FROM telemetry.series WHERE edge_pk = ANY($1::bigint[]) ORDER BY id", edges
            )
        ]
        for lo, hi in _runs([r["bucket"] for r in claimed]):
            await conn.execute(_ROLLUP_15M, series, lo, hi)
            await conn.execute(_ROLLUP_1H, series, _floor_hour(lo), _ceil_hour(hi))
    return len(claimed)


async def claim_for_refresh(conn: Conn, grace_s: float, limit: int = 500) -> None:
    """TimescaleDB path: move closed dirty buckets to rollup_refreshing (history keeps reading them raw)."""
    await conn.execute(_MOVE_TO_REFRESHING, grace_s, limit)


async def refresh_closed_buckets(conn: Conn, grace_s: float, limit: int = 500) -> int:
    """TimescaleDB path: refresh the continuous aggregates over closed dirty buckets; returns how many.

    Buckets left in rollup_refreshing by a refresh that crashed are refreshed first, with the new ones.
    """
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", REFRESH_LOCK_KEY):
        return 0  # another replica is refreshing
    try:
        await claim_for_refresh(conn, grace_s, limit)
        claimed = await conn.fetch("SELECT edge_pk, bucket FROM telemetry.rollup_refreshing ORDER BY bucket")
        if not claimed:
            return 0
        for lo, hi in _runs([r["bucket"] for r in claimed]):
            await conn.execute(_REFRESH, "telemetry.rollup_15m", lo, hi)
            await conn.execute(_REFRESH, "telemetry.rollup_1h", _floor_hour(lo), _ceil_hour(hi))
        await conn.execute(
            """DELETE FROM telemetry.rollup_refreshing r
               USING unnest($1::bigint[], $2::timestamptz[]) AS c(edge_pk, bucket)
               WHERE r.edge_pk = c.edge_pk AND r.bucket = c.bucket""",
            [r["edge_pk"] for r in claimed],
            [r["bucket"] for r in claimed],
        )
        return len(claimed)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", REFRESH_LOCK_KEY)


async def storage_mode(conn: Conn) -> str:
    """'partitioned' or 'timescaledb': which path migration 0006 chose for this database."""
    return str(await conn.fetchval("SELECT mode FROM telemetry.storage_info"))


async def roll_up(conn: Conn, mode: str, grace_s: float) -> int:
    """One pass of the rollup worker for this storage path; returns the buckets it rolled up."""
    if mode == "timescaledb":
        return await refresh_closed_buckets(conn, grace_s)
    return await roll_up_closed_buckets(conn, grace_s)


async def compress_old_chunks(conn: Conn, compress_after_days: int, today: dt.date | None = None) -> int:
    """TimescaleDB path: compress raw chunks older than the setting; the plain path has none."""
    today = today or dt.datetime.now(dt.UTC).date()
    compressed = await conn.fetchval(
        "SELECT telemetry.compress_before($1)", today - dt.timedelta(days=compress_after_days)
    )
    return int(compressed)


async def create_partitions(conn: Conn, first: dt.date, last: dt.date) -> int:
    """The daily partitions of [first, last] that do not exist yet (none on TimescaleDB); returns how many."""
    created = await conn.fetchval("SELECT telemetry.ensure_partitions($1, $2)", first, last)
    return int(created)


async def ensure_partitions(conn: Conn, today: dt.date | None = None) -> int:
    """Partitions for yesterday to three days ahead; older days are created on demand by ingest."""
    today = today or dt.datetime.now(dt.UTC).date()
    return await create_partitions(conn, today - dt.timedelta(days=1), today + dt.timedelta(days=3))


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
        await stop_task(self._task)

    async def _run(self) -> None:
        next_partition_check = 0.0
        loop = asyncio.get_running_loop()
        mode: str | None = None
        while True:
            try:
                async with self._pool.acquire() as conn:
                    if mode is None:
                        mode = await storage_mode(conn)
                        log.info("telemetry store: %s path", mode)
                    if loop.time() >= next_partition_check:
                        await ensure_partitions(conn)
                        if self._retention:
                            await drop_expired_partitions(conn, self._config.retention_days)
                            await compress_old_chunks(conn, self._config.compress_after_days)
                        next_partition_check = loop.time() + PARTITION_CHECK_INTERVAL_S
                    if self._rollups:
                        while (n := await roll_up(conn, mode, self._config.rollup_grace_s)) > 0:
                            self.buckets_rolled_up += n
            except Exception:
                log_failed_pass(log, "telemetry maintenance failed")
            await asyncio.sleep(self._config.rollup_interval_s)
