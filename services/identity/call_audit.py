"""Audit rows of calls: written after every mutating call (and each accepted edge stream) with the
redacted request, the result code and the trace id.

Rows are written on tasks of their own, shielded from the call's cancellation (a client cancelling
must not cancel the row of what already happened); drain() waits for them at shutdown. A servicer
may write the row in the very statement that does the call's work instead (call_audit_row:
CreateCommand, so the command and its audit row take one round trip and one wait for the disk, not two).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
from emma.edge.v1 import edge_link_pb2

from services.errors import ApiError
from services.identity import policy
from services.identity.audit import AuditRow, audit_row, write_entries, write_many
from services.identity.context import Caller, CallState, call_state
from services.identity.edge_keys import edges_of_keys
from services.platform.interceptors import current_trace_id
from services.platform.migrations import Conn
from services.platform.redact import redacted_json
from services.platform.rpc import Context
from services.platform.shared_reads import GatheredReads, Outcomes

log = logging.getLogger("emma.auth")


def outcome_of(exc: BaseException, context: Context) -> tuple[int, str]:
    """(gRPC status code, message) of a call that ended with `exc`."""
    if isinstance(exc, ApiError):
        return int(exc.code.value[0]), exc.message
    if isinstance(exc, asyncio.CancelledError):
        return int(grpc.StatusCode.CANCELLED.value[0]), "cancelled"
    if isinstance(exc, grpc.aio.AbortError):
        code = None
        with contextlib.suppress(Exception):
            code = context.code()
        value = code.value[0] if isinstance(code, grpc.StatusCode) else int(code or 2)
        details = ""
        with contextlib.suppress(Exception):
            details = str(context.details() or "")
        return int(value), details
    return int(grpc.StatusCode.INTERNAL.value[0]), "internal error"


@dataclass(frozen=True, slots=True)
class CallEntry:
    """The audit row of one call, as write_entries takes it (one row per organization)."""

    orgs: list[str | None]
    actor: Caller
    method: str
    resource: str
    request_json: str
    outcome: tuple[int, str]
    client: str

    def row(self, trace_id: str | None = None) -> AuditRow:
        """The row to write, with `trace_id` or else the current one (the outcome's message only for a
        failure)."""
        code, message = self.outcome
        return audit_row(
            self.orgs,
            actor_kind=self.actor.actor_kind,
            actor=self.actor.actor,
            method=self.method,
            resource=self.resource,
            request_json=self.request_json,
            result_code=code,
            result_message=message if code else "",
            trace_id=current_trace_id() if trace_id is None else trace_id,
            client_address=self.client,
        )


def _orgs_for(actor: Caller, resource: str, vouched: list[str]) -> list[str | None]:
    org = policy.org_of(resource)
    if actor.kind == "user":
        if org is not None and (actor.is_member(org) or actor.platform_admin or org in vouched):
            return [org]
        return list(actor.orgs()) or list(vouched) or [None]
    if actor.kind == "edge" and actor.edge is not None:
        return [actor.edge.org]
    return [org]


def call_entry(info: policy.MethodInfo, request: Any, call: CallState, outcome: tuple[int, str]) -> CallEntry | None:
    """The audit row of a call that ended with `outcome`; None when the call gets none."""
    actor = call.audit_actor or call.caller
    if actor.kind == "anonymous" and outcome[0] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]:
        # Refused by a rate limit before anything was looked at: rows here would let a flood of
        # requests grow the audit log at the flood's rate.
        return None
    if actor.kind == "anonymous" and info.access != policy.PUBLIC:
        # Unauthenticated attempts are not attributable; they are logged, not audited, so
        # anonymous traffic cannot flood the audit log.
        log.info("unauthenticated call refused", extra={"method": info.name, "client": call.client_address})
        return None
    resource = call.audit_resource
    if resource is None and info.resource_field and request is not None:
        resource = policy.field_value(request, info.resource_field)
    resource = resource or ""
    try:
        request_json = redacted_json(request) if request is not None else "{}"
    except Exception:
        request_json = '{"unserializable":true}'
    return CallEntry(
        _orgs_for(actor, resource, call.audit_extra_orgs),
        actor,
        info.name,
        resource,
        request_json,
        outcome,
        call.client_address,
    )


def call_audit_row(request: Any) -> AuditRow | None:
    """The current call's audit row with result OK, for a servicer that writes it in the statement of
    the call's own work (AuditRow.sql), so the row commits with what the call did in one commit.

    Once that statement committed with the row written, the servicer says so with
    note_audit(written=True) and the interceptor writes no second row; otherwise the interceptor writes
    the call's row with its outcome, as for any call. None: the call gets no row.
    """
    call = call_state()
    info = policy.method_info(call.method) if call is not None else None
    if call is None or info is None:
        return None
    entry = call_entry(info, request, call, (0, ""))
    return None if entry is None else entry.row()


@dataclass(eq=False, frozen=True)  # each stream's end is an item of its own, however alike two are
class _EdgeStreamEnd:
    """An accepted edge stream that ended, waiting for its audit row."""

    key_id: str
    method: str
    request_json: str
    outcome: tuple[int, str]
    client: str
    trace_id: str  # the stream's, taken when it ended: the row is written from another task


class CallAuditor:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._edge_stream_ends: GatheredReads[None, _EdgeStreamEnd, None] = GatheredReads(self._write_edge_stream_ends)
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls_in_flight = 0  # mutating calls between their start and their audit row

    async def audit(self, info: policy.MethodInfo, request: Any, call: CallState, outcome: tuple[int, str]) -> None:
        if call.audit_written:
            return
        entry = call_entry(info, request, call, outcome)
        if entry is not None:
            await self._write(entry)

    async def audit_edge(
        self, method: str, key_id: str, hello: edge_link_pb2.Hello, call: CallState, outcome: tuple[int, str]
    ) -> None:
        request = edge_link_pb2.ConnectRequest(hello=hello)
        request.hello.ClearField("channel_table")  # the table is data, not the call
        ended = _EdgeStreamEnd(key_id, method, redacted_json(request), outcome, call.client_address, current_trace_id())
        # With the other edge streams that end meanwhile (a fleet's streams often end together): one
        # lookup of their edges and one INSERT for all of them, instead of three round trips and a
        # commit each (_write_edge_stream_ends).
        await self._edge_stream_ends.get(None, ended)

    async def _write_edge_stream_ends(self, _: None, ended: list[_EdgeStreamEnd]) -> Outcomes[_EdgeStreamEnd, None]:
        """The audit rows of edge streams that ended: their edges looked up, the rows written, one
        statement each for all of them. Failures are logged here, once for all of them."""
        done: Outcomes[_EdgeStreamEnd, None] = dict.fromkeys(ended)
        try:
            async with self.pool.acquire() as conn:
                try:
                    edges = await edges_of_keys(conn, [e.key_id for e in ended])
                except asyncpg.InterfaceError:
                    raise  # the pool is closing: logged below as at shutdown, as a lone stream's was
                except Exception:
                    log.warning("could not resolve the edges of closed streams for the audit log", exc_info=True)
                    return done
                rows: list[AuditRow] = []
                for e in ended:
                    edge = edges.get(e.key_id)
                    if edge is None:  # the key or its edge was erased meanwhile
                        continue
                    actor = Caller(kind="edge", edge=edge, key_id=e.key_id)
                    entry = CallEntry([edge.org], actor, e.method, str(edge), e.request_json, e.outcome, e.client)
                    rows.append(entry.row(e.trace_id))
                try:
                    await write_many(conn, rows)
                except Exception:
                    # One row the database refuses must not cost the others theirs: each is tried on its
                    # own, as before the rows were taken together, and only a bad one is lost (logged).
                    await self._write_each(conn, rows)
        except asyncpg.InterfaceError:  # the process is shutting down and the pool is closed
            log.info("edge streams ended at shutdown; no audit rows", extra={"streams": len(ended)})
        return done

    @staticmethod
    async def _write_each(conn: Conn, rows: list[AuditRow]) -> None:
        for row in rows:
            try:
                await write_entries(conn, row)
            except Exception:
                # values: organizations, actor kind, actor, method, ... (audit.audit_row)
                log.error("AUDIT WRITE FAILED", extra={"method": row.values[3], "actor": row.values[2]}, exc_info=True)

    async def _write(self, entry: CallEntry) -> None:
        row = entry.row()  # here, not in the task: the trace id is the call's

        async def write() -> None:
            try:
                async with self.pool.acquire() as conn:
                    await write_entries(conn, row)
            except Exception:
                log.error(
                    "AUDIT WRITE FAILED", extra={"method": entry.method, "actor": entry.actor.actor}, exc_info=True
                )

        # Shielded: a client cancelling its call must not cancel the audit row of what already happened.
        task = self.track(write())
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)

    def track(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait for audit rows still being written (at shutdown, before the pool closes).

        Handlers cancelled by the server's stop may still be in their finally blocks; wait for those
        too, a bounded time.
        """
        deadline = asyncio.get_running_loop().time() + timeout_s
        await asyncio.sleep(0)
        while (self._tasks or self.calls_in_flight) and asyncio.get_running_loop().time() < deadline:
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
            else:
                await asyncio.sleep(0.01)
