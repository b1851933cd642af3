"""Latest values: the newest sample of each series, kept by ingest (what command validation reads)."""

from __future__ import annotations

import datetime as dt

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
