"""A site's measured history for other domains (the forecaster): 15-minute means of chosen channels of
every edge of the site, read like QueryHistory reads them (15-minute rollups where they are complete
and clean, raw rows for the still-open or dirty tail) in one REPEATABLE READ snapshot."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from emma.telemetry.v1 import telemetry_pb2

from services.names import EdgeName, SiteName
from services.platform.migrations import Conn
from services.registry import edges_of_site
from services.telemetry.buckets import ROLLUP_BUCKET
from services.telemetry.history import Plan, plan, query_series


@dataclass(frozen=True)
class ChannelMeans:
    """One channel of one edge: (bucket start, mean) per 15-minute bucket that holds samples, in time
    order. A bucket without samples is absent (a gap), never zero."""

    edge: EdgeName
    channel: str  # device/Channel
    unit: str
    means: tuple[tuple[dt.datetime, float], ...]


async def site_channels(conn: Conn, site: SiteName) -> list[tuple[EdgeName, str, str]]:
    """(edge, channel, unit) of every series of the site's edges, by edge id then channel."""
    edges = await edges_of_site(conn, site)
    if not edges:
        return []
    rows = await conn.fetch(
        """SELECT edge_pk, channel, unit FROM telemetry.series WHERE edge_pk = ANY($1::bigint[])
           ORDER BY array_position($1::bigint[], edge_pk), channel""",
        list(edges),
    )
    return [(edges[r["edge_pk"]], str(r["channel"]), str(r["unit"])) for r in rows]


async def site_channel_means(
    conn: Conn, site: SiteName, channels: Sequence[str], start: dt.datetime, end: dt.datetime
) -> list[ChannelMeans]:
    """The 15-minute means over [start, end) of `channels` (device/Channel) on every edge of the site
    that has them, by edge id then channel. Channels no edge has are left out; an unknown site has
    no edges and gives []. `start` and `end` are widened to whole 15-minute buckets."""
    if not channels or end <= start:
        return []
    edges = await edges_of_site(conn, site)
    if not edges:
        return []
    p = plan(start, end, ROLLUP_BUCKET, None)
    if conn.is_in_transaction():  # the caller's transaction is the snapshot
        return await _read(conn, edges, channels, p)
    # One snapshot, so the rollup worker cannot move buckets between rollups and raw rows mid-read.
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return await _read(conn, edges, channels, p)


async def _read(conn: Conn, edges: dict[int, EdgeName], channels: Sequence[str], p: Plan) -> list[ChannelMeans]:
    out: list[ChannelMeans] = []
    rows = await conn.fetch(
        """SELECT id, edge_pk, channel, unit FROM telemetry.series
           WHERE edge_pk = ANY($1::bigint[]) AND channel = ANY($2::text[])
           ORDER BY array_position($1::bigint[], edge_pk), channel""",
        list(edges),
        list(dict.fromkeys(channels)),
    )
    for r in rows:
        buckets, _ = await query_series(conn, int(r["id"]), int(r["edge_pk"]), p, telemetry_pb2.AGGREGATION_AVERAGE)
        out.append(
            ChannelMeans(
                edges[r["edge_pk"]],
                str(r["channel"]),
                str(r["unit"]),
                tuple((b.start, b.value) for b in buckets if b.count > 0),
            )
        )
    return out
