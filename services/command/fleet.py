"""Fleet dispatch (the VPP use case): one action for many edges, one child command per edge.

Which channel an action drives is read from each edge's inventory: CHARGE / DISCHARGE / HOLD write
the first battery's SetActivePower (generator convention: discharge > 0, charge < 0, in W);
DEFER_LOAD lowers the first EV charger's or flexible load's SetActivePower by power_kw from its latest
ActivePower. An edge that cannot take the command (no such device, a limit, stale telemetry, a full
queue) is skipped with its reason in status.skipped_edges; the others proceed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from typing import Any

import asyncpg
import grpc
from emma.command.v1 import command_pb2
from emma.common.v1 import errors_pb2, types_pb2

from services.command import states
from services.command.creation import create_one
from services.command.validation import ttl_of
from services.errors import ApiError, invalid_field, not_found
from services.identity import organization_exists
from services.names import ID_PATTERN, EdgeName, parse_edge, parse_site
from services.pagination import Page
from services.platform.migrations import Conn
from services.platform.rpc import timestamp
from services.registry import edge_inventory, edge_names, edge_pk, edges_of_organization, edges_of_site
from services.telemetry import latest_value

log = logging.getLogger("emma.command.fleet")

BATTERY_ACTIONS = {command_pb2.FLEET_ACTION_CHARGE, command_pb2.FLEET_ACTION_DISCHARGE, command_pb2.FLEET_ACTION_HOLD}


def _org(parent: str) -> str:
    org = parent.removeprefix("organizations/")
    if not parent.startswith("organizations/") or not ID_PATTERN.match(org):
        raise invalid_field("parent", f"{parent!r} is not organizations/{{organization}}")
    return org


async def _targets(conn: Conn, org: str, dispatch: command_pb2.FleetDispatch) -> list[EdgeName]:
    which = dispatch.WhichOneof("targets")
    if which == "edges":
        edges = [parse_edge(e, "fleet_dispatch.edges") for e in dispatch.edges.edges]
        foreign = [str(e) for e in edges if e.org != org]
        if foreign:
            raise invalid_field("fleet_dispatch.edges", f"not in organizations/{org}: {', '.join(foreign)}")
        return list(dict.fromkeys(edges))
    if which == "site":
        site = parse_site(dispatch.site, "fleet_dispatch.site")
        if site.org != org:
            raise invalid_field("fleet_dispatch.site", f"not in organizations/{org}")
        return list((await edges_of_site(conn, site)).values())
    if which == "whole_organization" and dispatch.whole_organization:
        return await edges_of_organization(conn, org)
    return []


async def _plan(conn: Conn, edge: EdgeName, action: int, power_w: float) -> tuple[str, float]:
    """(channel, value) this edge gets for the action; ApiError when it has nothing to drive."""
    pk = await edge_pk(conn, edge)
    devices = [] if pk is None else await edge_inventory(conn, pk)
    wanted = (
        {types_pb2.DEVICE_KIND_BATTERY}
        if action in BATTERY_ACTIONS
        else {types_pb2.DEVICE_KIND_EV_CHARGER, types_pb2.DEVICE_KIND_FLEXIBLE_LOAD}
    )
    for item in devices:
        if item.kind in wanted and any(c.name == "SetActivePower" for c in item.channels):
            channel = f"{item.device_id}/SetActivePower"
            if action == command_pb2.FLEET_ACTION_CHARGE:
                return channel, -power_w
            if action == command_pb2.FLEET_ACTION_DISCHARGE:
                return channel, power_w
            if action == command_pb2.FLEET_ACTION_HOLD:
                return channel, 0.0
            assert pk is not None
            current = await latest_value(conn, pk, f"{item.device_id}/ActivePower")
            if current is None:
                raise ApiError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    errors_pb2.ERROR_REASON_TELEMETRY_STALE,
                    f"no ActivePower of {item.device_id} to defer from",
                )
            return channel, max(0.0, float(current[1]) - power_w)
    kind = "battery" if action in BATTERY_ACTIONS else "EV charger or flexible load"
    raise ApiError(grpc.StatusCode.NOT_FOUND, errors_pb2.ERROR_REASON_CHANNEL_NOT_FOUND, f"the edge reports no {kind}")


async def create(
    pool: asyncpg.Pool,
    replica_id: str,
    request: command_pb2.CreateFleetDispatchRequest,
    creator: str,
    traceparent: str,
) -> command_pb2.FleetDispatch:
    org = _org(request.parent)
    dispatch = request.fleet_dispatch
    if not request.request_id:
        raise invalid_field("request_id", "required: a unique id (for example a UUID) per request")
    if dispatch.action == command_pb2.FLEET_ACTION_UNSPECIFIED:
        raise invalid_field("fleet_dispatch.action", "required")
    if dispatch.action != command_pb2.FLEET_ACTION_HOLD and not dispatch.power_kw > 0:
        raise invalid_field("fleet_dispatch.power_kw", "must be positive")
    ttl = ttl_of(dispatch.ttl if dispatch.HasField("ttl") else None, "fleet_dispatch.ttl")
    digest = hashlib.sha256(dispatch.SerializeToString(deterministic=True)).hexdigest()
    async with pool.acquire() as conn:
        # The request_id lives on the dispatch row and a retry answers with the dispatch as it is now,
        # like a command's (creation.py says why that is not the platform's run_once).
        existing = await conn.fetchrow(
            "SELECT id, request_hash FROM app.fleet_dispatches WHERE org_id = $1 AND request_id = $2",
            org,
            request.request_id,
        )
        if existing is not None:
            if existing["request_hash"] != digest:
                raise ApiError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    errors_pb2.ERROR_REASON_REQUEST_ID_REUSED,
                    f"request_id {request.request_id!r} was used for a different fleet dispatch",
                )
            return await load(conn, f"organizations/{org}/fleetDispatches/{existing['id']}")
        if not await organization_exists(conn, org):
            raise not_found(request.parent)
        edges = await _targets(conn, org, dispatch)
        if not edges:
            raise ApiError(
                grpc.StatusCode.INVALID_ARGUMENT,
                errors_pb2.ERROR_REASON_FLEET_TARGETS_EMPTY,
                "the targets select no edge",
            )
        recent = await conn.fetchval(
            "SELECT count(*) FROM app.fleet_dispatches WHERE creator = $1 AND create_time > now() - interval '1 s'",
            creator,
        )
        if recent >= 10:
            raise ApiError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                errors_pb2.ERROR_REASON_RATE_LIMITED,
                "at most 10 fleet dispatches per second per caller",
                metadata={"retry_after_ms": "1000"},
            )
        dispatch_id = uuid.uuid4()
        await conn.execute(
            """INSERT INTO app.fleet_dispatches (id, org_id, action, power_kw, request, creator, request_id,
                   request_hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
            dispatch_id,
            org,
            dispatch.action,
            dispatch.power_kw,
            dispatch.SerializeToString(),
            creator,
            request.request_id,
            digest,
        )
        skipped: dict[str, str] = {}
        for edge in edges:
            try:
                channel, value = await _plan(conn, edge, dispatch.action, dispatch.power_kw * 1000)
                await create_one(
                    conn,
                    edge,
                    channel,
                    value,
                    ttl,
                    issued=None,
                    # Children are rate-limited as the dispatch, not as its creator: 1,000 edges is one request.
                    creator=f"organizations/{org}/fleetDispatches/{dispatch_id}",
                    request_id=f"fleet/{dispatch_id}",
                    digest=f"fleet/{dispatch_id}",
                    traceparent=traceparent,
                    fleet_dispatch=dispatch_id,
                    replica_id=replica_id,
                )
            except ApiError as exc:
                skipped[str(edge)] = f"{exc.reason}: {exc.message}"
        await conn.execute(
            "UPDATE app.fleet_dispatches SET skipped_edges = $2::jsonb WHERE id = $1", dispatch_id, json.dumps(skipped)
        )
        log.info(
            "fleet dispatch created",
            extra={"fleet_dispatch": str(dispatch_id), "edges": len(edges), "skipped": len(skipped)},
        )
        return await load(conn, f"organizations/{org}/fleetDispatches/{dispatch_id}")


def _parse(name: str) -> tuple[str, uuid.UUID]:
    org_part, sep, dispatch_id = name.rpartition("/fleetDispatches/")
    org = _org(org_part) if sep else _org(name)
    try:
        return org, uuid.UUID(dispatch_id)
    except ValueError:
        raise invalid_field("name", f"{name!r} is not organizations/{{organization}}/fleetDispatches/{{id}}") from None


async def _to_proto(conn: Conn, row: Any) -> command_pb2.FleetDispatch:
    requested = command_pb2.FleetDispatch.FromString(bytes(row["request"]))
    out = command_pb2.FleetDispatch(
        name=f"organizations/{row['org_id']}/fleetDispatches/{row['id']}",
        action=row["action"],
        power_kw=row["power_kw"],
        create_time=timestamp(row["create_time"]),
        creator=row["creator"],
    )
    which = requested.WhichOneof("targets")
    if which == "edges":
        out.edges.CopyFrom(requested.edges)
    elif which == "site":
        out.site = requested.site
    elif which == "whole_organization":
        out.whole_organization = requested.whole_organization
    rows = await conn.fetch("SELECT id, state, edge_pk FROM app.commands WHERE fleet_dispatch = $1", row["id"])
    names = await edge_names(conn, [c["edge_pk"] for c in rows])
    # Commands of edges deleted since (no name any more) drop out, as the join with app.edges did.
    children = sorted(
        ((names[c["edge_pk"]], c) for c in rows if c["edge_pk"] in names), key=lambda n: (n[0].site, n[0].edge)
    )
    out.commands.extend(f"{edge}/commands/{c['id']}" for edge, c in children)
    by_state = [c["state"] for _, c in children]
    out.status.total_count = len(children)
    out.status.pending_count = sum(s not in states.FINAL for s in by_state)
    out.status.executed_count = by_state.count(states.EXECUTED)
    out.status.rejected_count = by_state.count(states.REJECTED_BY_EDGE)
    out.status.failed_count = by_state.count(states.FAILED) + by_state.count(states.CANCELLED)
    out.status.skipped_edges.update(json.loads(row["skipped_edges"]))
    return out


async def load(conn: Conn, name: str) -> command_pb2.FleetDispatch:
    org, dispatch_id = _parse(name)
    row = await conn.fetchrow("SELECT * FROM app.fleet_dispatches WHERE id = $1 AND org_id = $2", dispatch_id, org)
    if row is None:
        raise not_found(name)
    return await _to_proto(conn, row)


async def list_dispatches(
    conn: Conn, request: command_pb2.ListFleetDispatchesRequest
) -> command_pb2.ListFleetDispatchesResponse:
    org = _org(request.parent)
    page = Page.of("ListFleetDispatches", request)
    rows = await conn.fetch(
        "SELECT * FROM app.fleet_dispatches WHERE org_id = $1 ORDER BY create_time DESC, id OFFSET $2 LIMIT $3",
        org,
        page.offset,
        page.limit,
    )
    return command_pb2.ListFleetDispatchesResponse(
        fleet_dispatches=[await _to_proto(conn, r) for r in page.rows(rows)],
        next_page_token=page.next_token(rows),
    )
