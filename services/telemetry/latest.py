"""Latest values: the newest sample of each series, kept by ingest (what command validation reads)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from services.platform.migrations import Conn


async def latest_value(conn: Conn, edge_pk: int, channel: str) -> tuple[dt.datetime, float] | None:
    """(sample time, value) of the edge's `device/Channel`, or None when it never reported one."""
    row = await conn.fetchrow(
        """SELECT l.time, l.value FROM telemetry.series s JOIN telemetry.latest l ON l.series_id = s.id
           WHERE s.edge_pk = $1 AND s.channel = $2""",
        edge_pk,
        channel,
    )
    return None if row is None else (row["time"], row["value"])


async def latest_of_edges(conn: Conn, edge_pks: Sequence[int], device: str | None = None) -> list[Any]:
    """Latest values of the edges' series (edge_pk, series_id, channel, unit, time, value), in the order of
    `edge_pks`, then by channel; `device` narrows to that device's channels."""
    return list(
        await conn.fetch(
            """SELECT r.edge_pk, r.id AS series_id, r.channel, r.unit, l.time, l.value
               FROM telemetry.series r JOIN telemetry.latest l ON l.series_id = r.id
               WHERE r.edge_pk = ANY($1::bigint[]) AND ($2::text IS NULL OR r.channel LIKE $2 || '/%')
               ORDER BY array_position($1::bigint[], r.edge_pk), r.channel""",
            list(edge_pks),
            device,
        )
    )
