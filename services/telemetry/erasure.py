"""Telemetry's part of erasing edges (the registry's DeleteEdge, DeleteSite and GDPR EraseSite).

Raw samples and rollups reference series, not edges, so the registry's sweep of edge_pk tables
does not reach them; services/cloud.py passes this function to the registry (registry.RegistryPorts).
"""

from __future__ import annotations

from collections.abc import Sequence

from services.platform.migrations import Conn


async def erase_edge_telemetry(conn: Conn, edge_pks: Sequence[int]) -> dict[str, int]:
    """Delete the samples and rollups of the edges' series; rows deleted per table."""
    counts: dict[str, int] = {}
    series = [
        r["id"] for r in await conn.fetch("SELECT id FROM telemetry.series WHERE edge_pk = ANY($1)", list(edge_pks))
    ]
    if series:
        # One function for both storage paths (continuous aggregates are deleted where they are stored).
        for row in await conn.fetch("SELECT table_name, deleted FROM telemetry.delete_series_data($1)", series):
            counts[row["table_name"]] = int(row["deleted"])
    return counts
