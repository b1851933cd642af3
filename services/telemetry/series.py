"""Series: one per (edge, channel address), created as edges declare their channels."""

from __future__ import annotations

from collections.abc import Sequence

from services.platform.migrations import Conn


async def register_channels(conn: Conn, edge_pk: int, channels: Sequence[str], units: Sequence[str]) -> dict[str, int]:
    """Create the series of these channels the edge did not have yet; returns channel -> series id for all."""
    await conn.execute(
        """INSERT INTO telemetry.series (edge_pk, channel, unit)
           SELECT $1, c, u FROM unnest($2::text[], $3::text[]) AS x(c, u)
           ON CONFLICT (edge_pk, channel) DO NOTHING""",
        edge_pk,
        list(channels),
        list(units),
    )
    rows = await conn.fetch(
        "SELECT id, channel FROM telemetry.series WHERE edge_pk = $1 AND channel = ANY($2::text[])",
        edge_pk,
        list(channels),
    )
    return {r["channel"]: r["id"] for r in rows}
