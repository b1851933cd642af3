"""The ingest writer: group commit of telemetry batches from every stream of this replica.

Streams submit validated batches and await their result. The writer has a few lanes (2 by
default), each a bounded queue drained by one task; an edge always uses the same lane (edge_pk
modulo the lane count), so one edge's batches are committed in the order they arrived, one
transaction after the other, exactly as with a single lane, and the Welcome's "last stored
batch_seq" keeps its meaning. Lanes never touch the same rows (ledger, latest and rollup dirt are
all per edge or per series of an edge), so their transactions run side by side without lock
waits: a slow commit delays only its lane, and PostgreSQL works on two transactions at a time.

In a lane, every batch waiting when a transaction starts goes into that transaction (up to a point
limit), so under load many streams share one commit. In the transaction (its statements are
telemetry's: services/telemetry/ingest.py), one statement inserts the ledger rows (edge, batch_seq)
with ON CONFLICT DO NOTHING, which tells new batches from resent ones, and, for the new ones only,
upserts latest values and marks rollup dirt; then one binary COPY writes the new batches' samples,
and their events follow. A small group without events (up to ONE_STATEMENT_POINTS) is stored by one
statement that does all of it and is its own transaction. Results (STORED or DUPLICATE) are released
only after COMMIT, so an ack always means stored.

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from emma.edge.v1 import edge_link_pb2
from opentelemetry import trace
from opentelemetry.trace import Link, Status, StatusCode

from core.metrics import record_ingested, watch_queue
from core.tasks import stop_tasks
from services.edgelink.batches import EventRow
from services.telemetry import (
    Columns,
    SampleRows,
    copy_samples,
    create_partitions,
    record_batches,
    store_batches,
)

log = logging.getLogger("emma.ingest")
_tracer = trace.get_tracer("emma.ingest")

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
    events: Sequence[EventRow] = ()
    result: asyncio.Future[int] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    # The batch's span (session.py): the transaction that stores it is its child, or linked to it when
    # the transaction is another batch's child.
    span: trace.Span = trace.INVALID_SPAN


@dataclass
class WriterStats:
    batches_stored: int = 0
    batches_duplicate: int = 0
    points_stored: int = 0
    transactions: int = 0
    retries: int = 0
    transaction_seconds: float = 0.0
    slowest_transaction_s: float = 0.0


# Groups of up to this many points without events are stored by one statement that is its own
# transaction (telemetry's store_batches: one round trip instead of five); larger ones by the recording
# statement and a binary COPY in a transaction, which costs less CPU per point. A fleet of edges that
# send a batch a second makes groups of a few thousand points at most; a backlog makes larger ones.
ONE_STATEMENT_POINTS = 5_000

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
        one_statement_points: int = ONE_STATEMENT_POINTS,
    ) -> None:
        if lanes < 1:
            raise ValueError("lanes must be 1 or more")
        self._pool = pool
        per_lane = max(1, queue_batches // lanes)
        self._queues: list[asyncio.Queue[PendingBatch]] = [asyncio.Queue(maxsize=per_lane) for _ in range(lanes)]
        self._max_group_points = max_group_points
        self._one_statement_points = one_statement_points
        self._tasks: list[asyncio.Task[None]] = []
        self._unwatch: Callable[[], None] | None = None
        self.stats = WriterStats()

    async def start(self, pool: asyncpg.Pool | None = None) -> None:
        """Start the lanes, on `pool` if given (the service gives the writer connections of its own)."""
        if pool is not None:
            self._pool = pool
        self._tasks = [
            asyncio.create_task(self._run(queue), name=f"ingest-writer-{n}") for n, queue in enumerate(self._queues)
        ]
        self._unwatch = watch_queue("ingest_writer", lambda: self.queue_depth)

    async def stop(self) -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        await stop_tasks(self._tasks)
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
            created = await create_partitions(conn, first, last)
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
        batches = [item.columns for item in items]
        rows = SampleRows.of(batches)

        keys = [key for key, _ in unique]
        started = time.perf_counter()
        with _transaction_span(group, len(rows.values)):
            async with self._pool.acquire() as conn:
                try:
                    if len(rows.values) <= self._one_statement_points and not any(item.events for item in items):
                        new_keys = await store_batches(conn, keys, batches, rows)
                    else:
                        async with conn.transaction():
                            new_keys = await record_batches(conn, keys, batches, rows)
                            fresh = [k for k, item in enumerate(items) if (item.edge_pk, item.batch_seq) in new_keys]
                            if fresh:
                                await copy_samples(conn, rows, fresh, len(items))
                                await self._store_events(conn, [items[k] for k in fresh])
                except asyncpg.InternalClientError:
                    conn.terminate()  # its protocol state is unknown: the pool must not hand it out again
                    raise
        took = time.perf_counter() - started
        self.stats.transactions += 1
        self.stats.transaction_seconds += took
        self.stats.slowest_transaction_s = max(self.stats.slowest_transaction_s, took)

        results: list[int] = []
        new_batches = new_points = 0
        for i, item in enumerate(group):
            key = (item.edge_pk, item.batch_seq)
            is_new = key in new_keys and first[key] == i
            results.append(stored if is_new else duplicate)
            if is_new:
                new_batches += 1
                new_points += item.columns.size
        self.stats.batches_stored += new_batches
        self.stats.points_stored += new_points
        self.stats.batches_duplicate += len(group) - new_batches
        record_ingested(new_batches, new_points, len(group) - new_batches)  # once per transaction
        return results

    @staticmethod
    async def _store_events(conn: Any, items: list[PendingBatch]) -> None:
        rows = [
            (item.edge_pk, ev.event_time_s, ev.severity, ev.kind, ev.message, json.dumps(ev.details))
            for item in items
            for ev in item.events
        ]
        if rows:
            await conn.executemany(
                """INSERT INTO app.edge_events (edge_pk, event_time, severity, kind, message, details)
                   VALUES ($1, to_timestamp($2), $3, $4, $5, $6::jsonb)""",
                rows,
            )


@contextlib.contextmanager
def _transaction_span(group: Sequence[PendingBatch], points: int) -> Iterator[None]:
    """A span for one attempt at a group's transaction, current while its SQL runs (so each statement's
    span is its child). One transaction stores many batches and a span has one parent: it is the child
    of the group's first recorded batch and links to the other batches' spans. (No link back from each
    batch: that adds a link's objects to a span in flight for every batch of every group.) Nothing when
    no batch is recorded (batch spans off, or sampled out by OTEL_TRACES_SAMPLER), so no SQL spans either."""
    traced = [item.span for item in group if item.span.is_recording()]
    if not traced:
        yield
        return
    parent, others = traced[0], traced[1:]
    with _tracer.start_as_current_span(
        "ingest transaction",
        context=trace.set_span_in_context(parent),
        kind=trace.SpanKind.INTERNAL,
        links=[Link(span.get_span_context()) for span in others],
        attributes={"emma.batches": len(group), "emma.points": points},
        # Exceptions are recorded by type only: a database error's text may quote a value.
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield
        except BaseException as exc:
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
