"""CommandService: create (validated, durable, idempotent), get, list, watch, cancel, fleet dispatch."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
from emma.command.v1 import command_pb2, command_pb2_grpc
from emma.common.v1 import errors_pb2

from services.command import fleet, states, store, validation
from services.command.watch import CommandWatcher
from services.command.workers import CommandWorkers
from services.errors import ApiError, invalid_field, not_found
from services.identity import caller
from services.names import EdgeName, parse_edge, parse_site
from services.pagination import Page
from services.platform.migrations import Conn
from services.platform.runtime import Runtime

log = logging.getLogger("emma.command")

Context = grpc.aio.ServicerContext[Any, Any]
DEFAULT_TTL = dt.timedelta(minutes=5)
MAX_TTL = dt.timedelta(hours=24)


def caller_name(context: Context) -> str:
    """Who is calling (users/{id}), for `creator` and the per-caller rate limit.

    The auth interceptor already checked the caller's role in the organization of the request's
    path; fleet targets of other organizations are refused in fleet.py.
    """
    return caller(context).actor


def traceparent_of(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "traceparent" and isinstance(value, str):
            return value
    return ""


def _parse_command_name(name: str) -> tuple[EdgeName, uuid.UUID]:
    edge_part, sep, command_id = name.rpartition("/commands/")
    edge = parse_edge(edge_part if sep else name, "name")
    try:
        return edge, uuid.UUID(command_id)
    except ValueError:
        raise invalid_field("name", f"{name!r} does not end in /commands/{{command id}}") from None


def request_hash(parent: str, command: command_pb2.Command) -> str:
    """What makes two CreateCommand requests "the same request" for AIP-155."""
    ttl = command.ttl.ToTimedelta().total_seconds() if command.HasField("ttl") else 0
    return hashlib.sha256(f"{parent}|{command.channel}|{command.value!r}|{ttl}".encode()).hexdigest()


# The edge, an earlier command with this request_id, and the device's declared channels, in one trip.
_LOOKUP = """
SELECT e.pk, c.id AS existing_id, c.request_hash, i.channels AS inventory
FROM app.edges e
LEFT JOIN app.commands c ON c.edge_pk = e.pk AND c.request_id = $4
LEFT JOIN app.edge_inventory i ON i.edge_pk = e.pk AND i.device_id = $5
WHERE e.org_id = $1 AND e.site_id = $2 AND e.edge_id = $3
"""

# Rate and queue checks, the command, its first event and the notification of the replica holding the
# edge, in one statement (run after the caller's advisory lock, so its snapshot sees every command of
# this caller that committed before). Nothing is inserted when a limit is reached.
_INSERT = """
WITH rate AS (
    SELECT count(*) AS n FROM app.commands WHERE creator = $7 AND create_time > now() - interval '1 second'
),
queue AS (
    SELECT count(*) AS n FROM (SELECT 1 FROM app.commands WHERE edge_pk = $2 AND state = 'QUEUED' LIMIT $14) q
),
ins AS (
    INSERT INTO app.commands (id, edge_pk, channel, value, state, issued_time, expire_time, creator, request_id,
                              request_hash, fleet_dispatch, traceparent)
    SELECT $1, $2, $3, $4, 'QUEUED', $5, now() + $6::interval, $7, $8, $9, $10, $11
    FROM rate, queue WHERE rate.n < $13 AND queue.n < $14
    RETURNING id, create_time, expire_time
),
ev AS (
    INSERT INTO app.command_events (command_id, from_state, to_state, replica_id)
    SELECT id, '', 'QUEUED', $12 FROM ins
)
SELECT rate.n AS rate_n, queue.n AS queue_n, ins.create_time, ins.expire_time,
       CASE WHEN ins.id IS NOT NULL THEN pg_notify('emma_edge_commands', $2::text) END AS notified
FROM rate CROSS JOIN queue LEFT JOIN ins ON true
"""


class CommandServicer(command_pb2_grpc.CommandServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._pool = runtime.pool
        self.workers = CommandWorkers(runtime.pool, runtime.replica_id)
        self.watcher = CommandWatcher(runtime.pool, runtime.dsn)

    async def start(self) -> None:
        await self.watcher.start()
        await self.workers.start()

    async def stop(self) -> None:
        await self.workers.stop()
        await self.watcher.stop()

    # ------------------------------------------------------------------ create

    async def CreateCommand(self, request: command_pb2.CreateCommandRequest, context: Context) -> command_pb2.Command:
        edge = parse_edge(request.parent, "parent")
        if not request.request_id:
            raise invalid_field("request_id", "required: a unique id (for example a UUID) per request")
        if not request.HasField("command"):
            raise invalid_field("command", "required")
        ttl = request.command.ttl.ToTimedelta() if request.command.HasField("ttl") else DEFAULT_TTL
        if not dt.timedelta(seconds=1) <= ttl <= MAX_TTL:
            raise invalid_field("command.ttl", "must be between 1 s and 24 h")
        async with self._pool.acquire() as conn:
            command = await self.create_one(
                conn,
                edge,
                request.command.channel,
                request.command.value,
                ttl,
                issued=request.command.issued_time.ToDatetime(dt.UTC)
                if request.command.HasField("issued_time")
                else None,
                creator=caller_name(context),
                request_id=request.request_id,
                digest=request_hash(request.parent, request.command),
                traceparent=traceparent_of(context),
            )
        return command

    async def create_one(
        self,
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
    ) -> command_pb2.Command:
        """Validate and store one command (also used by fleet dispatch); idempotent on request_id.

        Few round trips on purpose (this is the latency an operator feels): one lookup, the dynamic
        limit when the channel has one, then one transaction of a lock and one statement.
        """
        device_id = validation.check_address(channel)
        row = await conn.fetchrow(_LOOKUP, edge.org, edge.site, edge.edge, request_id, device_id)
        if row is None:
            raise not_found(str(edge))
        pk = int(row["pk"])
        if row["existing_id"] is not None:
            return await self._replay(conn, row["existing_id"], row["request_hash"], digest, request_id)
        now = dt.datetime.now(dt.UTC)
        validation.check_issued_time(issued or now, now)
        spec = validation.spec_in_inventory(row["inventory"], channel)
        validation.check_static(spec, channel, value)
        await validation.check_dynamic(conn, pk, spec, channel, value, now)
        command_id = uuid.uuid4()
        try:
            async with conn.transaction():
                # Serialise this caller's creations so the rate limit counts what concurrent requests
                # commit (one caller's commands are few per second; other callers are not blocked).
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", creator)
                stored = await conn.fetchrow(
                    _INSERT,
                    command_id,
                    pk,
                    channel,
                    value,
                    issued or now,
                    ttl,
                    creator,
                    request_id,
                    digest,
                    fleet_dispatch,
                    traceparent,
                    self._runtime.replica_id,
                    validation.RATE_LIMIT_PER_S,
                    validation.QUEUE_CAP,
                )
                assert stored is not None
                if stored["create_time"] is None:
                    raise (
                        validation.rate_limited()
                        if stored["rate_n"] >= validation.RATE_LIMIT_PER_S
                        else (validation.queue_full())
                    )
        except asyncpg.UniqueViolationError:
            # The same request_id raced in from a retry on another connection: answer with the first.
            again = await conn.fetchrow(
                "SELECT id, request_hash FROM app.commands WHERE edge_pk = $1 AND request_id = $2", pk, request_id
            )
            assert again is not None
            return await self._replay(conn, again["id"], again["request_hash"], digest, request_id)
        log.info(
            "command queued",
            extra={"command_id": str(command_id), "edge": str(edge), "channel": channel, "value": value},
        )
        created = {
            "id": command_id,
            "channel": channel,
            "value": value,
            "state": states.QUEUED,
            "state_reason": "",
            "applied_value": None,
            "issued_time": issued or now,
            "create_time": stored["create_time"],
            "update_time": stored["create_time"],
            "expire_time": stored["expire_time"],
            "creator": creator,
            "fleet_dispatch": fleet_dispatch,
            "org_id": edge.org,
            "site_id": edge.site,
            "edge_id": edge.edge,
        }
        event = {
            "from_state": "",
            "to_state": states.QUEUED,
            "event_time": stored["create_time"],
            "reason": "",
            "message": "",
        }
        return store.to_proto(created, [event])

    @staticmethod
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

    # ------------------------------------------------------------------ read

    async def GetCommand(self, request: command_pb2.GetCommandRequest, context: Context) -> command_pb2.Command:
        edge, command_id = _parse_command_name(request.name)
        async with self._pool.acquire() as conn:
            command = await store.load(conn, command_id)
        if command is None or not command.name.startswith(f"{edge}/commands/"):
            raise not_found(request.name)
        return command

    async def ListCommands(
        self, request: command_pb2.ListCommandsRequest, context: Context
    ) -> command_pb2.ListCommandsResponse:
        all_edges = request.parent.endswith("/edges/-")
        if all_edges:  # AIP-159: "-" lists every edge of the site
            site = parse_site(request.parent.removesuffix("/edges/-"), "parent")
            edge = EdgeName(site.org, site.site, "-")
        else:
            edge = parse_edge(request.parent, "parent")
        page = Page.of("ListCommands", request)
        state = states.from_proto(request.state) if request.state else None
        start = request.start_time.ToDatetime(dt.UTC) if request.HasField("start_time") else None
        end = request.end_time.ToDatetime(dt.UTC) if request.HasField("end_time") else None
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                f"""SELECT {store.COMMAND_COLUMNS} FROM app.commands c JOIN app.edges e ON e.pk = c.edge_pk
                    WHERE e.org_id = $1 AND e.site_id = $2 AND ($3::text IS NULL OR e.edge_id = $3)
                      AND ($4::text IS NULL OR c.state = $4)
                      AND ($5::timestamptz IS NULL OR c.create_time >= $5)
                      AND ($6::timestamptz IS NULL OR c.create_time < $6)
                    ORDER BY c.create_time DESC, c.seq DESC OFFSET $7 LIMIT $8""",
                edge.org,
                edge.site,
                None if all_edges else edge.edge,
                state,
                start,
                end,
                page.offset,
                page.limit,
            )
        return command_pb2.ListCommandsResponse(
            commands=[store.to_proto(r) for r in page.rows(rows)],
            next_page_token=page.next_token(rows),
        )

    async def WatchCommand(
        self, request: command_pb2.WatchCommandRequest, context: Context
    ) -> AsyncIterator[command_pb2.WatchCommandResponse]:
        edge, command_id = _parse_command_name(request.name)
        async with self.watcher.subscribe(command_id) as changes:
            async with self._pool.acquire() as conn:
                command = await store.load(conn, command_id)
            if command is None or not command.name.startswith(f"{edge}/commands/"):
                raise not_found(request.name)
            yield command_pb2.WatchCommandResponse(command=command)
            seen = len(command.transitions)
            while states.from_proto(command.state) not in states.FINAL:
                await changes.wait_for_change()
                async with self._pool.acquire() as conn:
                    latest = await store.load(conn, command_id)
                assert latest is not None
                for transition in latest.transitions[seen:]:
                    yield command_pb2.WatchCommandResponse(command=latest, transition=transition)
                seen = len(latest.transitions)
                command = latest

    # ------------------------------------------------------------------ cancel

    async def CancelCommand(self, request: command_pb2.CancelCommandRequest, context: Context) -> command_pb2.Command:
        edge, command_id = _parse_command_name(request.name)
        async with self._pool.acquire() as conn:
            current = await store.load(conn, command_id, with_events=False)
            if current is None or not current.name.startswith(f"{edge}/commands/"):
                raise not_found(request.name)
            if current.state == command_pb2.COMMAND_STATE_CANCELLED:
                return await self._loaded(conn, command_id)  # a retried cancel (AIP-155)
            previous = await store.transition(
                conn,
                command_id,
                states.CANCELLED,
                reason="CANCELLED",
                message=f"by {caller_name(context)}",
                replica_id=self._runtime.replica_id,
            )
            if previous is None:
                raise ApiError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    errors_pb2.ERROR_REASON_COMMAND_NOT_CANCELLABLE,
                    f"the command is {states.from_proto(current.state)}; only QUEUED commands can be cancelled",
                    metadata={"state": states.from_proto(current.state)},
                )
            log.info("command cancelled", extra={"command_id": str(command_id)})
            return await self._loaded(conn, command_id)

    @staticmethod
    async def _loaded(conn: Conn, command_id: uuid.UUID) -> command_pb2.Command:
        command = await store.load(conn, command_id)
        assert command is not None
        return command

    # ------------------------------------------------------------------ fleet

    async def CreateFleetDispatch(
        self, request: command_pb2.CreateFleetDispatchRequest, context: Context
    ) -> command_pb2.FleetDispatch:
        return await fleet.create(self, request, caller_name(context), traceparent_of(context))

    async def GetFleetDispatch(
        self, request: command_pb2.GetFleetDispatchRequest, context: Context
    ) -> command_pb2.FleetDispatch:
        async with self._pool.acquire() as conn:
            return await fleet.load(conn, request.name)

    async def ListFleetDispatches(
        self, request: command_pb2.ListFleetDispatchesRequest, context: Context
    ) -> command_pb2.ListFleetDispatchesResponse:
        async with self._pool.acquire() as conn:
            return await fleet.list_dispatches(conn, request)
