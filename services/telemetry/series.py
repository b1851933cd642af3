"""Series: one per (edge, channel address), created as edges declare their channels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.platform.migrations import Conn

# The series ids of the channels of edges: ($1[i], $2[i]) for every i.
_SERIES_OF_CHANNELS = """SELECT s.id, s.edge_pk, s.channel FROM telemetry.series s
    JOIN unnest($1::bigint[], $2::text[]) AS w(e, c) ON s.edge_pk = w.e AND s.channel = w.c"""


async def register_channels(conn: Conn, edge_pk: int, channels: Sequence[str], units: Sequence[str]) -> dict[str, int]:
    """Create the series of these channels the edge did not have yet; returns channel -> series id for all."""
    return (await register_channels_of_edges(conn, [(edge_pk, channels, units)]))[0]


async def register_channels_of_edges(
    conn: Conn, declared: Sequence[tuple[int, Sequence[str], Sequence[str]]]
) -> list[dict[str, int]]:
    """`register_channels` of several edges at once: per (edge_pk, channels, units), in order, channel
    -> series id of all its channels.

    One statement (every connecting edge needs this, and EdgeLink takes the Hellos waiting at one time
    together): the series it creates, and those that existed before it started. A series another
    connection created and committed while this statement ran (the same edge connecting twice at once)
    is in neither, and is read again. Rows are inserted in (edge, channel) order, so two statements
    that create some of the same series wait for each other rather than deadlock.
    """
    edges = [e for e, channels, _ in declared for _ in channels]
    wanted = [c for _, channels, _ in declared for c in channels]
    units = [u for _, _, us in declared for u in us]
    rows = await conn.fetch(
        """WITH created AS (
               INSERT INTO telemetry.series (edge_pk, channel, unit)
               SELECT e, c, u FROM unnest($1::bigint[], $2::text[], $3::text[]) AS x(e, c, u)
               ORDER BY e, c
               ON CONFLICT (edge_pk, channel) DO NOTHING
               RETURNING id, edge_pk, channel)
           SELECT id, edge_pk, channel FROM created
           UNION ALL
           """
        + _SERIES_OF_CHANNELS,
        edges,
        wanted,
        units,
    )
    ids: dict[int, dict[str, int]] = {}
    for r in rows:
        ids.setdefault(int(r["edge_pk"]), {})[r["channel"]] = int(r["id"])
    missing = [(e, c) for e, channels, _ in declared for c in channels if c not in ids.get(e, {})]
    if missing:
        for r in await conn.fetch(_SERIES_OF_CHANNELS, [e for e, _ in missing], [c for _, c in missing]):
            ids.setdefault(int(r["edge_pk"]), {})[r["channel"]] = int(r["id"])
    return [{c: ids[e][c] for c in channels} for e, channels, _ in declared]


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
