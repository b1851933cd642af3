"""The telemetry store's TimescaleDB path (migration 0006) on a real TimescaleDB.

The same writer, rollup worker, history queries and erasure as on the plain path, against a
hypertable and continuous aggregates; the answers are checked against aggregates of the raw rows.
The PGlite server is one session: every test works through the module's one-connection pool and
never holds a connection while the writer needs it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from emma.telemetry.v1 import telemetry_pb2

from services.platform.migrations import Conn
from services.telemetry.erasure import erase_edge_telemetry
from services.telemetry.history import Bucket, plan, query_series
from services.telemetry.maintenance import (
    claim_for_refresh,
    compress_old_chunks,
    drop_expired_partitions,
    ensure_partitions,
    refresh_closed_buckets,
    roll_up,
    storage_mode,
)
from tests.support.cloud import new_edge
from tests.support.telemetry_data import add_series, ingest_samples, raw_aggregates
from tests.support.timescale import one_connection_pool

UTC = dt.UTC
MADRID = ZoneInfo("Europe/Madrid")
AGGREGATIONS = [
    (15, telemetry_pb2.AGGREGATION_AVERAGE, "avg(value)"),
    (60, telemetry_pb2.AGGREGATION_MAXIMUM, "max(value)"),
    (60, telemetry_pb2.AGGREGATION_MINIMUM, "min(value)"),
    (45, telemetry_pb2.AGGREGATION_COUNT, "count(*)::float8"),
    (120, telemetry_pb2.AGGREGATION_LAST, "(array_agg(value ORDER BY time DESC))[1]"),
    (10, telemetry_pb2.AGGREGATION_AVERAGE, "avg(value)"),  # not on the 15-minute grid: raw rows
]


@pytest.fixture(scope="module")
async def pool(timescaledb_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await one_connection_pool(timescaledb_url)
    try:
        yield p
    finally:
        await p.close()


async def _history(
    conn: Conn, sid: int, pk: int, start: dt.datetime, end: dt.datetime, width_min: int, agg: int, tz: ZoneInfo | None
) -> tuple[list[Bucket], int]:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return await query_series(conn, sid, pk, plan(start, end, dt.timedelta(minutes=width_min), tz), agg)


async def _assert_history_equals_raw(conn: Conn, sid: int, pk: int, start: dt.datetime, end: dt.datetime) -> set[int]:
    """Every aggregation over [start, end) equals the raw rows' aggregate; returns the sources used."""
    sources = set()
    for width, agg, agg_sql in AGGREGATIONS:
        buckets, source = await _history(conn, sid, pk, start, end, width, agg, None)
        sources.add(source)
        want = await raw_aggregates(conn, sid, start, end, width * 60, agg_sql)
        assert [(b.start, b.count) for b in buckets] == [(w[0], w[2]) for w in want]
        for b, w in zip(buckets, want, strict=True):
            assert b.value == pytest.approx(w[1], rel=1e-12, abs=1e-9)
    return sources


async def _refresh_all(conn: Conn) -> int:
    total = 0
    while (n := await roll_up(conn, "timescaledb", grace_s=0)) > 0:
        total += n
    return total


async def test_the_migration_chose_timescaledb_where_it_can_be_created(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        assert await storage_mode(conn) == "timescaledb"
        hypertable = await conn.fetchrow(
            """SELECT h.compression_enabled, d.time_interval FROM timescaledb_information.hypertables h
               JOIN timescaledb_information.dimensions d USING (hypertable_schema, hypertable_name)
               WHERE h.hypertable_schema = 'telemetry' AND h.hypertable_name = 'samples'"""
        )
        assert hypertable is not None
        assert hypertable["compression_enabled"] is True
        assert hypertable["time_interval"] == dt.timedelta(days=1)
        aggregates = await conn.fetch(
            """SELECT view_name, materialized_only FROM timescaledb_information.continuous_aggregates
               WHERE view_schema = 'telemetry' ORDER BY view_name"""
        )
        assert [(r["view_name"], r["materialized_only"]) for r in aggregates] == [
            ("rollup_15m", True),
            ("rollup_1h", True),
        ]
        # Chunks need no preparing: the partition function of the plain path does nothing here.
        assert await ensure_partitions(conn) == 0


async def test_rollups_from_continuous_aggregates_equal_aggregates_of_raw_rows(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        _, pk, _ = await new_edge(conn, "ts-history", time_zone="UTC")
        sid = await add_series(conn, pk, "meter/GridPower")
    start = (dt.datetime.now(UTC) - dt.timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
    end = start + dt.timedelta(days=2)
    produced = await ingest_samples(pool, pk, sid, start, count=2 * 24 * 60, step_s=60)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM telemetry.samples WHERE series_id = $1", sid) == len(produced)
        # Before any refresh every bucket is dirty: answers come from raw rows and are already right.
        assert await conn.fetchval("SELECT count(*) FROM telemetry.rollup_15m WHERE series_id = $1", sid) == 0
        assert await _assert_history_equals_raw(conn, sid, pk, start, end)

        assert await _refresh_all(conn) == 2 * 24 * 4
        assert await conn.fetchval("SELECT count(*) FROM telemetry.rollup_dirty WHERE edge_pk = $1", pk) == 0
        assert await conn.fetchval("SELECT count(*) FROM telemetry.rollup_refreshing") == 0
        assert await conn.fetchval("SELECT count(*) FROM telemetry.rollup_15m WHERE series_id = $1", sid) == 2 * 24 * 4
        assert await conn.fetchval("SELECT count(*) FROM telemetry.rollup_1h WHERE series_id = $1", sid) == 2 * 24
        sources = await _assert_history_equals_raw(conn, sid, pk, start, end)
        assert sources == {
            telemetry_pb2.HISTORY_SOURCE_ROLLUP_15_MINUTES,
            telemetry_pb2.HISTORY_SOURCE_ROLLUP_1_HOUR,
            telemetry_pb2.HISTORY_SOURCE_RAW,
        }


async def test_late_data_and_a_refresh_that_crashed_after_claiming(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        _, pk, _ = await new_edge(conn, "ts-late", time_zone="UTC")
        sid = await add_series(conn, pk, "battery_1/Soc", "%")
    hour = (dt.datetime.now(UTC) - dt.timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    await ingest_samples(pool, pk, sid, hour, count=30, step_s=60, seed=1)
    async with pool.acquire() as conn:
        await _refresh_all(conn)
        first = await conn.fetchrow("SELECT count, max_value FROM telemetry.rollup_1h WHERE series_id = $1", sid)
        assert first["count"] == 30
    # An edge back online delivers late samples for the same hour.
    late = await ingest_samples(pool, pk, sid, hour + dt.timedelta(seconds=30), count=30, step_s=60, seed=2)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM telemetry.rollup_dirty WHERE edge_pk = $1", pk) >= 1
        # The worker claims the buckets and dies before refreshing: the aggregate is stale...
        await claim_for_refresh(conn, grace_s=0)
        assert await conn.fetchval("SELECT count(*) FROM telemetry.rollup_dirty WHERE edge_pk = $1", pk) == 0
        assert await conn.fetchval("SELECT count(*) FROM telemetry.rollup_refreshing WHERE edge_pk = $1", pk) >= 1
        stale = await conn.fetchval("SELECT count FROM telemetry.rollup_1h WHERE series_id = $1", sid)
        assert stale == 30
        # ...but history treats claimed buckets as dirty and answers from raw rows.
        buckets, _ = await _history(
            conn, sid, pk, hour, hour + dt.timedelta(hours=1), 60, telemetry_pb2.AGGREGATION_COUNT, None
        )
        assert [(b.start, b.count) for b in buckets] == [(hour, 60)]
        # The next round refreshes what the crashed one had claimed.
        assert await refresh_closed_buckets(conn, grace_s=0) >= 1
        assert await conn.fetchval("SELECT count(*) FROM telemetry.rollup_refreshing") == 0
        second = await conn.fetchrow("SELECT count, max_value FROM telemetry.rollup_1h WHERE series_id = $1", sid)
        assert second["count"] == 60
        assert second["max_value"] >= max(v for _, v in late)
        buckets, source = await _history(
            conn, sid, pk, hour, hour + dt.timedelta(hours=1), 60, telemetry_pb2.AGGREGATION_COUNT, None
        )
        assert [(b.start, b.count) for b in buckets] == [(hour, 60)]
        assert source == telemetry_pb2.HISTORY_SOURCE_ROLLUP_1_HOUR


async def test_dst_days_in_madrid_have_23_and_25_hourly_buckets(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        _, pk, _ = await new_edge(conn, "ts-madrid", time_zone="Europe/Madrid")
        sid = await add_series(conn, pk, "meter/GridPower")
    # 2026's transitions: 29 March (23 h) and 25 October (25 h).
    days = ((dt.date(2026, 3, 29), 23), (dt.date(2026, 10, 25), 25))
    for day, hours in days:
        local_start = dt.datetime.combine(day, dt.time(), MADRID).astimezone(UTC)
        await ingest_samples(pool, pk, sid, local_start, count=hours * 4, step_s=900)
    async with pool.acquire() as conn:
        await _refresh_all(conn)
        for day, hours in days:
            local_start = dt.datetime.combine(day, dt.time(), MADRID).astimezone(UTC)
            local_end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), MADRID).astimezone(UTC)
            buckets, source = await _history(
                conn, sid, pk, local_start, local_end, 60, telemetry_pb2.AGGREGATION_COUNT, MADRID
            )
            assert [(b.start, b.count) for b in buckets] == [
                (local_start + dt.timedelta(hours=h), 4) for h in range(hours)
            ]
            assert source == telemetry_pb2.HISTORY_SOURCE_ROLLUP_1_HOUR
            whole_day, _ = await _history(
                conn, sid, pk, local_start, local_end, 24 * 60, telemetry_pb2.AGGREGATION_COUNT, MADRID
            )
            assert [(b.start, b.count, b.value) for b in whole_day] == [(local_start, hours * 4, hours * 4.0)]


async def _chunks(conn: Conn, before: dt.datetime) -> list[bool]:
    rows = await conn.fetch(
        """SELECT is_compressed FROM timescaledb_information.chunks
           WHERE hypertable_schema = 'telemetry' AND hypertable_name = 'samples' AND range_end <= $1
           ORDER BY range_start""",
        before,
    )
    return [r["is_compressed"] for r in rows]


async def test_compression_then_late_data_then_retention_keeps_the_rollups(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        _, pk, _ = await new_edge(conn, "ts-old", time_zone="UTC")
        sid = await add_series(conn, pk, "pv/ActivePower")
    start = dt.datetime(2025, 1, 10, tzinfo=UTC)
    end = start + dt.timedelta(days=3)
    await ingest_samples(pool, pk, sid, start, count=3 * 24 * 6, step_s=600)
    async with pool.acquire() as conn:
        await _refresh_all(conn)
        # Compression of chunks older than 7 days, as of 1 February 2025.
        assert await compress_old_chunks(conn, 7, today=dt.date(2025, 2, 1)) == 3
        assert await _chunks(conn, end) == [True, True, True]
        assert await compress_old_chunks(conn, 7, today=dt.date(2025, 2, 1)) == 0
        assert await _assert_history_equals_raw(conn, sid, pk, start, end)
    # Late data lands in a compressed chunk and is rolled up like any other.
    await ingest_samples(pool, pk, sid, start + dt.timedelta(seconds=300), count=6, step_s=600, seed=3)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM telemetry.samples WHERE series_id = $1", sid) == 3 * 24 * 6 + 6
        await _refresh_all(conn)
        assert (
            await conn.fetchval(
                "SELECT count FROM telemetry.rollup_1h WHERE series_id = $1 AND bucket = $2", sid, start
            )
            == 12
        )
        assert await _assert_history_equals_raw(conn, sid, pk, start, end)
        hourly = await conn.fetch("SELECT * FROM telemetry.rollup_1h WHERE series_id = $1 ORDER BY bucket", sid)
        # Retention of 30 days as of 15 February 2025 drops the three raw chunks; the rollups stay.
        assert await drop_expired_partitions(conn, 30, today=dt.date(2025, 2, 15)) == 3
        assert await conn.fetchval("SELECT count(*) FROM telemetry.samples WHERE series_id = $1", sid) == 0
        assert await conn.fetch("SELECT * FROM telemetry.rollup_1h WHERE series_id = $1 ORDER BY bucket", sid) == hourly
        assert len(hourly) == 3 * 24
        # The newer data of the other tests is untouched.
        assert await conn.fetchval("SELECT count(*) FROM telemetry.samples") > 0


async def test_erasing_an_edge_deletes_raw_rows_and_materialized_rollups(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        _, pk, _ = await new_edge(conn, "ts-erase", time_zone="UTC")
        sid = await add_series(conn, pk, "meter/GridPower")
        _, keep_pk, _ = await new_edge(conn, "ts-keep", time_zone="UTC")
        keep_sid = await add_series(conn, keep_pk, "meter/GridPower")
    start = dt.datetime(2025, 6, 1, tzinfo=UTC)
    await ingest_samples(pool, pk, sid, start, count=24 * 4, step_s=900)
    await ingest_samples(pool, keep_pk, keep_sid, start, count=24 * 4, step_s=900)
    async with pool.acquire() as conn:
        await _refresh_all(conn)
        await compress_old_chunks(conn, 7, today=dt.date(2025, 7, 1))  # erasure reaches compressed rows too
        async with conn.transaction():
            counts = await erase_edge_telemetry(conn, [pk])
        assert counts["telemetry.samples"] == 24 * 4
        assert counts["telemetry.rollup_15m"] == 24 * 4
        assert counts["telemetry.rollup_1h"] == 24
        for table in ("telemetry.samples", "telemetry.rollup_15m", "telemetry.rollup_1h"):
            assert await conn.fetchval(f"SELECT count(*) FROM {table} WHERE series_id = $1", sid) == 0
            assert await conn.fetchval(f"SELECT count(*) FROM {table} WHERE series_id = $1", keep_sid) > 0
