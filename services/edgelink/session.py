"""One edge's stream on this replica: handshake, reader loop, ordered acks, heartbeats, close.

A reader task consumes the edge's messages; everything going back to the edge passes through one
bounded outbound queue that the gRPC handler drains. If the edge stops reading its acks, the queue
fills, the reader stops reading, and HTTP/2 flow control pushes back to the edge: memory stays
bounded. The same holds towards the database through the writer's bounded queue and the per-stream
limit of unacknowledged batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
import numpy as np
import numpy.typing as npt
from emma.common.v1 import errors_pb2
from emma.edge.v1 import edge_link_pb2
from google.protobuf import duration_pb2, timestamp_pb2
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from core.metrics import record_ack, record_edge_connected, record_rejected_batch
from core.tasks import stop_task
from core.tracing import traces_exported
from services.command import ACKS_PER_SECOND, CommandRelay, TokenBucket
from services.edgelink.batches import Rejection, to_columns, to_events
from services.edgelink.closings import SessionEnds
from services.edgelink.handshake import (
    Handshakes,
    clipped,
    clock_drift,
    ts_seconds,
    with_channels,
)
from services.edgelink.hello import check_channel_addresses, check_channel_indexes, check_text
from services.edgelink.writer import IngestWriter, PendingBatch
from services.errors import ApiError, reason_name
from services.identity import EdgeIdentity, edge_key_revoked
from services.optimizer import ScheduleRelay
from services.platform.config import IngestConfig
from services.platform.migrations import Conn
from services.telemetry import register_channels

log = logging.getLogger("emma.edgelink")
_tracer = trace.get_tracer("emma.edgelink")
# Each telemetry batch is a trace of its own: a stream lives for days, and one trace per stream would
# never end (nor be exported); a batch starts from an empty context, whatever is current.
_NO_PARENT = otel_context.Context()


@functools.cache
def batch_spans() -> bool:
    """Whether telemetry batches get spans: only when this process exports traces. A span per batch is
    1,000 spans/s at 1,000 edges, and unexported they would only cost the event loop (and the ack
    latency) their allocations; request spans stay on regardless, for the trace ids in logs and audit
    rows. Sampling is OTEL_TRACES_SAMPLER's."""
    return traces_exported()


_CLOSE = object()  # outbound sentinel: the edge closed its side and every ack was sent

# A command's name is organizations/{o}/sites/{s}/edges/{e}/commands/{uuid}: well under this.
MAX_COMMAND_NAME_CHARS = 300
MAX_ACK_REASON_CHARS = 100
MAX_ACK_MESSAGE_CHARS = 1_000
# Command acks read but not yet applied, per stream; beyond this the reader waits (backpressure).
COMMAND_ACK_QUEUE = 1_000
# At most this many acks in one database call.
MAX_ACKS_PER_CALL = 100
# How long the end of a stream waits for its queued command acks to be applied.
ACK_FLUSH_S = 5.0
# How long acks that are all RECEIVED wait for the edge's next ack before they are applied alone (see
# _command_ack_loop).
RECEIVED_WAIT_S = 0.002


def _storable(text: str, limit: int) -> str:
    """Text PostgreSQL can hold (no NUL character: U+FFFD instead) of at most `limit` characters."""
    return text.replace("\x00", "\ufffd")[:limit]


def now_timestamp() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


async def record_event(
    conn: Conn, edge_pk: int, severity: str, kind: str, message: str, details: dict[str, Any] | None = None
) -> None:
    await conn.execute(
        """INSERT INTO app.edge_events (edge_pk, event_time, severity, kind, message, details)
           VALUES ($1, now(), $2, $3, $4, $5::jsonb)""",
        edge_pk,
        severity,
        kind,
        message,
        json.dumps(details or {}),
    )


@dataclass(slots=True)
class _Ack:
    """A telemetry ack on its way out, with what its batch's span and the ack histogram need."""

    response: edge_link_pb2.ConnectResponse
    arrived: float  # time.perf_counter() when the batch was read off the stream
    span: trace.Span
    result: str  # stored, duplicate, rejected

    def sent(self) -> None:
        record_ack(time.perf_counter() - self.arrived)
        self.span.set_attribute("emma.result", self.result)
        self.span.end()

    def dropped(self) -> None:
        """The stream ended before this ack could be sent: the edge resends the batch."""
        self.span.set_attribute("emma.result", "unacknowledged")
        self.span.end()


_RESULT_NAMES = {
    int(edge_link_pb2.TELEMETRY_ACK_RESULT_STORED): "stored",
    int(edge_link_pb2.TELEMETRY_ACK_RESULT_DUPLICATE): "duplicate",
}


@dataclass
class IngestCounters:
    """Per-replica counters, logged and exposed for metrics."""

    rejected: Counter[str] = field(default_factory=Counter)
    streams_opened: int = 0
    streams_closed: int = 0


class EdgeSession:
    def __init__(
        self,
        identity: EdgeIdentity,
        session_id: uuid.UUID,
        pool: asyncpg.Pool,
        writer: IngestWriter,
        config: IngestConfig,
        counters: IngestCounters,
        ends: SessionEnds,
        relay: CommandRelay | None = None,
        schedules: ScheduleRelay | None = None,
    ) -> None:
        self.identity = identity
        self._ends = ends
        self._relay = relay
        self._schedules = schedules
        self._ack_pace = TokenBucket(ACKS_PER_SECOND, ACKS_PER_SECOND)
        self.session_id = session_id
        self._pool = pool
        self._writer = writer
        self._config = config
        self._counters = counters
        self._lut: npt.NDArray[np.int64] = np.full(0, -1, dtype=np.int64)
        self.outbound: asyncio.Queue[Any] = asyncio.Queue(maxsize=config.max_unacked_batches * 4 + 16)
        self._in_flight = asyncio.Semaphore(config.max_unacked_batches)
        # (batch_seq, its result, arrival time, its span), in arrival order; None: no more batches.
        self._acks: asyncio.Queue[tuple[int, asyncio.Future[int], float, trace.Span] | None] = asyncio.Queue()
        self._drifting = False
        self._closing: asyncio.Task[None] | None = None
        self._attaching: asyncio.Task[None] | None = None
        self._command_acks: asyncio.Queue[edge_link_pb2.CommandAck] = asyncio.Queue(maxsize=COMMAND_ACK_QUEUE)
        self._command_acker: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ handshake

    @classmethod
    async def open(
        cls,
        hello: edge_link_pb2.Hello,
        handshakes: Handshakes,
        pool: asyncpg.Pool,
        writer: IngestWriter,
        config: IngestConfig,
        counters: IngestCounters,
        ends: SessionEnds,
        relay: CommandRelay | None = None,
        schedules: ScheduleRelay | None = None,
    ) -> tuple[EdgeSession, edge_link_pb2.Welcome]:
        # Checked and committed with the Hellos that arrive meanwhile (handshake.py).
        opened = await handshakes.open(hello)
        identity = opened.identity
        session = cls(identity, opened.session_id, pool, writer, config, counters, ends, relay, schedules)
        session._lut = opened.lut
        session._drifting = opened.drifting
        welcome = edge_link_pb2.Welcome(
            session_id=str(session.session_id),
            server_time=now_timestamp(),
            last_stored_batch_seq=opened.last_stored,
            heartbeat_interval=duration_pb2.Duration(
                seconds=int(config.heartbeat_interval_s),
                nanos=int((config.heartbeat_interval_s % 1) * 1e9),
            ),
            max_batch_points=config.max_batch_points,
            max_unacked_batches=config.max_unacked_batches,
        )
        counters.streams_opened += 1
        record_edge_connected(1)  # from here on the servicer always closes the session (-1 in _close)
        log.info(
            "edge connected",
            extra={
                "edge": str(identity.name),
                "session_id": str(session.session_id),
                "last_stored": opened.last_stored,
            },
        )
        return session, welcome

    async def _add_channels(self, conn: Conn, table: Any) -> None:
        if not table:
            return
        check_channel_addresses(table, "channel_table_append.channels")
        ids = await register_channels(conn, self.identity.edge_pk, [e.channel for e in table], [e.unit for e in table])
        self._lut = with_channels(self._lut, table, ids)

    # ------------------------------------------------------------------ commands (CommandSink)

    @property
    def edge_pk(self) -> int:
        return self.identity.edge_pk

    @property
    def edge_name(self) -> str:
        return str(self.identity.name)

    async def send(self, response: edge_link_pb2.ConnectResponse) -> None:
        await self.outbound.put(response)

    def attach(self) -> None:
        """After the Welcome: the commands in flight, then the queue, then the plan in force, in a task
        of their own. Until session 15 the handler made these statements before it sent anything else,
        so the stream's first acks waited behind them, on the shared pool that a fleet's Hellos keep
        busy; acks and commands are independent messages, and the commands keep their order. A failure
        ends the stream with that error, as it did."""
        self._attaching = asyncio.get_running_loop().create_task(self._attach(), name=f"attach-{self.edge_name}")

    async def _attach(self) -> None:
        try:
            if self._relay is not None:
                await self._relay.attach(self)
            if self._schedules is not None:
                await self._schedules.attach(self)
        except Exception as exc:  # the handler raises it from responses(), as it raised it itself before
            await self.outbound.put(exc)

    async def _on_schedule_ack(self, ack: edge_link_pb2.ScheduleAck) -> None:
        # Paced with the command acks: one bucket bounds what an edge's acks cost the database.
        await self._ack_pace.take()
        if self._schedules is not None:
            await self._schedules.on_ack(self, ack)
        else:
            log.warning("schedule ack without a schedule relay", extra={"edge": self.edge_name})

    async def _on_command_ack(self, ack: edge_link_pb2.CommandAck) -> None:
        """Queue the ack for the ack loop: the reader goes on at once, and acks that arrive while one
        call is applying earlier ones are applied together in the next (RECEIVED and EXECUTED of an
        edge that answers at once are often one call). When the queue is full the reader waits."""
        if len(ack.command) > MAX_COMMAND_NAME_CHARS:
            log.warning(
                "command ack with an over-long command name ignored",
                extra={"edge": self.edge_name, "command": clipped(ack.command), "status": int(ack.status)},
            )
            return
        # The ack's status is what counts and cannot be asked for again, so its text is made storable
        # rather than the ack refused: NUL characters become U+FFFD, long texts are cut.
        if (
            len(ack.reason) > MAX_ACK_REASON_CHARS
            or len(ack.message) > MAX_ACK_MESSAGE_CHARS
            or "\x00" in (ack.command + ack.reason + ack.message)
        ):
            cleaned = edge_link_pb2.CommandAck()
            cleaned.CopyFrom(ack)
            cleaned.command = _storable(ack.command, MAX_COMMAND_NAME_CHARS)
            cleaned.reason = _storable(ack.reason, MAX_ACK_REASON_CHARS)
            cleaned.message = _storable(ack.message, MAX_ACK_MESSAGE_CHARS)
            ack = cleaned
        if self._relay is None:
            log.warning("command ack without a command relay", extra={"edge": self.edge_name})
            return
        if self._command_acker is None:
            self._command_acker = asyncio.create_task(self._command_ack_loop(), name=f"command-acks-{self.edge_name}")
        await self._command_acks.put(ack)

    async def _command_ack_loop(self) -> None:
        """Apply queued command acks in arrival order, all that are waiting in one call, paced at
        ACKS_PER_SECOND per edge (excess waits, never dropped)."""
        assert self._relay is not None
        while True:
            batch = [await self._command_acks.get()]
            # One turn of the event loop lets the reader queue an ack that is already read off the wire.
            await asyncio.sleep(0)
            self._take_waiting(batch)
            if len(batch) < MAX_ACKS_PER_CALL and all(
                a.status == edge_link_pb2.COMMAND_ACK_STATUS_RECEIVED for a in batch
            ):
                # An edge that executes a command on arrival sends its final ack right after the RECEIVED
                # (a few tenths of a millisecond later on the wire): applied together they are one call
                # and one commit, where alone the final ack would wait behind the RECEIVED's call. Nobody
                # waits for a RECEIVED (a caller waits for the final state, which this wait does not
                # delay: the final ack ends it), so it may wait a moment; an edge whose final ack comes
                # with a later control cycle has its RECEIVED applied after RECEIVED_WAIT_S.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RECEIVED_WAIT_S):
                        batch.append(await self._command_acks.get())
                self._take_waiting(batch)
            for _ in batch:
                await self._ack_pace.take()
            try:
                await self._relay.on_acks(self, batch)
            except Exception:
                # The edge sends an ack once; a failed call leaves those commands to the edge timeout
                # (or to the edge's answer when they are redelivered after a reconnect).
                log.warning("command acks could not be stored", extra={"edge": self.edge_name}, exc_info=True)
            finally:
                for _ in batch:
                    self._command_acks.task_done()

    def _take_waiting(self, batch: list[edge_link_pb2.CommandAck]) -> None:
        """Add the queued acks to `batch`, up to MAX_ACKS_PER_CALL."""
        while len(batch) < MAX_ACKS_PER_CALL and not self._command_acks.empty():
            batch.append(self._command_acks.get_nowait())

    async def _flush_command_acks(self, timeout_s: float) -> None:
        """Wait (bounded) until every queued command ack is applied, then stop the ack loop."""
        if self._command_acker is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._command_acks.join()
        self._command_acker.cancel()

    async def _check_clock(self, conn: Conn, offset_ms: float) -> None:
        self._drifting, event = clock_drift(self.edge_name, offset_ms, self._config.clock_drift_warn_ms, self._drifting)
        if event is not None:
            await record_event(conn, self.identity.edge_pk, *event)

    # ------------------------------------------------------------------ reader side

    async def read_loop(self, requests: AsyncIterator[edge_link_pb2.ConnectRequest]) -> None:
        acker = asyncio.create_task(self._ack_loop(), name=f"acks-{self.identity.name}")
        try:
            async for request in requests:
                kind = request.WhichOneof("message")
                if kind == "telemetry_batch":
                    await self._on_batch(request.telemetry_batch)
                elif kind == "heartbeat":
                    await self._on_heartbeat(request.heartbeat)
                elif kind == "command_ack":
                    await self._on_command_ack(request.command_ack)
                elif kind == "channel_table_append":
                    append = request.channel_table_append
                    check_text(append, "channel_table_append.")
                    check_channel_indexes((e.index for e in append.channels), "channel_table_append.channels")
                    async with self._pool.acquire() as conn:
                        await self._add_channels(conn, append.channels)
                elif kind == "hello":
                    raise ApiError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        errors_pb2.ERROR_REASON_STATE_CONFLICT,
                        "Hello may only be sent once per stream",
                    )
                elif kind == "schedule_ack":
                    await self._on_schedule_ack(request.schedule_ack)
                else:
                    # A message type newer than this server (or none at all): logged so nothing
                    # passes unnoticed.
                    log.info("edge message not handled", extra={"edge": str(self.identity.name), "kind": kind})
            await self._acks.put(None)
            await acker
            await self._flush_command_acks(ACK_FLUSH_S)
            await self.outbound.put(_CLOSE)
        except ApiError as exc:
            await self.outbound.put(exc)
        except grpc.aio.AbortError:  # the call already ended with its status; nothing is left to read
            pass
        except Exception as exc:
            log.exception("edge stream reader failed", extra={"edge": str(self.identity.name)})
            await self.outbound.put(exc)
        finally:
            acker.cancel()

    async def _on_batch(self, batch: edge_link_pb2.TelemetryBatch) -> None:
        arrived = time.perf_counter()
        span = (
            _tracer.start_span(
                "telemetry batch",
                context=_NO_PARENT,
                kind=SpanKind.SERVER,
                attributes={
                    "emma.edge": self.edge_name,
                    "emma.batch_seq": batch.batch_seq,
                    "emma.points": len(batch.values),
                },
            )
            if batch_spans()
            else trace.INVALID_SPAN
        )
        # It ends when the ack is handed to gRPC (responses()); the writer's transaction is its child.
        cfg = self._config
        checked = to_columns(
            batch,
            self._lut,
            now_unix_us=int(time.time() * 1_000_000),
            max_points=cfg.max_batch_points,
            max_past_us=cfg.retention_days * 86_400_000_000,
            max_future_us=int(cfg.max_future_s * 1_000_000),
        )
        if isinstance(checked, Rejection):
            await self._reject(batch.batch_seq, checked, arrived, span)
            return
        events = to_events(batch.events)
        if isinstance(events, Rejection):
            await self._reject(batch.batch_seq, events, arrived, span)
            return
        await self._in_flight.acquire()  # at most max_unacked_batches per stream in the writer
        item = PendingBatch(self.identity.edge_pk, batch.batch_seq, checked, events, span=span)
        future = await self._writer.submit(item)
        await self._acks.put((batch.batch_seq, future, arrived, span))

    async def _reject(self, batch_seq: int, rejection: Rejection, arrived: float, span: trace.Span) -> None:
        self._counters.rejected[rejection.reason] += 1
        record_rejected_batch()
        span.set_attribute("emma.reason", rejection.reason)
        # Current here only (not on the accepted path, where it would cost a context switch per batch):
        # the log line carries its trace id and the event row's SQL is its child.
        with trace.use_span(span, end_on_exit=False):
            log.warning(
                "telemetry batch rejected",
                extra={"edge": str(self.identity.name), "batch_seq": batch_seq, "reason": rejection.reason},
            )
            try:
                async with self._pool.acquire() as conn:
                    await record_event(
                        conn,
                        self.identity.edge_pk,
                        "warning",
                        "BATCH_REJECTED",
                        rejection.message,
                        {"batch_seq": batch_seq, "reason": rejection.reason},
                    )
            except Exception:  # the event is for people; the ack is what the edge waits for
                log.warning("could not record a rejected batch", extra={"edge": self.edge_name}, exc_info=True)
        response = edge_link_pb2.ConnectResponse(
            telemetry_ack=edge_link_pb2.TelemetryAck(
                batch_seq=batch_seq,
                result=edge_link_pb2.TELEMETRY_ACK_RESULT_REJECTED,
                reason=rejection.reason,
                message=rejection.message,
            )
        )
        await self.outbound.put(_Ack(response, arrived, span, "rejected"))

    async def _ack_loop(self) -> None:
        """Send acks in the order the batches arrived, each after its transaction committed."""
        while (entry := await self._acks.get()) is not None:
            seq, future, arrived, span = entry
            try:
                result = await future
            except Exception as exc:
                # The writer could not store a batch that passed every check (it logged why). An
                # answer ends it all the same: without one the edge would resend it forever and
                # its window would never move past it.
                await self._reject(
                    seq,
                    Rejection(
                        reason_name(errors_pb2.ERROR_REASON_UNSPECIFIED),
                        f"the cloud could not store this batch ({type(exc).__name__}); its log says why",
                    ),
                    arrived,
                    span,
                )
                continue
            finally:
                self._in_flight.release()
            response = edge_link_pb2.ConnectResponse(
                telemetry_ack=edge_link_pb2.TelemetryAck(batch_seq=seq, result=result)  # type: ignore[arg-type]
            )
            await self.outbound.put(_Ack(response, arrived, span, _RESULT_NAMES.get(result, str(result))))

    async def _on_heartbeat(self, hb: edge_link_pb2.Heartbeat) -> None:
        offset_ms = (ts_seconds(hb.edge_time) - time.time()) * 1000 if hb.HasField("edge_time") else 0.0
        async with self._pool.acquire() as conn:
            updated = await conn.fetchval(
                """UPDATE app.edge_sessions SET last_seen_time = now(), online = true, clock_offset_ms = $3
                   WHERE edge_pk = $1 AND session_id = $2 RETURNING true""",
                self.identity.edge_pk,
                self.session_id,
                offset_ms,
            )
            if updated is None:
                raise ApiError(
                    grpc.StatusCode.ABORTED,
                    errors_pb2.ERROR_REASON_SESSION_REPLACED,
                    "a newer stream of this edge took over the session",
                )
            if await edge_key_revoked(conn, self.identity.key_id):
                raise ApiError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    errors_pb2.ERROR_REASON_EDGE_KEY_REVOKED,
                    "the API key was revoked",
                )
            await self._check_clock(conn, offset_ms)
        await self.outbound.put(
            edge_link_pb2.ConnectResponse(
                heartbeat_ack=edge_link_pb2.HeartbeatAck(edge_time=hb.edge_time, server_time=now_timestamp())
            )
        )

    # ------------------------------------------------------------------ writer side

    async def responses(self) -> AsyncIterator[edge_link_pb2.ConnectResponse]:
        """What the gRPC handler yields; raises the error that ends the stream, if any."""
        while True:
            item = await self.outbound.get()
            if item is _CLOSE:
                return
            if isinstance(item, Exception):
                raise item
            if isinstance(item, _Ack):
                item.sent()
                yield item.response
                continue
            yield item

    def replaced(self) -> None:
        """A newer stream of this edge opened on this replica: end this one now with SESSION_REPLACED.

        What was still queued for this edge (acks, commands) is dropped: the edge resends unacked
        batches on its newer stream, and the relay redelivers commands in flight when it attaches.
        Emptying the queue first makes room, so the error is the next thing the handler takes.
        """
        self._drop_outbound()
        self.outbound.put_nowait(
            ApiError(
                grpc.StatusCode.ABORTED,
                errors_pb2.ERROR_REASON_SESSION_REPLACED,
                "a newer stream of this edge took over the session",
            )
        )

    @property
    def pending_acks(self) -> int:
        """Batches read off this stream whose ack is not yet queued for sending (waiting for a commit)."""
        return self._acks.qsize()

    def _drop_outbound(self) -> None:
        while not self.outbound.empty():
            item = self.outbound.get_nowait()
            if isinstance(item, _Ack):
                item.dropped()

    def close(self) -> asyncio.Task[None]:
        """Record the end of the stream, once however often it is asked, in a task of its own.

        Callers await it shielded: the handler that closes a stream is often being cancelled (the
        edge went away, the server is stopping), and a cancellation must not cut the database write
        short, or the edge would stay online until the offline sweeper noticed.
        """
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close(), name=f"close-{self.edge_name}")
        return self._closing

    async def _close(self) -> None:
        # Stopped first: an attach still running would register this stream with the relays again
        # after they let go of it.
        if self._attaching is not None:
            await stop_task(self._attaching)
        # Acks the edge sent before the stream broke still count: the edge will not send them again.
        await self._flush_command_acks(ACK_FLUSH_S)
        if self._relay is not None:
            self._relay.detach(self)
        if self._schedules is not None:
            self._schedules.detach(self)
        self._counters.streams_closed += 1
        record_edge_connected(-1)
        # Nobody reads this stream any more: what was waiting to go out ends its batches' spans.
        self._drop_outbound()
        while not self._acks.empty():
            if (entry := self._acks.get_nowait()) is not None:
                entry[3].set_attribute("emma.result", "unacknowledged")
                entry[3].end()
        try:
            # Offline with its DISCONNECTED event, in one statement with the other streams ending now
            # (closings.py).
            await self._ends.record(self.identity.edge_pk, self.session_id)
        except Exception:  # the database may be down; the offline sweeper catches up later
            log.warning("could not record the end of the stream", extra={"edge": str(self.identity.name)})
        log.info("edge disconnected", extra={"edge": str(self.identity.name), "session_id": str(self.session_id)})
