"""The ingest writer on its own, against the real database: exactly once, latest values, rollup dirt, lanes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import numpy as np
import pytest
from emma.edge.v1 import edge_link_pb2

from services.edgelink.writer import ONE_STATEMENT_POINTS, IngestWriter, PendingBatch
from services.telemetry import ROLLUP_BUCKET_US, Columns
from tests.support.cloud import new_edge

STORED = int(edge_link_pb2.TELEMETRY_ACK_RESULT_STORED)
DUPLICATE = int(edge_link_pb2.TELEMETRY_ACK_RESULT_DUPLICATE)


@pytest.fixture
async def pool(migrated_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(migrated_url, min_size=1, max_size=4, server_settings={"TimeZone": "UTC"})
    assert pool is not None
    yield pool
    await pool.close()


async def _series(db: asyncpg.Connection, edge_pk: int, channels: list[str]) -> list[int]:
    await db.execute(
        "INSERT INTO telemetry.series (edge_pk, channel) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING",
        edge_pk,
        channels,
    )
    rows = await db.fetch("SELECT id, channel FROM telemetry.series WHERE edge_pk = $1", edge_pk)
    ids = {r["channel"]: r["id"] for r in rows}
    return [ids[c] for c in channels]


def _batch(edge_pk: int, seq: int, points: list[tuple[int, int, float]]) -> PendingBatch:
    """points: (series_id, time in µs, value)."""
    return PendingBatch(
        edge_pk,
        seq,
        Columns(
            series_ids=np.array([p[0] for p in points], dtype=np.int64),
            times_unix_us=np.array([p[1] for p in points], dtype=np.int64),
            values=np.array([p[2] for p in points], dtype=np.float64),
        ),
    )


async def _latest(db: asyncpg.Connection, series_id: int) -> tuple[int, float] | None:
    row = await db.fetchrow(
        "SELECT (extract(epoch FROM time) * 1000000)::bigint AS t, value FROM telemetry.latest WHERE series_id = $1",
        series_id,
    )
    return None if row is None else (int(row["t"]), float(row["value"]))


async def _samples(db: asyncpg.Connection, series_id: int) -> int:
    return int(await db.fetchval("SELECT count(*) FROM telemetry.samples WHERE series_id = $1", series_id))


async def _dirty_buckets(db: asyncpg.Connection, edge_pk: int) -> set[int]:
    rows = await db.fetch(
        "SELECT (extract(epoch FROM bucket))::bigint / 900 AS b FROM telemetry.rollup_dirty WHERE edge_pk = $1",
        edge_pk,
    )
    return {int(r["b"]) for r in rows}


# Both ways of storing a group: one statement that is its own transaction (small groups without
# events), and the recording statement with a COPY in a transaction (0: every group).
@pytest.mark.parametrize("one_statement_points", [ONE_STATEMENT_POINTS, 0], ids=["one-statement", "copy"])
async def test_latest_never_goes_back_and_resent_batches_touch_nothing(
    db: asyncpg.Connection, pool: asyncpg.Pool, one_statement_points: int
) -> None:
    _, edge_pk, _ = await new_edge(db, f"writer-latest-{one_statement_points}")
    a, b = await _series(db, edge_pk, ["bat/Soc", "bat/P"])
    # About an hour ago, at the start of a 15-minute bucket: the offsets below stay in known buckets.
    t0 = (int(time.time() * 1e6) - 3_600_000_000) // ROLLUP_BUCKET_US * ROLLUP_BUCKET_US
    s = 1_000_000

    writer = IngestWriter(pool, one_statement_points=one_statement_points)
    await writer.start()
    try:
        first = await writer.submit(_batch(edge_pk, 1, [(a, t0 + 10 * s, 1.0), (b, t0 + 10 * s, 2.0)]))
        assert await first == STORED
        assert await _latest(db, a) == (t0 + 10 * s, 1.0)

        # An older sample arrives later (a batch from the edge's outbox): stored, latest unchanged.
        older = await writer.submit(_batch(edge_pk, 2, [(a, t0 + 5 * s, 9.0)]))
        assert await older == STORED
        assert await _samples(db, a) == 2
        assert await _latest(db, a) == (t0 + 10 * s, 1.0)

        # A resend of batch 1 with other content (newer, in another bucket) is a duplicate: no samples,
        # no latest value, no rollup dirt.
        dirty_before = await _dirty_buckets(db, edge_pk)
        assert dirty_before == {t0 // ROLLUP_BUCKET_US}
        later_bucket = t0 + ROLLUP_BUCKET_US + 10 * s
        resent = await writer.submit(_batch(edge_pk, 1, [(a, later_bucket, 7.0), (b, later_bucket, 7.0)]))
        assert await resent == DUPLICATE
        assert await _samples(db, a) == 2
        assert await _latest(db, a) == (t0 + 10 * s, 1.0)
        assert await _latest(db, b) == (t0 + 10 * s, 2.0)
        assert await _dirty_buckets(db, edge_pk) == dirty_before

        # Several batches in one transaction (submitted without waiting), newest first, with a
        # duplicate among them: the newest new sample wins; within a batch, the last point of equal
        # times wins.
        futures = [
            await writer.submit(_batch(edge_pk, 4, [(a, t0 + 30 * s, 4.0), (b, t0 + 40 * s, 5.0)])),
            await writer.submit(_batch(edge_pk, 3, [(a, t0 + 20 * s, 3.0), (b, t0 + 40 * s, 6.0)])),
            await writer.submit(_batch(edge_pk, 2, [(a, t0 + 50 * s, 8.0)])),  # duplicate: ignored
            await writer.submit(_batch(edge_pk, 5, [(b, t0 + 45 * s, 10.0), (b, t0 + 45 * s, 11.0)])),
            await writer.submit(_batch(edge_pk, 6, [(a, later_bucket, 12.0)])),
        ]
        assert await asyncio.gather(*futures) == [STORED, STORED, DUPLICATE, STORED, STORED]
        assert await _latest(db, a) == (later_bucket, 12.0)
        assert await _latest(db, b) == (t0 + 45 * s, 11.0)
        assert await _dirty_buckets(db, edge_pk) == {t0 // ROLLUP_BUCKET_US, later_bucket // ROLLUP_BUCKET_US}
    finally:
        await writer.stop()

    # A new writer (a restarted replica) starts from what is stored: latest values are in the
    # database, committed with their samples, and an older batch still does not replace them.
    writer = IngestWriter(pool, lanes=3, one_statement_points=one_statement_points)
    await writer.start()
    try:
        assert await (await writer.submit(_batch(edge_pk, 7, [(a, t0 + 1 * s, -1.0)]))) == STORED
        assert await (await writer.submit(_batch(edge_pk, 6, [(a, t0 + 2 * s, -2.0)]))) == DUPLICATE
    finally:
        await writer.stop()
    assert await _latest(db, a) == (later_bucket, 12.0)
    assert await _samples(db, a) == 6
    stored = await db.fetch(
        "SELECT batch_seq, point_count FROM telemetry.batch_ledger WHERE edge_pk = $1 ORDER BY batch_seq", edge_pk
    )
    assert [(r["batch_seq"], r["point_count"]) for r in stored] == [
        (1, 2),
        (2, 1),
        (3, 2),
        (4, 2),
        (5, 2),
        (6, 1),
        (7, 1),
    ]


async def test_lanes_store_every_edge_once_in_order(db: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    edges = [await new_edge(db, f"writer-lane-{n}") for n in range(5)]
    series = {pk: await _series(db, pk, ["m/E"]) for _, pk, _ in edges}
    t0 = int(time.time() * 1e6) - 600_000_000
    writer = IngestWriter(pool, lanes=2, queue_batches=8)
    await writer.start()
    try:
        futures: dict[int, list[asyncio.Future[int]]] = {pk: [] for pk in series}
        for seq in range(1, 21):
            for pk, (sid,) in series.items():
                futures[pk].append(await writer.submit(_batch(pk, seq, [(sid, t0 + seq * 1_000_000, float(seq))])))
        for pk, fs in futures.items():
            assert await asyncio.gather(*fs) == [STORED] * 20, pk
    finally:
        await writer.stop()
    for pk, (sid,) in series.items():
        assert await _samples(db, sid) == 20
        assert await _latest(db, sid) == (t0 + 20 * 1_000_000, 20.0)
        # One edge's batches commit in arrival order: ledger rows of later batches never commit first.
        received = await db.fetch(
            "SELECT batch_seq FROM telemetry.batch_ledger WHERE edge_pk = $1 ORDER BY received_time, batch_seq", pk
        )
        assert [r["batch_seq"] for r in received] == list(range(1, 21))
