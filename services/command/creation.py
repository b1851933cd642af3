"""Creating one command: validate, store QUEUED, notify the edge's replica; idempotent on request_id.

Used by CreateCommand and by fleet dispatch (one child command per edge).

Idempotency (AIP-155) here is the command's own, not the platform's `run_once`: the request_id and
the request's hash are columns of the command row, unique per edge, written by the one call
(app.create_command, migrations 0023 and 0026) that also enforces the rate and queue limits. A retry answers
with the command as it is *now* (its current state and transitions), where `run_once` replays a
stored response snapshot; and the create path stays one lookup plus one call (the latency an
operator feels), with no idempotency table to write in the same transaction. CreateCommand's audit
row is written by that same call (one commit, one wait for the disk, for the command and its row).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable

import asyncpg
import grpc
from emma.command.v1 import command_pb2
from emma.common.v1 import errors_pb2

from core.metrics import record_command_transition
from services.command import states, store, transitions, validation
from services.command.local import LocalDelivery
from services.errors import ApiError, not_found
from services.identity import AuditRow
from services.names import EdgeName
from services.platform.migrations import Conn
from services.registry import edge_with_device
from services.telemetry import LATEST_OF_DEVICE, latest_of_device

log = logging.getLogger("emma.command")

# An earlier command of this edge with the same request_id.
_EARLIER = "SELECT id, request_hash FROM app.commands WHERE edge_pk = $1 AND request_id = $2"


async def create_one(
    conn: Conn,
    edge: EdgeName,
    channel: str,
    value: float,
    ttl: dt.timedelta,
    *,
    issued: dt.datetime | None,
    creator: str,
    request_id: str,
    digest: str,
    traceparent: str = "",
    fleet_dispatch: uuid.UUID | None = None,
    replica_id: str,
    on_stored: Callable[[int], None] | None = None,
    delivery: LocalDelivery | None = None,
    audit: AuditRow | None = None,
    command_id: uuid.UUID | None = None,
) -> command_pb2.Command:
    """Validate and store one command (also used by fleet dispatch); idempotent on request_id.

    Few round trips on purpose (this is the latency an operator feels): the edge with the device's
    declaration (registry) and the device's latest values (telemetry's expression, for the dynamic
    limits) in one statement, then one call of
    app.create_command (an earlier command with this request_id, or the lock, the limits, the insert,
    its event and the notification, committed together). `conn` must not be in a transaction: the
    call's commit is the command's durability.
    `on_stored(edge_pk)` runs once a new command committed.
    `delivery`: this process's relay; when it holds the edge's stream, the same call also marks the
    command (and the edge's older queued ones) DELIVERED and the relay sends them before this returns,
    with no delivery call and no notification's round trip in between (migration 0026).
    `audit`: CreateCommand's audit row, written by the create call itself when it stores the command, so
    both commit together (one round trip, one wait for the disk); `on_stored` then says it was written.
    `command_id`: the id a new command gets (default: a fresh one), so a caller can subscribe to its
    changes before it exists; a retried request_id answers with the earlier command's id instead.
    """
    device_id = validation.check_address(channel)
    # The device's latest values come with the edge (one round trip): the declaration found here names
    # the channel that limits the value, so a separate read would have to wait for it.
    found = await edge_with_device(conn, edge, device_id, also=LATEST_OF_DEVICE)
    if found is None:
        raise not_found(str(edge))
    pk, declaration, latest = found
    now = dt.datetime.now(dt.UTC)
    try:
        validation.check_issued_time(issued or now, now)
        spec = validation.spec_in_inventory(declaration, channel)
        validation.check_static(spec, channel, value)
        validation.check_dynamic(latest_of_device(latest), spec, channel, value, now)
    except ApiError:
        # A retry of a stored request is answered with its command even when the request would not
        # pass today (its limits' telemetry went stale since): the earlier command comes first. Only
        # refusals pay this lookup; the stored path finds the earlier command in create_command.
        earlier = await conn.fetchrow(_EARLIER, pk, request_id)
        if earlier is not None:
            return await _replay(conn, earlier["id"], earlier["request_hash"], digest, request_id)
        raise
    command_id = command_id or uuid.uuid4()

    async def create(deliver_limit: int) -> transitions.Created:
        return await transitions.create_queued(
            conn,
            command_id,
            pk,
            channel,
            value,
            issued or now,
            ttl,
            creator=creator,
            request_id=request_id,
            digest=digest,
            fleet_dispatch=fleet_dispatch,
            traceparent=traceparent,
            replica_id=replica_id,
            rate_limit_per_s=validation.RATE_LIMIT_PER_S,
            queue_cap=validation.QUEUE_CAP,
            deliver_limit=deliver_limit,
            audit=audit,
        )

    def queued() -> None:
        record_command_transition(states.QUEUED)  # committed: a replayed request_id returned before
        log.info(
            "command queued",
            extra={"command_id": str(command_id), "edge": str(edge), "channel": channel, "value": value},
        )

    try:
        if delivery is not None and delivery.holds(pk):
            # The lock keeps a delivery pass of the relay from overtaking these on the way to the edge.
            async with delivery.lock(pk):
                result = await create(transitions.DELIVER_LIMIT)
                if result.delivered:  # the new command is among them (the log says queued first)
                    await delivery.send_delivered(pk, result.delivered, before_logs=queued)
        else:
            result = await create(0)
        stored = result.stored
    except asyncpg.UniqueViolationError:
        # The same request_id raced in from a retry on another connection: answer with the first.
        earlier = await conn.fetchrow(_EARLIER, pk, request_id)
        assert earlier is not None
        return await _replay(conn, earlier["id"], earlier["request_hash"], digest, request_id)
    if stored["r_earlier_id"] is not None:
        return await _replay(conn, stored["r_earlier_id"], stored["r_earlier_hash"], digest, request_id)
    if stored["r_create_time"] is None:
        raise (
            validation.rate_limited() if stored["r_rate_n"] >= validation.RATE_LIMIT_PER_S else validation.queue_full()
        )
    if on_stored is not None:
        on_stored(pk)
    if not result.delivered:
        queued()
    created = {
        "id": command_id,
        "channel": channel,
        "value": value,
        "state": states.QUEUED,
        "state_reason": "",
        "applied_value": None,
        "issued_time": issued or now,
        "create_time": stored["r_create_time"],
        "update_time": stored["r_create_time"],
        "expire_time": stored["r_expire_time"],
        "creator": creator,
        "fleet_dispatch": fleet_dispatch,
    }
    event = {
        "from_state": "",
        "to_state": states.QUEUED,
        "event_time": stored["r_create_time"],
        "reason": "",
        "message": "",
    }
    return store.to_proto(created, edge, [event])


async def _replay(
    conn: Conn, command_id: uuid.UUID, stored_hash: str, digest: str, request_id: str
) -> command_pb2.Command:
    if stored_hash != digest:
        raise ApiError(
            grpc.StatusCode.ALREADY_EXISTS,
            errors_pb2.ERROR_REASON_REQUEST_ID_REUSED,
            f"request_id {request_id!r} was used for a different command",
            metadata={"request_id": request_id},
        )
    command = await store.load(conn, command_id)
    assert command is not None
    return command
