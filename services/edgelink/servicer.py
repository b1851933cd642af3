"""EdgeLinkService: accepts edge streams, hands their telemetry to the ingest writer."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable

import asyncpg
import grpc
from emma.common.v1 import errors_pb2
from emma.edge.v1 import edge_link_pb2, edge_link_pb2_grpc
from google.protobuf.message import DecodeError

from core.metrics import watch_queue
from services.command import CommandRelay
from services.edgelink.closings import SessionEnds
from services.edgelink.handshake import Handshakes
from services.edgelink.log_limit import LogLimiter
from services.edgelink.session import EdgeSession, IngestCounters, record_event
from services.edgelink.writer import DEFAULT_LANES, IngestWriter
from services.errors import ApiError, invalid_field
from services.optimizer import ScheduleRelay
from services.platform import db
from services.platform.rpc import Context
from services.platform.runtime import Runtime

log = logging.getLogger("emma.edgelink")

HELLO_TIMEOUT_S = 30.0
# One WARNING a minute at most for undecodable messages, whoever sends them (see log_limit.py).
UNDECODABLE_LOG_INTERVAL_S = 60.0
# How long stop() waits for the ends of streams to be recorded before the pool closes.
CLOSE_WAIT_S = 10.0


class EdgeLinkServicer(edge_link_pb2_grpc.EdgeLinkServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._config = runtime.config.ingest
        self.writer = IngestWriter(
            runtime.pool,
            queue_batches=self._config.writer_queue_batches,
            max_group_points=self._config.max_group_points,
        )
        self.counters = IngestCounters()
        self.relay = CommandRelay(runtime.pool, runtime.dsn, runtime.replica_id)
        self.schedules = ScheduleRelay(runtime.pool, runtime.dsn)
        self.handshakes = Handshakes(runtime.pool, self._config, runtime.replica_id)
        self.ends = SessionEnds(runtime.pool)
        self._tasks: list[asyncio.Task[None]] = []
        self._writer_pool: asyncpg.Pool | None = None
        # The stream each edge has on this replica, so a newer one can end the older one at once.
        self._streams: dict[int, EdgeSession] = {}
        # Ends of streams still being recorded; stop() waits for them before the pool closes.
        self._closing: set[asyncio.Task[None]] = set()
        self._undecodable_log = LogLimiter(UNDECODABLE_LOG_INTERVAL_S)
        self._unwatch: list[Callable[[], None]] = []

    async def start(self) -> None:
        # The writer's lanes get connections of their own: a burst of stream opens or closes (1,000
        # edges reconnecting, each a few statements on the shared pool) must not make commits, and
        # so every stream's acks, wait for a free connection.
        writer_db = dataclasses.replace(
            self._runtime.config.database, pool_min_size=DEFAULT_LANES, pool_max_size=DEFAULT_LANES + 1
        )
        self._writer_pool = await db.create_pool(writer_db, self._runtime.dsn or None)
        await self.writer.start(self._writer_pool)
        await self.relay.start()
        await self.schedules.start()
        self._tasks = [
            asyncio.create_task(self._sweep_offline(), name="offline-sweeper"),
            asyncio.create_task(self._log_stats(), name="ingest-stats"),
        ]
        # Summed over this replica's streams when a scrape or an export asks, never on the stream path.
        self._unwatch = [
            watch_queue("edge_outbound", lambda: sum(s.outbound.qsize() for s in list(self._streams.values()))),
            watch_queue("ingest_pending_acks", lambda: sum(s.pending_acks for s in list(self._streams.values()))),
        ]

    async def stop(self) -> None:
        for unwatch in self._unwatch:
            unwatch()
        self._unwatch = []
        for task in self._tasks:
            task.cancel()
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=CLOSE_WAIT_S)
        await self.handshakes.stop()
        await self.ends.stop()
        await self.relay.stop()
        await self.schedules.stop()
        await self.writer.stop()
        if self._writer_pool is not None:
            await self._writer_pool.close()
            self._writer_pool = None

    async def _log_stats(self) -> None:
        """One structured line per interval: the ingest metrics operators and benchmarks read."""
        previous = dataclasses.replace(self.writer.stats)
        while True:
            await asyncio.sleep(self._config.stats_interval_s)
            now = dataclasses.replace(self.writer.stats)
            txns = now.transactions - previous.transactions
            log.info(
                "ingest stats",
                extra={
                    "batches_stored": now.batches_stored - previous.batches_stored,
                    "batches_duplicate": now.batches_duplicate - previous.batches_duplicate,
                    "points_stored": now.points_stored - previous.points_stored,
                    "transactions": txns,
                    "mean_transaction_ms": round(
                        1000 * (now.transaction_seconds - previous.transaction_seconds) / txns, 2
                    )
                    if txns
                    else 0.0,
                    "slowest_transaction_ms": round(1000 * now.slowest_transaction_s, 2),
                    "retries": now.retries - previous.retries,
                    "queue_depth": self.writer.queue_depth,
                    "streams_open": self.counters.streams_opened - self.counters.streams_closed,
                    "rejected": dict(self.counters.rejected),
                },
            )
            self.writer.stats.slowest_transaction_s = 0.0
            previous = dataclasses.replace(self.writer.stats)

    async def Connect(
        self,
        request_iterator: AsyncIterator[edge_link_pb2.ConnectRequest],
        context: Context,
    ) -> AsyncIterator[edge_link_pb2.ConnectResponse]:
        requests = aiter(self._decoded(request_iterator))
        try:
            async with asyncio.timeout(HELLO_TIMEOUT_S):
                first = await anext(requests)
        except (TimeoutError, StopAsyncIteration):
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                errors_pb2.ERROR_REASON_HELLO_REQUIRED,
                f"send a Hello within {HELLO_TIMEOUT_S:.0f} s of opening the stream",
            ) from None
        if first.WhichOneof("message") != "hello":
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                errors_pb2.ERROR_REASON_HELLO_REQUIRED,
                f"the first message must be a Hello, got {first.WhichOneof('message')}",
            )
        session, welcome = await EdgeSession.open(
            first.hello,
            self.handshakes,
            self._runtime.pool,
            self.writer,
            self._config,
            self.counters,
            self.ends,
            self.relay,
            self.schedules,
        )

        older = self._streams.get(session.edge_pk)
        self._streams[session.edge_pk] = session
        if older is not None:
            older.replaced()
        reader = asyncio.create_task(session.read_loop(requests), name=f"reader-{session.identity.name}")

        # When the call has ended, however it ended, the reader stops and the end is recorded. The
        # finally below does both too, but a handler cancelled while the server writes a response
        # is not resumed, so its finally may run late or never.
        def call_ended(_: Context) -> None:
            reader.cancel()
            self._close(session)

        # grpc-stubs declare the callback as a class of their own; grpc calls any callable.
        context.add_done_callback(call_ended)  # type: ignore[arg-type]
        try:
            yield edge_link_pb2.ConnectResponse(welcome=welcome)
            session.attach()  # after the Welcome, beside the acks: commands in flight, the queue, the plan
            async for response in session.responses():
                yield response
        finally:
            reader.cancel()
            await asyncio.shield(self._close(session))

    def _close(self, session: EdgeSession) -> asyncio.Task[None]:
        """Start (or join) recording the end of `session`'s stream; stop() waits for it."""
        if self._streams.get(session.edge_pk) is session:
            del self._streams[session.edge_pk]
        closing = session.close()
        if not closing.done():
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        return closing

    async def _decoded(
        self, requests: AsyncIterator[edge_link_pb2.ConnectRequest]
    ) -> AsyncIterator[edge_link_pb2.ConnectRequest]:
        """The edge's messages; bytes that are not a ConnectRequest end the stream with INVALID_ARGUMENT.

        gRPC decodes each message when the handler asks for the next one, so a DecodeError surfaces
        here, not before the handler; unhandled it became INTERNAL with a traceback per stream.
        """
        iterator = aiter(requests)
        while True:
            try:
                request = await anext(iterator)
            except StopAsyncIteration:
                return
            except DecodeError as exc:
                held_back = self._undecodable_log.allow()
                if held_back is not None:
                    log.warning(
                        "undecodable message on an edge stream refused",
                        extra={"error": str(exc), "held_back": held_back},
                    )
                raise invalid_field("request", f"not a valid emma.edge.v1.ConnectRequest ({exc})") from None
            yield request

    async def _sweep_offline(self) -> None:
        """Mark edges offline whose heartbeats stopped; safe on every replica at once."""
        period = max(0.2, min(self._config.offline_after_s / 3, 5.0))
        while True:
            await asyncio.sleep(period)
            try:
                async with self._runtime.pool.acquire() as conn:
                    # The rows are locked in edge order, as the handshakes' upsert and the recorded
                    # ends of streams (closings.py) take theirs: a sweep that meets a fleet's streams
                    # ending never waits for them in a cycle (a deadlock PostgreSQL would break by
                    # failing one of the two statements).
                    rows = await conn.fetch(
                        """WITH stale AS (
                               SELECT edge_pk FROM app.edge_sessions
                               WHERE online AND last_seen_time < now() - make_interval(secs => $1)
                               ORDER BY edge_pk
                               FOR UPDATE)
                           UPDATE app.edge_sessions s SET online = false, disconnected_time = now()
                           FROM stale WHERE s.edge_pk = stale.edge_pk
                           RETURNING s.edge_pk""",
                        self._config.offline_after_s,
                    )
                    for r in rows:
                        await record_event(
                            conn,
                            r["edge_pk"],
                            "warning",
                            "OFFLINE",
                            f"no heartbeat for {self._config.offline_after_s:.0f} s",
                        )
            except Exception:
                db.log_failed_pass(log, "offline sweep failed")
