"""CommandService: create (validated, durable, idempotent), get, list, watch, cancel, fleet dispatch."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator

import grpc
from emma.command.v1 import command_pb2, command_pb2_grpc
from emma.common.v1 import errors_pb2

from core.metrics import record_command_transition
from services.command import fleet, local, states, store, transitions
from services.command.creation import create_one
from services.command.validation import final_state_wait_of, ttl_of
from services.command.watch import CommandWatcher, Subscription, follow
from services.command.workers import CommandWorkers
from services.errors import ApiError, invalid_field, not_found
from services.identity import call_audit_row, caller, note_audit
from services.names import EdgeName, parse_edge, parse_site
from services.pagination import Page
from services.platform.migrations import Conn
from services.platform.rpc import Context
from services.platform.runtime import Runtime
from services.registry import edges_of_site

log = logging.getLogger("emma.command")

# Edges whose pk CreateCommand found, kept for WatchCommand; cleared when it reaches this size.
EDGE_PK_CACHE = 10_000
# CreateCommand with final_state_wait answers this long before the call's deadline at the latest, so the
# caller gets the command in its current state instead of DEADLINE_EXCEEDED.
DEADLINE_MARGIN_S = 0.1


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


class CommandServicer(command_pb2_grpc.CommandServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._pool = runtime.pool
        self.workers = CommandWorkers(runtime.pool, runtime.replica_id)
        self.watcher = CommandWatcher(runtime.pool, runtime.dsn)
        self._edge_pks: dict[EdgeName, int] = {}

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
        ttl = ttl_of(request.command.ttl if request.command.HasField("ttl") else None, "command.ttl")
        wait = final_state_wait_of(
            request.final_state_wait if request.HasField("final_state_wait") else None, "final_state_wait"
        )
        if not wait:
            return await self._create(request, context, edge, ttl, uuid.uuid4())
        until = asyncio.get_running_loop().time() + wait.total_seconds()
        remaining = context.time_remaining()
        if remaining is not None:  # answer with the command rather than let the caller's deadline pass
            until = min(until, asyncio.get_running_loop().time() + remaining - DEADLINE_MARGIN_S)
        # Subscribed before the command exists: the edge may execute it before the create call returns.
        command_id = uuid.uuid4()
        async with self.watcher.subscribe(command_id) as changes:
            command = await self._create(request, context, edge, ttl, command_id)
            if command.name.endswith(f"/commands/{command_id}"):
                return await self._until_final(edge, command_id, command, changes, until)
        # A retried request_id: its earlier command, read again once subscribed to it, waited for alike.
        _, earlier_id = _parse_command_name(command.name)
        async with self.watcher.subscribe(earlier_id) as changes:
            async with self._pool.acquire() as conn:
                command = await store.load(conn, earlier_id, edge=edge) or command
            return await self._until_final(edge, earlier_id, command, changes, until)

    async def _create(
        self,
        request: command_pb2.CreateCommandRequest,
        context: Context,
        edge: EdgeName,
        ttl: dt.timedelta,
        command_id: uuid.UUID,
    ) -> command_pb2.Command:
        # The call's audit row, written by the create call itself: durable with the command, one commit.
        audit = call_audit_row(request)

        def stored(edge_pk: int) -> None:
            self._remember_edge(edge, edge_pk)
            if audit is not None:  # committed with the command: the interceptor writes no second row
                note_audit(written=True)

        async with self._pool.acquire() as conn:
            return await create_one(
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
                replica_id=self._runtime.replica_id,
                on_stored=stored,
                audit=audit,
                # The relay of this process, when it holds the edge's stream, delivers in the same call.
                delivery=local.hub(self._pool).delivery,
                command_id=command_id,
            )

    async def _until_final(
        self,
        edge: EdgeName,
        command_id: uuid.UUID,
        command: command_pb2.Command,
        changes: Subscription,
        until: float,
    ) -> command_pb2.Command:
        """The command once final, through the same changes WatchCommand streams (this process's relay
        in memory, other replicas' NOTIFY), or as it is when the loop's clock reaches `until`."""
        latest = command
        try:
            async with asyncio.timeout_at(until):
                async for latest, _ in follow(self._pool, edge, command_id, command, changes):  # noqa: B007
                    pass  # only the last one is the answer
            return latest
        except TimeoutError:
            # Not final yet: the command as it is now (a transition may have committed since the last seen).
            async with self._pool.acquire() as conn:
                return await store.load(conn, command_id, edge=edge) or latest

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
            edges = await edges_of_site(conn, edge.site_name, None if all_edges else edge.edge)
            rows = await conn.fetch(
                f"""SELECT {store.COMMAND_COLUMNS} FROM app.commands c
                    WHERE c.edge_pk = ANY($1::bigint[])
                      AND ($2::text IS NULL OR c.state = $2)
                      AND ($3::timestamptz IS NULL OR c.create_time >= $3)
                      AND ($4::timestamptz IS NULL OR c.create_time < $4)
                    ORDER BY c.create_time DESC, c.seq DESC OFFSET $5 LIMIT $6""",
                list(edges),
                state,
                start,
                end,
                page.offset,
                page.limit,
            )
        return command_pb2.ListCommandsResponse(
            commands=[store.to_proto(r, edges[r["edge_pk"]]) for r in page.rows(rows)],
            next_page_token=page.next_token(rows),
        )

    async def WatchCommand(
        self, request: command_pb2.WatchCommandRequest, context: Context
    ) -> AsyncIterator[command_pb2.WatchCommandResponse]:
        edge, command_id = _parse_command_name(request.name)
        async with self.watcher.subscribe(command_id) as changes:
            async with self._pool.acquire() as conn:
                command = await store.load(conn, command_id, known_edge=self._known_edge(edge))
            if command is None or not command.name.startswith(f"{edge}/commands/"):
                raise not_found(request.name)
            yield command_pb2.WatchCommandResponse(command=command)
            async for after, transition in follow(self._pool, edge, command_id, command, changes):
                yield command_pb2.WatchCommandResponse(command=after, transition=transition)

    def _known_edge(self, edge: EdgeName) -> tuple[EdgeName, int] | None:
        pk = self._edge_pks.get(edge)
        return None if pk is None else (edge, pk)

    def _remember_edge(self, edge: EdgeName, pk: int) -> None:
        """An edge's pk as CreateCommand found it, so WatchCommand can check a command's edge without the
        registry: pks are never reused, so a command with this pk is this edge's (a stale entry only
        misses, and the registry is asked)."""
        if len(self._edge_pks) >= EDGE_PK_CACHE:
            self._edge_pks.clear()
        self._edge_pks[edge] = pk

    # ------------------------------------------------------------------ cancel

    async def CancelCommand(self, request: command_pb2.CancelCommandRequest, context: Context) -> command_pb2.Command:
        edge, command_id = _parse_command_name(request.name)
        async with self._pool.acquire() as conn:
            current = await store.load(conn, command_id, with_events=False)
            if current is None or not current.name.startswith(f"{edge}/commands/"):
                raise not_found(request.name)
            if current.state == command_pb2.COMMAND_STATE_CANCELLED:
                return await self._loaded(conn, command_id)  # a retried cancel (AIP-155)
            previous = await transitions.transition(
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
            record_command_transition(states.CANCELLED)
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
        return await fleet.create(
            self._pool, self._runtime.replica_id, request, caller_name(context), traceparent_of(context)
        )

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
