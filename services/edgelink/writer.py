"""The ingest writer: group commit of telemetry batches from every stream of this replica.

Streams submit validated batches to one bounded queue and await their result. One task drains the
queue: every batch waiting when a transaction starts goes into that transaction (up to a point
limit), so under load many streams share one commit. In the transaction: ledger rows (edge,
batch_seq) with ON CONFLICT DO NOTHING tell new batches from resent ones; only new batches' samples
are COPYed; latest values, rollup dirt and the batches' events follow. Results (STORED or
DUPLICATE) are released only after COMMIT, so an ack always means stored.

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
from emma.edge.v1 import edge_link_pb2

from services.edgelink.batches import Columns
from services.edgelink.copy_binary import samples_copy_payload

log = logging.getLogger("emma.ingest")

ROLLUP_BUCKET_US = 15 * 60 * 1_000_000

# SQLSTATE classes worth retrying: connection exceptions, insufficient resources, operator
# intervention (shutdown, restart), serialization failures and deadlocks.
_TRANSIENT_PREFIXES = ("08", "53", "57", "40")


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (OSError, ConnectionError, asyncpg.InterfaceError, asyncio.TimeoutError)):
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


class IngestWriter:
    def __init__(self, pool: asyncpg.Pool, *, queue_batches: int = 4096, max_group_points: int = 200_000) -> None:
        self._pool = pool
        self._queue: asyncio.Queue[PendingBatch] = asyncio.Queue(maxsize=queue_batches)
        self._max_group_points = max_group_points
        self._task: asyncio.Task[None] | None = None
        self.stats = WriterStats()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ingest-writer")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def submit(self, batch: PendingBatch) -> asyncio.Future[int]:
        """Queue a batch (waits while the queue is full: back-pressure); returns its result future."""
        await self._queue.put(batch)
        return batch.result

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    async def _run(self) -> None:
        while True:
            group = [await self._queue.get()]
            points = group[0].columns.size
            while not self._queue.empty() and points < self._max_group_points:
                item = self._queue.get_nowait()
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

        started = time.perf_counter()
        async with self._pool.acquire() as conn, conn.transaction():
            new_keys = await self._insert_ledger(conn, [group[i] for _, i in unique])
            fresh = [group[i] for key, i in unique if key in new_keys]
            if fresh:
                await self._store_samples(conn, fresh)
                await self._store_events(conn, fresh)
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
    async def _insert_ledger(conn: Any, items: list[PendingBatch]) -> set[tuple[int, int]]:
        def bound(item: PendingBatch, pick: Any) -> int | None:
            t = item.columns.times_unix_us
            return int(pick(t)) if len(t) else None

        rows = await conn.fetch(
            """INSERT INTO telemetry.batch_ledger (edge_pk, batch_seq, point_count, min_time, max_time)
               SELECT e, s, c, timestamptz 'epoch' + lo * interval '1 microsecond',
                      timestamptz 'epoch' + hi * interval '1 microsecond'
               FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::bigint[], $5::bigint[])
                    AS u(e, s, c, lo, hi)
               ON CONFLICT DO NOTHING
               RETURNING edge_pk, batch_seq""",
            [i.edge_pk for i in items],
            [i.batch_seq for i in items],
            [i.columns.size for i in items],
            [bound(i, np.min) for i in items],
            [bound(i, np.max) for i in items],
        )
        return {(r["edge_pk"], r["batch_seq"]) for r in rows}

    @staticmethod
    async def _store_samples(conn: Any, items: list[PendingBatch]) -> None:
        sids = np.concatenate([i.columns.series_ids for i in items])
        if len(sids) == 0:
            return
        times = np.concatenate([i.columns.times_unix_us for i in items])
        values = np.concatenate([i.columns.values for i in items])
        await conn.copy_to_table(
            "samples",
            schema_name="telemetry",
            columns=["series_id", "time", "value"],
            source=_one_chunk(samples_copy_payload(sids, times, values)),
            format="binary",
        )
        # Latest value per series: the point with the largest time (lexsort: by series, then time).
        order = np.lexsort((times, sids))
        s_sorted = sids[order]
        last = order[np.r_[s_sorted[1:] != s_sorted[:-1], True]]
        await conn.execute(
            """INSERT INTO telemetry.latest (series_id, time, value)
               SELECT s, timestamptz 'epoch' + t * interval '1 microsecond', v
               FROM unnest($1::bigint[], $2::bigint[], $3::float8[]) AS u(s, t, v)
               ON CONFLICT (series_id) DO UPDATE SET time = EXCLUDED.time, value = EXCLUDED.value
               WHERE telemetry.latest.time <= EXCLUDED.time""",
            sids[last].tolist(),
            times[last].tolist(),
            values[last].tolist(),
        )
        # Mark the 15-minute buckets these batches touched, per edge, for the rollup worker.
        dirty: set[tuple[int, int]] = set()
        for item in items:
            buckets = np.unique(item.columns.times_unix_us // ROLLUP_BUCKET_US)
            dirty.update((item.edge_pk, int(b)) for b in buckets)
        pairs = sorted(dirty)
        await conn.execute(
            """INSERT INTO telemetry.rollup_dirty (edge_pk, bucket)
               SELECT e, to_timestamp(b * 900) FROM unnest($1::bigint[], $2::bigint[]) AS u(e, b)
               ON CONFLICT DO NOTHING""",
            [p[0] for p in pairs],
            [p[1] for p in pairs],
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


async def _one_chunk(payload: bytes) -> AsyncIterator[bytes]:
    """asyncpg takes an async iterable of bytes as a COPY source; the payload is one chunk."""
    yield payload
