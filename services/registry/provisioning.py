"""Creating an edge with its site and organization when missing, without the RegistryService.

Used by `emma up` for its demo sites, by `emma admin`, by the benchmarks and by tests.
"""

from __future__ import annotations

from services import identity
from services.names import EdgeName
from services.platform.migrations import Conn


async def ensure_edge(
    conn: Conn,
    edge: EdgeName,
    *,
    time_zone: str = "UTC",
    latitude_deg: float = 0.0,
    longitude_deg: float = 0.0,
    country_code: str = "",
    bidding_zone: str = "",
    grid_import_limit_w: float = 0.0,
    grid_export_limit_w: float = 0.0,
) -> int:
    """Create the organization, site and edge if missing; return the edge's pk."""
    async with conn.transaction():
        await identity.accounts.create_org(conn, edge.org, edge.org)
        await conn.execute(
            """INSERT INTO app.sites (org_id, site_id, display_name, time_zone, latitude_deg, longitude_deg,
                                      country_code, bidding_zone, grid_import_limit_w, grid_export_limit_w)
               VALUES ($1, $2, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING""",
            edge.org,
            edge.site,
            time_zone,
            latitude_deg,
            longitude_deg,
            country_code,
            bidding_zone,
            grid_import_limit_w,
            grid_export_limit_w,
        )
        pk = await conn.fetchval(
            """INSERT INTO app.edges (org_id, site_id, edge_id) VALUES ($1, $2, $3)
               ON CONFLICT (org_id, site_id, edge_id) DO UPDATE SET update_time = app.edges.update_time
               RETURNING pk""",
            edge.org,
            edge.site,
            edge.edge,
        )
    return int(pk)
