"""Series: one per (edge, channel address), created as edges declare their channels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.platform.migrations import Conn

# The series ids of channels $2 of edge $1.
_SERIES_OF_CHANNELS = "SELECT id, channel FROM telemetry.series WHERE edge_pk = $1 AND channel = ANY($2::text[])"


async def register_channels(conn: Conn, edge_pk: int, channels: Sequence[str], units: Sequence[str]) -> dict[str, int]:
    """Create the series of these channels the edge did not have yet; returns channel -> series id for all.

    One statement (every connecting edge calls this): the series it creates, and those that existed
    before it started. A series another connection created and committed while this statement ran
    (the same edge connecting twice at once) is in neither, and is read again.
    """
    wanted = list(channels)
    rows = await conn.fetch(
        """WITH created AS (
               INSERT INTO telemetry.series (edge_pk, channel, unit)
               SELECT $1, c, u FROM unnest($2::text[], $3::text[]) AS x(c, u)
               ON CONFLICT (edge_pk, channel) DO NOTHING
               RETURNING id, channel)
           SELECT id, channel FROM created
           UNION ALL
           """
        + _SERIES_OF_CHANNELS,
        edge_pk,
        wanted,
        list(units),
    )
    ids = {r["channel"]: r["id"] for r in rows}
    if len(ids) < len(set(wanted)):
        rows = await conn.fetch(_SERIES_OF_CHANNELS, edge_pk, wanted)
        ids = {r["channel"]: r["id"] for r in rows}
    return ids


async def series_of_channel(conn: Conn, edge_pk: int, channel: str) -> tuple[int, str] | None:
    """(series id, unit) of the edge's `device/Channel`, or None when the edge never declared it."""
    row = await conn.fetchrow(
        "SELECT id, unit FROM telemetry.series WHERE edge_pk = $1 AND channel = $2", edge_pk, channel
    )
    return None if row is None else (int(row["id"]), str(row["unit"]))


async def series_of_edges(conn: Conn, edge_pks: Sequence[int]) -> list[Any]:
    """The edges' series (id, edge_pk, channel, unit), in the order of `edge_pks`, then by channel."""
    return list(
        await conn.fetch(
            """SELECT r.id, r.edge_pk, r.channel, r.unit FROM telemetry.series r
               WHERE r.edge_pk = ANY($1::bigint[]) ORDER BY array_position($1::bigint[], r.edge_pk), r.channel""",
            list(edge_pks),
        )
    )


async def channels_of_edges(
    conn: Conn, edge_pks: Sequence[int], device: str | None, offset: int, limit: int
) -> list[Any]:
    """A page of the edges' channels (edge_pk, channel, unit, first_time, last_time), in the order of
    `edge_pks`, then by channel; `device` narrows to that device's channels."""
    return list(
        await conn.fetch(
            """SELECT r.edge_pk, r.channel, r.unit,
                      (SELECT min(time) FROM telemetry.samples s WHERE s.series_id = r.id) AS first_time,
                      l.time AS last_time
               FROM telemetry.series r LEFT JOIN telemetry.latest l ON l.series_id = r.id
               WHERE r.edge_pk = ANY($1::bigint[]) AND ($2::text IS NULL OR r.channel LIKE $2 || '/%')
               ORDER BY array_position($1::bigint[], r.edge_pk), r.channel OFFSET $3 LIMIT $4""",
            list(edge_pks),
            device,
            offset,
            limit,
        )
    )
