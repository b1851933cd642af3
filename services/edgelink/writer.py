"""The ingest writer: group commit of telemetry batches from every stream of this replica.

Streams submit validated batches and await their result. The writer has a few lanes (2 by
default), each a bounded queue drained by one task; an edge always uses the same lane (edge_pk
modulo the lane count), so one edge's batches are committed in the order they arrived, one
transaction after the other, exactly as with a single lane, and the Welcome's "last stored
batch_seq" keeps its meaning. Lanes never touch the same rows (ledger, latest and rollup dirt are
all per edge or per series of an edge), so their transactions run side by side without lock
waits: a slow commit delays only its lane, and PostgreSQL works on two transactions at a time.

In a lane, every batch waiting when a transaction starts goes into that transaction (up to a point
limit), so under load many streams share one commit. In the transaction, one statement inserts the
ledger rows (edge, batch_seq) with ON CONFLICT DO NOTHING, which tells new batches from resent ones,
and, for the new ones only, upserts latest values and marks rollup dirt; then one binary COPY
writes the new batches' samples, and their events follow. Results (STORED or DUPLICATE) are
released only after COMMIT, so an ack always means stored.

A failing transaction is retried with backoff while the batches stay queued: a restarting database
delays acks, it does not lose data, and the bounded queue stops the streams from reading meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt
from emma.edge.v1 import edge_link_pb2

from services.edgelink.batches import Columns
from services.edgelink.copy_binary import samples_copy_payload

log = logging.getLogger("emma.ingest")

ROLLUP_BUCKET_US = 15 * 60 * 1_000_000

# SQLSTATE classes worth retrying: connection exceptions, insufficient resources, operator
# intervention (shutdown, restart), serialization failures and deadlocks.
_TRANSIENT_PREFIXES = ("08", "53", "57", "40")


def is_transient(exc: BaseException) -> bool:
    # InternalClientError: a connection whose protocol state broke when the server went away mid
    # operation (seen during a PostgreSQL restart mid-COPY); the writer drops that connection.
    if isinstance(
        exc, (OSError, ConnectionError, asyncpg.InterfaceError, asyncpg.InternalClientError, asyncio.TimeoutError)
    ):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        code = getattr(exc, "sqlstate", "") or ""
        return code.startswith(_TRANSIENT_PREFIXES)
    return False


@dataclass
class PendingBatch:
    edge_pk: int
    batch_seq: int
    columns: Columns
    events: Sequence[edge_link_pb2.EdgeEvent] = ()
    result: asyncio.Future[int] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class WriterStats:
    batches_stored: int = 0
    batches_duplicate: int = 0
    points_stored: int = 0
    transactions: int = 0
    retries: int = 0
    transaction_seconds: float = 0.0
    slowest_transaction_s: float = 0.0


# Two transactions in flight: enough to keep PostgreSQL busy while the other lane waits for a
# round trip or a commit, few enough that each lane still groups many batches per commit.
DEFAULT_LANES = 2


class IngestWriter:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        queue_batches: int = 4096,
        max_group_points: int = 200_000,
        lanes: int = DEFAULT_LANES,
    ) -> None:
        if lanes < 1:
            raise ValueError("lanes must be 1 or more")
        self._pool = pool
        per_lane = max(1, queue_batches // lanes)
        self._queues: list[asyncio.Queue[PendingBatch]] = [asyncio.Queue(maxsize=per_lane) for _ in range(lanes)]
        self._max_group_points = max_group_points
        self._tasks: list[asyncio.Task[None]] = []
        self.stats = WriterStats()

    async def start(self, pool: asyncpg.Pool | None = None) -> None:
        """Start the lanes, on `pool` if given (the service gives the writer connections of its own)."""
        if pool is not None:
            self._pool = pool
        self._tasks = [
            asyncio.create_task(self._run(queue), name=f"ingest-writer-{n}") for n, queue in enumerate(self._queues)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def submit(self, batch: PendingBatch) -> asyncio.Future[int]:
        """Queue a batch in its edge's lane (waits while the lane is full: back-pressure); returns its result."""
        await self._queues[batch.edge_pk % len(self._queues)].put(batch)
        return batch.result

    @property
    def queue_depth(self) -> int:
        return sum(q.qsize() for q in self._queues)

    async def _run(self, queue: asyncio.Queue[PendingBatch]) -> None:
        while True:
            group = [await queue.get()]
            points = group[0].columns.size
            while not queue.empty() and points < self._max_group_points:
                item = queue.get_nowait()
                group.append(item)
                points += item.columns.size
            await self._write_with_retry(group)

    async def _write_with_retry(self, group: list[PendingBatch]) -> None:
        delay = 0.05
        while True:
            try:
                results = await self._write(group)
            except asyncpg.CheckViolationError as exc:
                if "no partition" not in str(exc) or not await self._add_partitions(group):
                    raise
                continue
            except Exception as exc:
                if is_transient(exc):
                    self.stats.retries += 1
                    log.warning("ingest transaction failed (%s); retrying in %.2f s", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                if len(group) > 1:
                    # Not transient: find the batch that causes it, store the others.
                    for item in group:
                        await self._write_with_retry([item])
                    return
                log.exception("batch %s of edge %s cannot be stored", group[0].batch_seq, group[0].edge_pk)
                if not group[0].result.done():
                    group[0].result.set_exception(exc)
                return
            for item, result in zip(group, results, strict=True):
                if not item.result.done():
                    item.result.set_result(result)
            return

    async def _add_partitions(self, group: list[PendingBatch]) -> bool:
        """Create the daily partitions a group needs (old data from an edge that was offline for days)."""
        times = [
            t
            for item in group
            for t in (item.columns.times_unix_us.min(), item.columns.times_unix_us.max())
            if item.columns.size
        ]
        if not times:
            return False
        first = dt.datetime.fromtimestamp(min(times) / 1e6, dt.UTC).date()
        last = dt.datetime.fromtimestamp(max(times) / 1e6, dt.UTC).date()
        async with self._pool.acquire() as conn:
            created = await conn.fetchval("SELECT telemetry.ensure_partitions($1, $2)", first, last)
        log.info("created %s partition(s) for %s..%s on demand", created, first, last)
        return True

    async def _write(self, group: list[PendingBatch]) -> list[int]:
        stored = int(edge_link_pb2.TELEMETRY_ACK_RESULT_STORED)
        duplicate = int(edge_link_pb2.TELEMETRY_ACK_RESULT_DUPLICATE)
        # The same batch twice in one group (a resend that overtook its ack): the first one counts.
        first: dict[tuple[int, int], int] = {}
        for i, item in enumerate(group):
            first.setdefault((item.edge_pk, item.batch_seq), i)
        unique = sorted(first.items())  # sorted: every transaction locks ledger rows in the same order

        items = [group[i] for _, i in unique]
        rows = _GroupRows.of(items)

        started = time.perf_counter()
        async with self._pool.acquire() as conn:
            try:
                async with conn.transaction():
                    new_keys = await self._record_group(conn, items, rows)
                    fresh = [k for k, item in enumerate(items) if (item.edge_pk, item.batch_seq) in new_keys]
                    if fresh:
                        await self._copy_samples(conn, rows, fresh, len(items))
                        await self._store_events(conn, [items[k] for k in fresh])
            except asyncpg.InternalClientError:
                conn.terminate()  # its protocol state is unknown: the pool must not hand it out again
                raise
        took = time.perf_counter() - started
        self.stats.transactions += 1
        self.stats.transaction_seconds += took
        self.stats.slowest_transaction_s = max(self.stats.slowest_transaction_s, took)

        results: list[int] = []
        for i, item in enumerate(group):
            key = (item.edge_pk, item.batch_seq)
            is_new = key in new_keys and first[key] == i
            results.append(stored if is_new else duplicate)
            if is_new:
                self.stats.batches_stored += 1
                self.stats.points_stored += item.columns.size
            else:
                self.stats.batches_duplicate += 1
        return results

    @staticmethod
    async def _record_group(conn: Any, items: list[PendingBatch], rows: _GroupRows) -> set[tuple[int, int]]:
        """One statement: ledger rows, then latest values and rollup dirt of the batches that are new.

        The ledger insert decides which batches are new (ON CONFLICT DO NOTHING RETURNING); the
        latest-value upsert and the dirty-bucket insert read that decision in the same statement, so a
        resent batch touches neither. One statement instead of three saves two round trips per
        transaction, and every round trip also waits for this process's event loop, which is busy
        with the streams' messages: under 1,000 streams that wait, not PostgreSQL, was most of a
        transaction's tail.
        """

        def bound(item: PendingBatch, pick: Any) -> int | None:
            t = item.columns.times_unix_us
            return int(pick(t)) if len(t) else None

        found = await conn.fetch(
            _RECORD_GROUP_SQL,
            [i.edge_pk for i in items],
            [i.batch_seq for i in items],
            [i.columns.size for i in items],
            [bound(i, np.min) for i in items],
            [bound(i, np.max) for i in items],
            rows.latest_batch.tolist(),
            rows.latest_series.tolist(),
            rows.latest_time.tolist(),
            rows.latest_value.tolist(),
            rows.dirty_batch.tolist(),
            rows.dirty_bucket.tolist(),
        )
        return {(r["edge_pk"], r["batch_seq"]) for r in found}

    @staticmethod
    async def _copy_samples(conn: Any, rows: _GroupRows, fresh: list[int], batches: int) -> None:
        """One binary COPY of the new batches' samples."""
        if len(fresh) == batches:
            sids, times, values = rows.series, rows.times, rows.values
        else:
            keep = np.isin(rows.batch, np.asarray(fresh, dtype=np.int64))
            sids, times, values = rows.series[keep], rows.times[keep], rows.values[keep]
        if len(sids) == 0:
            return
        await conn.copy_to_table(
            "samples",
            schema_name="telemetry",
            columns=["series_id", "time", "value"],
            source=_one_chunk(samples_copy_payload(sids, times, values)),
            format="binary",
        )

    @staticmethod
    async def _store_events(conn: Any, items: list[PendingBatch]) -> None:
        rows = []
        for item in items:
            for ev in item.events:
                kind = edge_link_pb2.EdgeEventKind.Name(ev.kind).removeprefix("EDGE_EVENT_KIND_")
                severity = "warning" if ev.kind == edge_link_pb2.EDGE_EVENT_KIND_TELEMETRY_GAP else "info"
                details = json.dumps(
                    {
                        "first_batch_seq": ev.first_batch_seq,
                        "last_batch_seq": ev.last_batch_seq,
                        "device_id": ev.device_id,
                        "end_time_unix_s": ev.end_time.seconds + ev.end_time.nanos / 1e9,
                    }
                )
                stamp = ev.event_time
                event_time = stamp.seconds + stamp.nanos / 1e9 if ev.HasField("event_time") else time.time()
                rows.append((item.edge_pk, event_time, severity, kind, ev.message, details))
        if rows:
            await conn.executemany(
                """INSERT INTO app.edge_events (edge_pk, event_time, severity, kind, message, details)
                   VALUES ($1, to_timestamp($2), $3, $4, $5, $6::jsonb)""",
                rows,
            )


@dataclass
class _GroupRows:
    """A transaction's points as one set of columns, with what the recording statement needs.

    `batch` is each point's batch (0-based index into the transaction's unique batches); the latest
    candidates are, per batch and series, the point with the largest time (the last one on ties);
    the dirty buckets are the distinct (batch, 15-minute bucket) pairs. The statement keeps only
    those of new batches.
    """

    batch: npt.NDArray[np.int64]
    series: npt.NDArray[np.int64]
    times: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    latest_batch: npt.NDArray[np.int64]
    latest_series: npt.NDArray[np.int64]
    latest_time: npt.NDArray[np.int64]
    latest_value: npt.NDArray[np.float64]
    dirty_batch: npt.NDArray[np.int64]
    dirty_bucket: npt.NDArray[np.int64]

    @classmethod
    def of(cls, items: list[PendingBatch]) -> _GroupRows:
        sizes = np.fromiter((i.columns.size for i in items), dtype=np.int64, count=len(items))
        batch = np.repeat(np.arange(len(items), dtype=np.int64), sizes)
        series = np.concatenate([i.columns.series_ids for i in items]).astype(np.int64, copy=False)
        times = np.concatenate([i.columns.times_unix_us for i in items]).astype(np.int64, copy=False)
        values = np.concatenate([i.columns.values for i in items]).astype(np.float64, copy=False)
        if len(series):
            # Sorted by batch, then series, then time (lexsort is stable: ties keep batch order).
            order = np.lexsort((times, series, batch))
            b, s = batch[order], series[order]
            last = order[np.r_[(b[1:] != b[:-1]) | (s[1:] != s[:-1]), True]]
            # Distinct (batch, bucket) pairs, as one int64 key when the buckets' span allows it (it
            # does for anything ingest accepts: the retention is a few thousand buckets).
            buckets = times // ROLLUP_BUCKET_US
            low = int(buckets.min())
            span = int(buckets.max()) - low + 1
            if span < 1 << 24:
                keys = np.unique(batch * span + (buckets - low))
                pairs = np.stack([keys // span, keys % span + low])
            else:
                pairs = np.unique(np.stack([batch, buckets]), axis=1)
        else:
            last = np.zeros(0, dtype=np.int64)
            pairs = np.zeros((2, 0), dtype=np.int64)
        return cls(
            batch=batch,
            series=series,
            times=times,
            values=values,
            latest_batch=batch[last],
            latest_series=series[last],
            latest_time=times[last],
            latest_value=values[last],
            dirty_batch=pairs[0],
            dirty_bucket=pairs[1],
        )


# $1..$5: the unique batches (sorted by edge and batch_seq, so every transaction locks ledger rows in
# the same order); $6..$9: latest candidates (batch index, series, time in µs, value); $10..$11:
# dirty (batch index, 15-minute bucket number). Batch indexes are 0-based positions in $1..$5.
_RECORD_GROUP_SQL = """
WITH batch AS (
    SELECT u.e, u.s, u.c, u.lo, u.hi, u.n - 1 AS i
    FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::bigint[], $5::bigint[])
         WITH ORDINALITY AS u(e, s, c, lo, hi, n)
), stored AS (
    INSERT INTO telemetry.batch_ledger (edge_pk, batch_seq, point_count, min_time, max_time)
    SELECT e, s, c, timestamptz 'epoch' + lo * interval '1 microsecond',
           timestamptz 'epoch' + hi * interval '1 microsecond'
    FROM batch
    ON CONFLICT DO NOTHING
    RETURNING edge_pk, batch_seq
), fresh AS (
    SELECT b.i FROM batch b JOIN stored n ON n.edge_pk = b.e AND n.batch_seq = b.s
), candidate AS (
    SELECT DISTINCT ON (p.sid) p.sid, timestamptz 'epoch' + p.t * interval '1 microsecond' AS t, p.v
    FROM unnest($6::bigint[], $7::bigint[], $8::bigint[], $9::float8[]) AS p(i, sid, t, v)
    WHERE p.i IN (SELECT i FROM fresh)
    ORDER BY p.sid, p.t DESC, p.i DESC
), newer AS (
    -- A plain UPDATE, not INSERT ... ON CONFLICT DO UPDATE: the latter first locks each existing
    -- row (one more WAL record per row) before updating it. Same guard: never an older time.
    UPDATE telemetry.latest AS l SET time = c.t, value = c.v
    FROM candidate c
    WHERE l.series_id = c.sid AND l.time <= c.t
    RETURNING l.series_id
), first_values AS (
    -- The candidates the UPDATE did not take: series without a row yet (their first value), and
    -- the rare sample older than the stored one, which meets the same guard here and changes nothing.
    -- (Not a NOT EXISTS probe of latest: that cost as much as the update itself.)
    INSERT INTO telemetry.latest AS l (series_id, time, value)
    SELECT c.sid, c.t, c.v FROM candidate c
    WHERE c.sid NOT IN (SELECT series_id FROM newer)
    ON CONFLICT (series_id) DO UPDATE SET time = EXCLUDED.time, value = EXCLUDED.value
    WHERE l.time <= EXCLUDED.time
), dirty AS (
    INSERT INTO telemetry.rollup_dirty (edge_pk, bucket)
    SELECT DISTINCT b.e, to_timestamp(d.k * 900)
    FROM unnest($10::bigint[], $11::bigint[]) AS d(i, k) JOIN batch b ON b.i = d.i
    WHERE d.i IN (SELECT i FROM fresh)
    ORDER BY 1, 2
    ON CONFLICT DO NOTHING
)
SELECT edge_pk, batch_seq FROM stored
"""


async def _one_chunk(payload: bytes) -> AsyncIterator[bytes]:
    """asyncpg takes an async iterable of bytes as a COPY source; the payload is one chunk."""
    yield payload
