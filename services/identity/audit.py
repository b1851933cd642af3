"""The audit log: rows written for every mutating call, and AuditService to read them.

Rows are append-only: no API changes or deletes them, and a trigger (migration 0005) refuses UPDATE,
DELETE and TRUNCATE in SQL too (the only exception is GDPR erasure, see services/registry/erase.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from emma.identity.v1 import identity_pb2, identity_pb2_grpc

from services.errors import invalid_field, not_found
from services.identity.context import ADMIN, caller
from services.names import parse_audit_entry, parse_organization
from services.pagination import decode_token, encode_token, page_size
from services.platform.migrations import Conn
from services.platform.rpc import Context, timestamp
from services.platform.runtime import Runtime

_INSERT = """
INSERT INTO identity.audit_entries (org_id, actor_kind, actor, method, resource, request_json, result_code,
                                    result_message, trace_id, client_address)
SELECT o, $2, $3, $4, $5, $6, $7, $8, $9, $10 FROM unnest($1::text[]) AS o
RETURNING id, org_id
"""
# The same INSERT for a WITH clause of another domain's statement (AuditRow.sql): its ten parameters
# from {first}, and rows only where {when} holds.
_INSERT_IN_WITH = """
INSERT INTO identity.audit_entries (org_id, actor_kind, actor, method, resource, request_json, result_code,
                                    result_message, trace_id, client_address)
SELECT o, {p[1]}, {p[2]}, {p[3]}, {p[4]}, {p[5]}, {p[6]}, {p[7]}, {p[8]}, {p[9]} FROM unnest({p[0]}::text[]) AS o
WHERE {when}
"""


@dataclass(frozen=True, slots=True)
class AuditRow:
    """An audit row (one per organization) to write in the statement of the call's own work, so both
    commit together: one round trip and one wait for the disk instead of a second transaction."""

    values: tuple[Any, ...]  # write_entries' ten values, organizations first

    def sql(self, first: int, when: str) -> str:
        """The INSERT as a data-modifying WITH query, `values` bound from $first on, rows only where the
        SQL condition `when` holds (it may name the statement's other WITH queries)."""
        return _INSERT_IN_WITH.format(p=[f"${first + i}" for i in range(len(self.values))], when=when)


def audit_row(
    orgs: Sequence[str | None],
    *,
    actor_kind: int,
    actor: str,
    method: str,
    resource: str,
    request_json: str,
    result_code: int,
    result_message: str = "",
    trace_id: str = "",
    client_address: str = "",
) -> AuditRow:
    """An audit row: one entry per organization in `orgs` (None: a platform-level entry), written by
    write_entries or inside another statement by AuditRow.sql."""
    return AuditRow(
        (
            list(orgs) or [None],
            actor_kind,
            actor,
            method,
            resource,
            request_json,
            result_code,
            result_message[:2000],
            trace_id,
            client_address,
        )
    )


async def write_entries(conn: Conn, row: AuditRow) -> list[str]:
    """Write `row` (one entry per organization, None: a platform-level one) in a statement of its own;
    returns the entries' resource names."""
    rows = await conn.fetch(_INSERT, *row.values)
    return [entry_name(r["org_id"], r["id"]) for r in rows]


_INSERT_MANY = """
INSERT INTO identity.audit_entries (org_id, actor_kind, actor, method, resource, request_json, result_code,
                                    result_message, trace_id, client_address)
SELECT * FROM unnest($1::text[], $2::smallint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[],
                     $8::text[], $9::text[], $10::text[])
"""


async def write_many(conn: Conn, rows: Sequence[AuditRow]) -> None:
    """Write `rows` (each one entry per organization) in one statement: one round trip and one commit."""
    entries = [(org, *row.values[1:]) for row in rows for org in row.values[0]]
    if not entries:
        return
    await conn.execute(_INSERT_MANY, *(list(column) for column in zip(*entries, strict=True)))


def entry_name(org: str | None, entry_id: int) -> str:
    return f"organizations/{org}/auditEntries/{entry_id}" if org else f"auditEntries/{entry_id}"


def entry_message(row: Any) -> identity_pb2.AuditEntry:
    return identity_pb2.AuditEntry(
        name=entry_name(row["org_id"], row["id"]),
        entry_time=timestamp(row["entry_time"]),
        actor_kind=row["actor_kind"],
        actor=row["actor"],
        method=row["method"],
        resource=row["resource"],
        request_json=row["request_json"],
        result_code=row["result_code"],
        result_message=row["result_message"],
        trace_id=row["trace_id"],
        client_address=row["client_address"],
    )


class AuditServicer(identity_pb2_grpc.AuditServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._pool = runtime.pool

    async def ListAuditEntries(
        self, request: identity_pb2.ListAuditEntriesRequest, context: Context
    ) -> identity_pb2.ListAuditEntriesResponse:
        org = parse_organization(request.parent, "parent")
        caller(context).require_org(org, ADMIN, resource=request.parent)
        size = page_size(request.page_size)
        # Newest first with a keyset cursor (the last id seen), so new entries do not shift pages.
        cursor = decode_token("ListAuditEntries", request.page_token)
        start = request.start_time.ToDatetime(dt.UTC) if request.HasField("start_time") else None
        end = request.end_time.ToDatetime(dt.UTC) if request.HasField("end_time") else None
        if start and end and end <= start:
            raise invalid_field("end_time", "must be after start_time")
        method = request.method.strip()
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT * FROM identity.audit_entries
                   WHERE org_id = $1 AND ($2::bigint = 0 OR id < $2)
                     AND ($3::text = '' OR actor = $3)
                     AND ($4::text = '' OR method = $4 OR right(method, length($4) + 1) = '/' || $4)
                     AND ($5::timestamptz IS NULL OR entry_time >= $5)
                     AND ($6::timestamptz IS NULL OR entry_time < $6)
                   ORDER BY id DESC LIMIT $7""",
                org,
                cursor,
                request.actor,
                method,
                start,
                end,
                size + 1,
            )
        entries = [entry_message(r) for r in rows[:size]]
        token = encode_token("ListAuditEntries", int(rows[size - 1]["id"])) if len(rows) > size else ""
        return identity_pb2.ListAuditEntriesResponse(audit_entries=entries, next_page_token=token)

    async def GetAuditEntry(
        self, request: identity_pb2.GetAuditEntryRequest, context: Context
    ) -> identity_pb2.AuditEntry:
        entry = parse_audit_entry(request.name)
        org, entry_id = entry.org, entry.entry_id
        caller(context).require_org(org, ADMIN, resource=request.name)
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT * FROM identity.audit_entries WHERE org_id = $1 AND id = $2", org, entry_id
            )
        if row is None:
            raise not_found(request.name)
        return entry_message(row)
