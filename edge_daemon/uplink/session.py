"""One Connect stream: Hello -> Welcome, then telemetry, acks, commands, schedules and heartbeats.

Tasks of a session (all end together; the first failure ends the session):

- writer: the only task that writes to the stream. Everything to send goes through one bounded queue,
  so a slow network blocks the producers of messages instead of growing memory.
- reader: the only task that reads. Telemetry acks go to the acker; commands to the command handler;
  schedules to the schedule follower; a blocked acker or a full outbound queue stops the reading, and
  HTTP/2 flow control pushes back to the cloud.
- telemetry: sends outbox batches in batch_seq order, starting after the cloud's last stored one, with
  at most Welcome.max_unacked_batches in flight. A batch that uses a channel the session's table
  lacks is preceded by a ChannelTableAppend.
- acker: deletes acknowledged batches from the outbox (STORED and DUPLICATE: stored; REJECTED: resending
  cannot help, so it is dropped and the reason logged) and frees their window slots.
- command acks: sends whatever the command journal holds unsent, and marks each one sent once written.
- heartbeat: outbox depth and the cycle's health every Welcome.heartbeat_interval.

A session returns how the stream ended; reconnecting is the caller's business (uplink.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import grpc
from emma.edge.v1 import edge_link_pb2, edge_link_pb2_grpc
from google.protobuf.message import DecodeError

from core.tasks import stop_tasks
from edge_daemon.channel_registry import ChannelRegistry
from edge_daemon.config import CloudConfig
from edge_daemon.errors import EdgeError
from edge_daemon.outbox import Batch, Outbox
from edge_daemon.uplink.batches import BatchProducer
from edge_daemon.uplink.commands import CommandHandler
from edge_daemon.uplink.connection import StreamStatus, open_channel, status_of_call, status_of_error
from edge_daemon.uplink.journal import PendingAck
from edge_daemon.uplink.schedules import apply_schedule
from edge_daemon.uplink.wire import (
    PROTOCOL_VERSION,
    channel_descriptors,
    device_inventory,
    duration_s,
    seconds,
    timestamp,
)

if TYPE_CHECKING:
    from edge_daemon.daemon import EdgeDaemon

log = logging.getLogger(__name__)

DEFAULT_WINDOW: Final = 8
DEFAULT_HEARTBEAT_S: Final = 5.0
OUTBOUND_QUEUE: Final = 64
STORED: Final = edge_link_pb2.TELEMETRY_ACK_RESULT_STORED
DUPLICATE: Final = edge_link_pb2.TELEMETRY_ACK_RESULT_DUPLICATE
REJECTED: Final = edge_link_pb2.TELEMETRY_ACK_RESULT_REJECTED


class StreamEnded(EdgeError):
    def __init__(self, status: StreamStatus) -> None:
        super().__init__(f"{status.code_name} {status.reason} {status.details}".strip())
        self.status = status


@dataclass
class UplinkStats:
    """Counters for logs, tests and operators (one instance per uplink, across sessions)."""

    attempts: int = 0
    sessions: int = 0
    connected: bool = False
    auth_failures: int = 0
    batches_sent: int = 0
    batches_stored: int = 0
    batches_duplicate: int = 0
    batches_rejected: int = 0
    heartbeats_sent: int = 0
    clock_offset_ms: float = 0.0
    last_end: StreamStatus | None = None
    session_id: str = ""
    rejections: list[tuple[int, str]] = field(default_factory=list)  # the last 100 (seq, reason)


@dataclass(frozen=True, slots=True)
class SessionEnd:
    welcomed: bool
    duration_s: float
    status: StreamStatus


@dataclass(slots=True)
class _Outgoing:
    request: edge_link_pb2.ConnectRequest
    on_sent: Callable[[], Awaitable[None]] | None = None


_Call = grpc.aio.StreamStreamCall[edge_link_pb2.ConnectRequest, edge_link_pb2.ConnectResponse]


class Session:
    def __init__(
        self,
        *,
        daemon: EdgeDaemon,
        outbox: Outbox,
        registry: ChannelRegistry,
        cloud: CloudConfig,
        api_key: str,
        agent_version: str,
        producer: BatchProducer,
        commands: CommandHandler,
        stats: UplinkStats,
        root_certificates: bytes | None = None,
    ) -> None:
        self.daemon = daemon
        self.outbox = outbox
        self.registry = registry
        self.cloud = cloud
        self.api_key = api_key
        self.agent_version = agent_version
        self.producer = producer
        self.commands = commands
        self.stats = stats
        self.root_certificates = root_certificates
        self.session_id = ""
        self.heartbeat_s = DEFAULT_HEARTBEAT_S
        self._outbound: asyncio.Queue[_Outgoing] = asyncio.Queue(maxsize=OUTBOUND_QUEUE)
        self._window = asyncio.Semaphore(DEFAULT_WINDOW)
        self._window_size = DEFAULT_WINDOW
        self._acks: asyncio.Queue[edge_link_pb2.TelemetryAck] = asyncio.Queue()
        self._in_flight: deque[int] = deque()
        self._sent_after = 0
        self._table: set[int] = set()

    async def run(self) -> SessionEnd:
        began = time.monotonic()
        welcomed = False
        channel = open_channel(self.cloud, self.root_certificates)
        call: _Call = edge_link_pb2_grpc.EdgeLinkServiceStub(channel).Connect(None)
        try:
            welcome = await self._handshake(call)
            welcomed = True
            await self._on_welcome(welcome)
            await self._serve(call)
            status = StreamStatus(None, "", "session ended")  # not reached: _serve only raises
        except StreamEnded as exc:
            status = exc.status
        except grpc.aio.AioRpcError as exc:
            status = status_of_error(exc)
        except TimeoutError:
            status = StreamStatus(grpc.StatusCode.DEADLINE_EXCEEDED, "", "no Welcome in time")
        finally:
            self.stats.connected = False
            call.cancel()
            with contextlib.suppress(Exception):
                await channel.close(None)
        return SessionEnd(welcomed, time.monotonic() - began, status)

    # -- handshake -------------------------------------------------------------------------------

    async def _hello(self) -> edge_link_pb2.ConnectRequest:
        table = channel_descriptors(self.registry.table())
        self._table = {d.index for d in table}
        last_seq = await asyncio.to_thread(self.outbox.last_seq)
        return edge_link_pb2.ConnectRequest(
            hello=edge_link_pb2.Hello(
                edge=self.cloud.edge,
                api_key=self.api_key,
                agent_version=self.agent_version,
                protocol_version=PROTOCOL_VERSION,
                edge_time=timestamp(self.daemon.clock.time()),
                devices=device_inventory(self.daemon.devices.devices),
                channel_table=table,
                last_batch_seq=last_seq,
            )
        )

    async def _handshake(self, call: _Call) -> edge_link_pb2.Welcome:
        hello = await self._hello()
        async with asyncio.timeout(self.cloud.connect_timeout_s):
            await self._write(call, hello)
            response = await call.read()
        if not isinstance(response, edge_link_pb2.ConnectResponse):  # EOF: the cloud closed the stream
            raise StreamEnded(await status_of_call(call))
        if response.WhichOneof("message") != "welcome":
            raise StreamEnded(StreamStatus(None, "WELCOME_EXPECTED", f"got {response.WhichOneof('message')} first"))
        return response.welcome

    async def _on_welcome(self, welcome: edge_link_pb2.Welcome) -> None:
        last_stored = welcome.last_stored_batch_seq
        async with self.producer.seq_lock:
            stored = await asyncio.to_thread(self.outbox.ack_up_to, last_stored)
            await asyncio.to_thread(self.outbox.advance_seq, last_stored)
        self._window_size = welcome.max_unacked_batches or DEFAULT_WINDOW
        self._window = asyncio.Semaphore(self._window_size)
        self._acks = asyncio.Queue(maxsize=self._window_size * 2 + 16)
        self._sent_after = last_stored
        if welcome.HasField("heartbeat_interval") and duration_s(welcome.heartbeat_interval) > 0:
            self.heartbeat_s = duration_s(welcome.heartbeat_interval)
        self.producer.limit_points(welcome.max_batch_points)
        self.session_id = welcome.session_id
        offset_ms = (self.daemon.clock.time() - seconds(welcome.server_time)) * 1000
        self.stats.sessions += 1
        self.stats.connected = True
        self.stats.session_id = welcome.session_id
        self.stats.clock_offset_ms = offset_ms
        log.info(
            "connected to the cloud",
            extra={
                "session_id": welcome.session_id,
                "last_stored_batch_seq": last_stored,
                "outbox_acked_at_welcome": stored,
                "outbox_batches": len(self.outbox),
                "window": self._window_size,
                "clock_offset_ms": round(offset_ms, 1),
            },
        )

    # -- the running stream ----------------------------------------------------------------------

    async def _serve(self, call: _Call) -> None:
        await _first_failure(
            [
                self._writer(call),
                self._reader(call),
                self._telemetry(),
                self._acker(),
                self._command_acks(),
                self._heartbeats(),
            ]
        )

    async def _write(self, call: _Call, request: edge_link_pb2.ConnectRequest) -> None:
        try:
            await call.write(request)
        except asyncio.InvalidStateError:  # the RPC already ended: report how
            raise StreamEnded(await status_of_call(call)) from None

    async def _writer(self, call: _Call) -> None:
        while True:
            item = await self._outbound.get()
            await self._write(call, item.request)
            if item.on_sent is not None:
                await item.on_sent()

    async def _reader(self, call: _Call) -> None:
        while True:
            response = await call.read()
            if not isinstance(response, edge_link_pb2.ConnectResponse):
                raise StreamEnded(await status_of_call(call))
            kind = response.WhichOneof("message")
            if kind == "telemetry_ack":
                await self._acks.put(response.telemetry_ack)
            elif kind == "command":
                await self.commands.on_command(response.command)
            elif kind == "schedule":
                ack = apply_schedule(self.daemon, response.schedule, self.daemon.clock.time())
                await self._outbound.put(_Outgoing(edge_link_pb2.ConnectRequest(schedule_ack=ack)))
            elif kind == "heartbeat_ack":
                self._on_heartbeat_ack(response.heartbeat_ack)
            elif kind == "config_update":
                self._on_config_update(response.config_update)
            else:
                log.warning("unexpected message from the cloud", extra={"kind": kind})

    # telemetry -----------------------------------------------------------------------------------

    async def _telemetry(self) -> None:
        buffered: deque[Batch] = deque()
        resent_logged = False
        while True:
            await self._window.acquire()
            if not buffered:
                self.producer.appended.clear()
                rows = await asyncio.to_thread(self.outbox.pending, self._window_size, self._sent_after)
                if not rows:
                    self._window.release()
                    await self.producer.appended.wait()
                    continue
                if not resent_logged:
                    resent_logged = True
                    log.info(
                        "sending the outbox",
                        extra={"batch_seq": rows[0].batch_seq, "outbox_batches": len(self.outbox)},
                    )
                buffered.extend(rows)
            row = buffered.popleft()
            self._sent_after = row.batch_seq
            batch = await self._decode(row)
            if batch is None:
                self._window.release()
                continue
            missing = set(batch.channel_indexes) - self._table
            if missing:
                await self._append_channels(missing)
            self._in_flight.append(row.batch_seq)
            await self._outbound.put(_Outgoing(edge_link_pb2.ConnectRequest(telemetry_batch=batch)))
            self.stats.batches_sent += 1
            log.debug("telemetry batch sent", extra={"batch_seq": row.batch_seq})

    async def _decode(self, row: Batch) -> edge_link_pb2.TelemetryBatch | None:
        try:
            batch = edge_link_pb2.TelemetryBatch.FromString(row.payload)
        except DecodeError:
            log.error("unreadable outbox batch dropped", extra={"batch_seq": row.batch_seq})
            await asyncio.to_thread(self.outbox.ack, row.batch_seq)
            return None
        if batch.batch_seq != row.batch_seq:  # the outbox's row is the truth (see batches.py)
            log.error(
                "outbox batch carried a different batch_seq; re-stamped",
                extra={"batch_seq": row.batch_seq, "payload_batch_seq": batch.batch_seq},
            )
            batch.batch_seq = row.batch_seq
        return batch

    async def _append_channels(self, missing: set[int]) -> None:
        new = [e for e in self.registry.table() if e.index in missing]
        descriptors = channel_descriptors(new)
        self._table.update(d.index for d in descriptors)
        if descriptors:
            log.info("channel table extended", extra={"channels": [d.channel for d in descriptors]})
            await self._outbound.put(
                _Outgoing(
                    edge_link_pb2.ConnectRequest(
                        channel_table_append=edge_link_pb2.ChannelTableAppend(channels=descriptors)
                    )
                )
            )

    async def _acker(self) -> None:
        while True:
            acks = [await self._acks.get()]
            while not self._acks.empty():
                acks.append(self._acks.get_nowait())
            seqs = sorted({a.batch_seq for a in acks})
            head = list(self._in_flight)[: len(seqs)]
            if seqs == head:
                # The usual case: the oldest batches in flight, acknowledged in order. One transaction.
                await asyncio.to_thread(self.outbox.ack_up_to, seqs[-1])
            else:
                for seq in seqs:
                    await asyncio.to_thread(self.outbox.ack, seq)
            for ack in acks:
                self._on_telemetry_ack(ack)

    def _on_telemetry_ack(self, ack: edge_link_pb2.TelemetryAck) -> None:
        seq = ack.batch_seq
        if seq in self._in_flight:
            self._in_flight.remove(seq)
            self._window.release()
        if ack.result == STORED:
            self.stats.batches_stored += 1
            log.debug("telemetry batch stored by the cloud", extra={"batch_seq": seq})
        elif ack.result == DUPLICATE:
            self.stats.batches_duplicate += 1
            log.info("telemetry batch was already stored", extra={"batch_seq": seq})
        else:
            self.stats.batches_rejected += 1
            self.stats.rejections = [*self.stats.rejections[-99:], (seq, ack.reason)]
            log.error(
                "telemetry batch rejected by the cloud and dropped: %s",
                ack.message,
                extra={"batch_seq": seq, "reason": ack.reason},
            )

    # commands, heartbeats, settings ---------------------------------------------------------------

    async def _command_acks(self) -> None:
        queued: set[tuple[str, int]] = set()
        while True:
            self.commands.changed.clear()
            for pending in await self.commands.unsent():
                key = (pending.name, int(pending.status))
                if key in queued:
                    continue
                queued.add(key)
                await self._outbound.put(
                    _Outgoing(
                        edge_link_pb2.ConnectRequest(command_ack=pending.ack),
                        self._ack_sent_callback(pending, queued, key),
                    )
                )
            await self.commands.changed.wait()

    def _ack_sent_callback(
        self, pending: PendingAck, queued: set[tuple[str, int]], key: tuple[str, int]
    ) -> Callable[[], Awaitable[None]]:
        async def sent() -> None:
            await self.commands.mark_sent(pending)
            queued.discard(key)

        return sent

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            heartbeat = edge_link_pb2.Heartbeat(
                edge_time=timestamp(self.daemon.clock.time()),
                outbox_batches=len(self.outbox),
                outbox_bytes=self.outbox.total_bytes,
                cycle_overruns=self.daemon.cycle.stats.overruns,
                cycle_lateness_p99_ms=self.producer.lateness.p99(),
            )
            await self._outbound.put(_Outgoing(edge_link_pb2.ConnectRequest(heartbeat=heartbeat)))
            self.stats.heartbeats_sent += 1

    def _on_heartbeat_ack(self, ack: edge_link_pb2.HeartbeatAck) -> None:
        now = self.daemon.clock.time()
        sent = seconds(ack.edge_time)
        # NTP-style: the server's clock at the midpoint of the round trip.
        self.stats.clock_offset_ms = ((sent + now) / 2 - seconds(ack.server_time)) * 1000
        log.debug("heartbeat acknowledged", extra={"rtt_ms": round((now - sent) * 1000, 1)})

    def _on_config_update(self, update: edge_link_pb2.ConfigUpdate) -> None:
        if update.HasField("telemetry_interval") and duration_s(update.telemetry_interval) > 0:
            self.producer.interval_s = max(0.1, duration_s(update.telemetry_interval))
        if update.HasField("heartbeat_interval") and duration_s(update.heartbeat_interval) > 0:
            self.heartbeat_s = duration_s(update.heartbeat_interval)
        log.info(
            "settings updated by the cloud",
            extra={"batch_interval_s": self.producer.interval_s, "heartbeat_s": self.heartbeat_s},
        )


async def _first_failure(coros: list[Coroutine[Any, Any, None]]) -> None:
    """Run the coroutines until the first one ends; cancel the rest; re-raise what ended it."""
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
        raise StreamEnded(StreamStatus(None, "", "a session task returned"))
    finally:
        await stop_tasks(tasks)
