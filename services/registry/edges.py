"""Edges: mapping, the RegistryService's reads and changes, and the lookups other domains make by name
or pk (through the package face)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
from emma.registry.v1 import registry_pb2
from google.protobuf import field_mask_pb2

from services.errors import not_found
from services.names import EdgeName, SiteName
from services.pagination import Page
from services.platform.migrations import Conn
from services.platform.rpc import timestamp, timestamp_or_none
from services.registry import erase
from services.registry.errors import already_exists, has_children
from services.registry.fields import validate_display_name
from services.registry.masks import apply_mask
from services.registry.ports import EdgeConnection, RegistryPorts
from services.registry.sites import site_exists

UPDATABLE = {"display_name"}


def edge_message(r: Any, connection: EdgeConnection | None) -> registry_pb2.Edge:
    """The edge row with its connection (None: it never connected)."""
    if connection is None:
        state = registry_pb2.EDGE_CONNECTION_STATE_NEVER_CONNECTED
    elif connection.online:
        state = registry_pb2.EDGE_CONNECTION_STATE_ONLINE
    else:
        state = registry_pb2.EDGE_CONNECTION_STATE_OFFLINE
    return registry_pb2.Edge(
        name=f"organizations/{r['org_id']}/sites/{r['site_id']}/edges/{r['edge_id']}",
        display_name=r["display_name"],
        connection_state=state,
        last_seen_time=timestamp_or_none(connection.last_seen_time if connection else None),
        agent_version=connection.agent_version if connection else "",
        clock_offset_ms=connection.clock_offset_ms if connection else 0.0,
        create_time=timestamp(r["create_time"]),
        update_time=timestamp(r["update_time"]),
    )


async def _edge_row(conn: Conn, edge: EdgeName, lock: bool = False) -> Any:
    row = await conn.fetchrow(
        "SELECT * FROM app.edges WHERE org_id = $1 AND site_id = $2 AND edge_id = $3" + (" FOR UPDATE" if lock else ""),
        edge.org,
        edge.site,
        edge.edge,
    )
    if row is None:
        raise not_found(str(edge))
    return row


async def _edge(conn: Conn, edge: EdgeName, ports: RegistryPorts) -> registry_pb2.Edge:
    row = await _edge_row(conn, edge)
    connections = await ports.edge_connections(conn, [row["pk"]])
    return edge_message(row, connections.get(row["pk"]))


async def get_edge(conn: Conn, edge: EdgeName, ports: RegistryPorts) -> registry_pb2.Edge:
    return await _edge(conn, edge, ports)


async def list_edges(conn: Conn, site: SiteName, page: Page, ports: RegistryPorts) -> registry_pb2.ListEdgesResponse:
    if not await site_exists(conn, site):
        raise not_found(str(site))
    rows = await conn.fetch(
        "SELECT * FROM app.edges WHERE org_id = $1 AND site_id = $2 ORDER BY edge_id OFFSET $3 LIMIT $4",
        site.org,
        site.site,
        page.offset,
        page.limit,
    )
    shown = page.rows(rows)
    connections = await ports.edge_connections(conn, [r["pk"] for r in shown])
    return registry_pb2.ListEdgesResponse(
        edges=[edge_message(r, connections.get(r["pk"])) for r in shown], next_page_token=page.next_token(rows)
    )


async def create_edge(conn: Conn, edge: EdgeName, e: registry_pb2.Edge, ports: RegistryPorts) -> registry_pb2.Edge:
    try:
        await conn.execute(
            "INSERT INTO app.edges (org_id, site_id, edge_id, display_name) VALUES ($1, $2, $3, $4)",
            edge.org,
            edge.site,
            edge.edge,
            e.display_name,
        )
    except asyncpg.UniqueViolationError:
        raise already_exists(str(edge)) from None
    except asyncpg.ForeignKeyViolationError:
        raise not_found(str(edge.site_name)) from None
    return await _edge(conn, edge, ports)


async def update_edge(
    conn: Conn, edge: EdgeName, patch: registry_pb2.Edge, mask: field_mask_pb2.FieldMask, ports: RegistryPorts
) -> registry_pb2.Edge:
    """In the caller's transaction (the row is locked while the mask is applied)."""
    row = await _edge_row(conn, edge, lock=True)
    connections = await ports.edge_connections(conn, [row["pk"]])
    merged = apply_mask(edge_message(row, connections.get(row["pk"])), patch, mask, UPDATABLE, "Edge")
    validate_display_name(merged.display_name, "edge.display_name")
    await conn.execute(
        "UPDATE app.edges SET display_name = $2, update_time = now() WHERE pk = $1", row["pk"], merged.display_name
    )
    return await _edge(conn, edge, ports)


async def delete_edge(conn: Conn, edge: EdgeName, force: bool, ports: RegistryPorts) -> None:
    """In the caller's transaction; with `force`, its devices go too."""
    row = await _edge_row(conn, edge, lock=True)
    devices = await conn.fetchval("SELECT count(*) FROM app.devices WHERE edge_pk = $1", row["pk"])
    if devices and not force:
        raise has_children(str(edge), "devices")
    await erase.delete_edges(conn, [row["pk"]], ports)


# ---------------------------------------------------------------------------------- lookups for other domains


async def edge_pk(conn: Conn, name: EdgeName) -> int | None:
    """The edge's pk, or None when there is no such edge."""
    pk = await conn.fetchval(
        "SELECT pk FROM app.edges WHERE org_id = $1 AND site_id = $2 AND edge_id = $3", name.org, name.site, name.edge
    )
    return None if pk is None else int(pk)


async def edge_name(conn: Conn, pk: int) -> EdgeName | None:
    """The name of the edge with this pk, or None when it does not exist (or was erased)."""
    row = await conn.fetchrow("SELECT org_id, site_id, edge_id FROM app.edges WHERE pk = $1", pk)
    return None if row is None else EdgeName(row["org_id"], row["site_id"], row["edge_id"])


async def edge_names(conn: Conn, pks: Sequence[int]) -> dict[int, EdgeName]:
    """pk -> name for the pks that exist (several at once, for listings)."""
    rows = await conn.fetch("SELECT pk, org_id, site_id, edge_id FROM app.edges WHERE pk = ANY($1::bigint[])", pks)
    return {int(r["pk"]): EdgeName(r["org_id"], r["site_id"], r["edge_id"]) for r in rows}


async def edge_with_time_zone(conn: Conn, pk: int) -> tuple[EdgeName, str] | None:
    """The edge's name and its site's time zone (what an edge's session needs), or None."""
    row = await conn.fetchrow(
        """SELECT e.org_id, e.site_id, e.edge_id, s.time_zone FROM app.edges e
           JOIN app.sites s ON s.org_id = e.org_id AND s.site_id = e.site_id
           WHERE e.pk = $1""",
        pk,
    )
    return None if row is None else (EdgeName(row["org_id"], row["site_id"], row["edge_id"]), row["time_zone"])


async def edges_of_site(conn: Conn, site: SiteName, edge_id: str | None = None) -> dict[int, EdgeName]:
    """pk -> name of the site's edges in edge id order; with `edge_id`, only that edge (if it exists)."""
    rows = await conn.fetch(
        """SELECT pk, edge_id FROM app.edges
           WHERE org_id = $1 AND site_id = $2 AND ($3::text IS NULL OR edge_id = $3) ORDER BY edge_id""",
        site.org,
        site.site,
        edge_id,
    )
    return {int(r["pk"]): EdgeName(site.org, site.site, r["edge_id"]) for r in rows}


async def edges_of_organization(conn: Conn, org: str) -> list[EdgeName]:
    """Every edge of the organization, by site id then edge id."""
    rows = await conn.fetch("SELECT site_id, edge_id FROM app.edges WHERE org_id = $1 ORDER BY 1, 2", org)
    return [EdgeName(org, r["site_id"], r["edge_id"]) for r in rows]
