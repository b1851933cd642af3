"""Edges: the lookups other domains make by name or pk (through the package face)."""

from __future__ import annotations

from collections.abc import Sequence

from services.names import EdgeName, SiteName
from services.platform.migrations import Conn


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
