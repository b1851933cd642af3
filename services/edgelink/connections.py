"""Each edge's connection state as its session last recorded it, for the registry's Edge resource.

The registry may not import EdgeLink; services/cloud.py passes this function to it
(registry.RegistryPorts.edge_connections).
"""

from __future__ import annotations

from collections.abc import Sequence

from services.platform.migrations import Conn
from services.registry import EdgeConnection


async def edge_connections(conn: Conn, edge_pks: Sequence[int]) -> dict[int, EdgeConnection]:
    rows = await conn.fetch(
        """SELECT edge_pk, online, last_seen_time, agent_version, clock_offset_ms FROM app.edge_sessions
           WHERE edge_pk = ANY($1::bigint[])""",
        list(edge_pks),
    )
    return {
        int(r["edge_pk"]): EdgeConnection(r["online"], r["last_seen_time"], r["agent_version"], r["clock_offset_ms"])
        for r in rows
    }
