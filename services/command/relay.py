"""The EdgeLink side of commands: deliver queued commands on the edge's stream, record its acks.

Each EdgeLink replica LISTENs for "an edge has new commands" and delivers to the edges whose streams
it holds, oldest first. A command is marked DELIVERED in the same statement that selects it, so two
replicas never both deliver it; a command already DELIVERED or RECEIVED is sent again when its edge
reconnects (the edge deduplicates by name). A poll every few seconds and a full pass after the LISTEN
connection comes back cover notifications that were lost. CreateCommand of the same process delivers
a new command in its own call when the edge's stream is held here and hands it over (send_delivered);
one lock per edge keeps the two ways of delivering from overtaking each other.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import asyncpg
from emma.edge.v1 import edge_link_pb2

from core.metrics import record_command_transition
from services.command import local, states
from services.command.local import Change
from services.command.transitions import DELIVER_LIMIT, EDGE_CHANNEL, Ack, apply_acks, deliver_queued
from services.platform.notify import Listener
from services.platform.rpc import timestamp

log = logging.getLogger("emma.command.relay")

POLL_INTERVAL_S = 2.0
# How long CreateCommand waits to hand commands it delivered to a stream whose queue is full.
SEND_WAIT_S = 2.0
ACKS_PER_SECOND = 100.0

_IN_FLIGHT = """
SELECT id, seq, channel, value, expire_time, create_time, traceparent FROM app.commands
WHERE edge_pk = $1 AND state IN ('DELIVERED', 'RECEIVED') ORDER BY seq
"""

_ACK_TO_STATE = {
    edge_link_pb2.COMMAND_ACK_STATUS_RECEIVED: states.RECEIVED,
    edge_link_pb2.COMMAND_ACK_STATUS_EXECUTED: states.EXECUTED,
    edge_link_pb2.COMMAND_ACK_STATUS_REJECTED: states.REJECTED_BY_EDGE,
    edge_link_pb2.COMMAND_ACK_STATUS_FAILED: states.FAILED,
}


class CommandSink(Protocol):
    """What the relay needs of an edge session."""

    @property
    def edge_pk(self) -> int: ...

    @property
    def edge_name(self) -> str: ...

    async def send(self, response: edge_link_pb2.ConnectResponse) -> None: ...


def _edge_command(edge_name: str, row: Any) -> edge_link_pb2.ConnectResponse:
    return edge_link_pb2.ConnectResponse(
        command=edge_link_pb2.EdgeCommand(
            name=f"{edge_name}/commands/{row['id']}",
            channel=row["channel"],
            value=row["value"],
            expire_time=timestamp(row["expire_time"]),
            create_time=timestamp(row["create_time"]),
            traceparent=row["traceparent"],
        )
    )


class TokenBucket:
    """Paces a producer instead of dropping: `await take()` waits for a token."""

    def __init__(self, rate: float, burst: float) -> None:
        self._rate, self._burst = rate, burst
        self._tokens, self._last = burst, time.monotonic()

    async def take(self) -> None:
        while True:
            now = time.monotonic()
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now
            if self._tokens >= 1:
                self._tokens -= 1
                return
            await asyncio.sleep((1 - self._tokens) / self._rate)


class CommandRelay:
    def __init__(self, pool: asyncpg.Pool, dsn: str, replica_id: str) -> None:
        self._pool = pool
        self._replica_id = replica_id
        self._sinks: dict[int, CommandSink] = {}
        self._pending: dict[int, asyncio.Task[None]] = {}
        self._again: set[int] = set()
        self._locks: dict[int, asyncio.Lock] = {}
        self._listener = Listener(dsn, [EDGE_CHANNEL], self._on_notify, self._deliver_all)
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._listener.start()
        self._poller = asyncio.create_task(self._poll(), name="command-poll")
        local.hub(self._pool).delivery = self

    async def stop(self) -> None:
        hub = local.hub(self._pool)
        if hub.delivery is self:
            hub.delivery = None
            local.leave(self._pool)
        if self._poller:
            self._poller.cancel()
        await self._listener.stop()
        for task in list(self._pending.values()):
            task.cancel()

    # ---------------------------------------------------------------- sessions

    async def attach(self, sink: CommandSink) -> None:
        """A stream of this edge opened here: resend what is in flight, then deliver the queue."""
        self._sinks[sink.edge_pk] = sink
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(_IN_FLIGHT, sink.edge_pk)
        for row in rows:
            log.info("command redelivered", extra={"command_id": str(row["id"]), "edge": sink.edge_name})
            await sink.send(_edge_command(sink.edge_name, row))
        self.trigger(sink.edge_pk)

    def detach(self, sink: CommandSink) -> None:
        if self._sinks.get(sink.edge_pk) is sink:
            del self._sinks[sink.edge_pk]
            lock = self._locks.get(sink.edge_pk)
            if lock is not None and not lock.locked():
                del self._locks[sink.edge_pk]

    # ---------------------------------------------------------------- delivery (LocalDelivery too)

    def holds(self, edge_pk: int) -> bool:
        return edge_pk in self._sinks

    def lock(self, edge_pk: int) -> asyncio.Lock:
        lock = self._locks.get(edge_pk)
        if lock is None:
            lock = self._locks[edge_pk] = asyncio.Lock()
        return lock

    async def send_delivered(
        self, edge_pk: int, rows: list[dict[str, Any]], before_logs: Callable[[], None] | None = None
    ) -> None:
        """Commands CreateCommand of this process just marked DELIVERED (migration 0026), oldest first.

        The commands leave first: they are put on the stream and the stream's handler is given its turn
        to hand them to gRPC before anything else here (metrics, log lines, and `before_logs`, the
        caller's own, so its lines come before "command delivered"); the edge then works on them while
        this process does the rest. If the stream went away meanwhile they stay DELIVERED and go out
        again when the edge reconnects (attach), as after any delivery its stream did not survive.
        """
        if not rows:
            return
        # Watchers first: a change they see from memory must not come after the edge's acks.
        self._publish(Change(row["id"], states.QUEUED, states.DELIVERED, row["event_time"]) for row in rows)
        sink = self._sinks.get(edge_pk)
        sent = 0
        if sink is not None:
            try:
                # The stream's queue is full only when the edge stopped reading; CreateCommand waits for
                # it a bounded time (what was not sent goes out on a reconnect, or fails by EDGE_TIMEOUT).
                async with asyncio.timeout(SEND_WAIT_S):
                    for row in rows:
                        await sink.send(_edge_command(sink.edge_name, row))
                        sent += 1
                # The stream's handler was woken by the put; without this turn it would wait until this
                # call's task next awaits, after the work below and the rest of CreateCommand.
                await asyncio.sleep(0)
            except TimeoutError:
                log.warning("the edge's stream is not reading; commands stay delivered", extra={"edge": sink.edge_name})
        if before_logs is not None:
            before_logs()
        record_command_transition(states.DELIVERED, len(rows))
        if sink is not None:
            for row in rows[:sent]:
                log.info("command delivered", extra={"command_id": str(row["id"]), "edge": sink.edge_name})
        if len(rows) >= DELIVER_LIMIT:  # more may be queued behind them
            self.trigger(edge_pk)

    def _on_notify(self, _channel: str, payload: str) -> None:
        try:
            edge_pk = int(payload)
        except ValueError:
            return
        if edge_pk in self._sinks:
            self.trigger(edge_pk)

    def trigger(self, edge_pk: int) -> None:
        """Deliver this edge's queue soon; triggers during a delivery coalesce into one more pass."""
        if edge_pk in self._pending and not self._pending[edge_pk].done():
            self._again.add(edge_pk)
            return
        self._pending[edge_pk] = asyncio.create_task(self._deliver(edge_pk), name=f"deliver-{edge_pk}")

    async def _deliver(self, edge_pk: int) -> None:
        while True:
            self._again.discard(edge_pk)
            sink = self._sinks.get(edge_pk)
            if sink is None:
                return
            async with self.lock(edge_pk):
                try:
                    # One call, committed without waiting for the disk (migration 0023 says why).
                    async with self._pool.acquire() as conn:
                        rows = await deliver_queued(conn, edge_pk, self._replica_id)
                except Exception:
                    log.warning("command delivery failed; the poll retries", exc_info=True)
                    return
                if rows:
                    record_command_transition(states.DELIVERED, len(rows))
                    self._publish(Change(row["id"], states.QUEUED, states.DELIVERED, row["event_time"]) for row in rows)
                for row in rows:
                    log.info("command delivered", extra={"command_id": str(row["id"]), "edge": sink.edge_name})
                    await sink.send(_edge_command(sink.edge_name, row))
            if len(rows) < DELIVER_LIMIT and edge_pk not in self._again:
                return

    async def _deliver_all(self) -> None:
        for edge_pk in list(self._sinks):
            self.trigger(edge_pk)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            local = list(self._sinks)
            if not local:
                continue
            try:
                async with self._pool.acquire() as conn:
                    rows = await conn.fetch(
                        "SELECT DISTINCT edge_pk FROM app.commands WHERE state = 'QUEUED' AND edge_pk = ANY($1)",
                        local,
                    )
                for r in rows:
                    self.trigger(r["edge_pk"])
            except Exception:
                log.warning("command poll failed", exc_info=True)

    # ---------------------------------------------------------------- acknowledgements

    async def on_ack(self, sink: CommandSink, ack: edge_link_pb2.CommandAck) -> None:
        await self.on_acks(sink, [ack])

    async def on_acks(self, sink: CommandSink, acks: list[edge_link_pb2.CommandAck]) -> None:
        """Apply an edge's acks, in the order it sent them, in one call (one round trip, one commit)."""
        batch: list[Ack] = []
        for ack in acks:
            to_state = _ACK_TO_STATE.get(ack.status)
            command_id = _command_id(sink.edge_name, ack.command)
            if to_state is None or command_id is None:
                log.warning("malformed command ack ignored", extra={"edge": sink.edge_name, "command": ack.command})
                continue
            batch.append(
                Ack(
                    command_id,
                    to_state,
                    reason=ack_reason(ack),
                    message=ack.message,
                    applied_value=ack.applied_value if to_state == states.EXECUTED else None,
                )
            )
        if not batch:
            return
        async with self._pool.acquire() as conn:
            applied = await apply_acks(conn, batch, self._replica_id)
        if applied and self._publish(
            Change(
                a.ack.command_id,
                a.from_state,
                a.ack.to_state,
                a.event_time,
                a.ack.reason,
                a.ack.message,
                a.applied_value,
            )
            for a in applied
        ):
            # A caller waiting for one of these (CreateCommand's final_state_wait, a WatchCommand stream)
            # answers in this turn, before the log lines below and the stream's next acks.
            await asyncio.sleep(0)
        changed = {id(a.ack): a for a in applied}
        for item in batch:
            extra = {
                "command_id": str(item.command_id),
                "edge": sink.edge_name,
                "state": item.to_state,
                "reason": item.reason,
            }
            done = changed.get(id(item))
            if done is None:
                # Late or repeated (a duplicate delivery, or after edge_timeout): the state machine said no.
                log.info("command ack did not change the state", extra=extra)
            else:
                record_command_transition(item.to_state)
                log.info("command acknowledged", extra={**extra, "from_state": done.from_state})

    def _publish(self, changes: Iterable[Change]) -> bool:
        """Committed transitions, for the WatchCommand streams of this process (if it serves any);
        whether any of them was watched."""
        changed = local.hub(self._pool).changed
        if changed is None:
            return False
        watched = False
        for change in changes:
            watched = changed(change) or watched
        return watched


def _command_id(edge_name: str, name: str) -> uuid.UUID | None:
    prefix = f"{edge_name}/commands/"
    if not name.startswith(prefix):
        return None
    try:
        return uuid.UUID(name[len(prefix) :])
    except ValueError:
        return None


def ack_reason(ack: edge_link_pb2.CommandAck) -> str:
    """The reason string stored for an ack: its reason_code's (the name without the prefix, "expired"
    for EXPIRED), or the edge's own string when it sent no code (edges before it) or one we do not know."""
    code = ack.reason_code
    if code == edge_link_pb2.COMMAND_ACK_REASON_UNSPECIFIED or code not in edge_link_pb2.CommandAckReason.values():
        return ack.reason
    if code == edge_link_pb2.COMMAND_ACK_REASON_EXPIRED:
        return "expired"
    return edge_link_pb2.CommandAckReason.Name(code).removeprefix("COMMAND_ACK_REASON_")
