"""Committed telemetry for consumers outside the ingest path (the alarm engine): what a set of channels
stored after a cursor, their newest values, and when each edge's newest batch arrived.

Readers poll these after ingest committed, so they never hold up an ack; every query goes through
an index (samples by series and time, latest by series, the ledger by edge and batch_seq).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from services.platform.migrations import Conn


@dataclass(frozen=True)
class ChannelCursor:
    """A channel of an edge ("device/Channel") and the time of the last sample its reader judged;
    None: the reader starts now and wants only the newest sample."""

    edge_pk: int
    channel: str
    after: dt.datetime | None


@dataclass(frozen=True)
class CommittedSample:
    edge_pk: int
    channel: str
    unit: str
    time: dt.datetime
    value: float


async def samples_after(conn: Conn, cursors: Sequence[ChannelCursor], per_channel: int = 1000) -> list[CommittedSample]:
    """Per channel, the committed samples newer than its cursor (at most `per_channel`, oldest first);
    channels that never reported are left out. Ordered by edge, channel, time."""
    if not cursors:
        return []
    rows = await conn.fetch(
        """SELECT c.edge_pk, c.channel, s.unit, x.time, x.value
           FROM unnest($1::bigint[], $2::text[], $3::timestamptz[]) AS c(edge_pk, channel, after)
           JOIN telemetry.series s ON s.edge_pk = c.edge_pk AND s.channel = c.channel
           CROSS JOIN LATERAL (
               SELECT p.time, p.value FROM telemetry.samples p
               WHERE c.after IS NOT NULL AND p.series_id = s.id AND p.time > c.after
               ORDER BY p.time LIMIT $4
           ) x
           UNION ALL
           SELECT c.edge_pk, c.channel, s.unit, l.time, l.value
           FROM unnest($1::bigint[], $2::text[], $3::timestamptz[]) AS c(edge_pk, channel, after)
           JOIN telemetry.series s ON s.edge_pk = c.edge_pk AND s.channel = c.channel
           JOIN telemetry.latest l ON l.series_id = s.id
           WHERE c.after IS NULL
           ORDER BY 1, 2, 4""",
        [c.edge_pk for c in cursors],
        [c.channel for c in cursors],
        [c.after for c in cursors],
        per_channel,
    )
    return [CommittedSample(r["edge_pk"], r["channel"], r["unit"], r["time"], r["value"]) for r in rows]


@dataclass(frozen=True)
class QuietCursor:
    """A channel, the time of the last sample its reader judged, and the band of values that change
    nothing for it: strictly between lo and hi (either may be infinite)."""

    edge_pk: int
    channel: str
    after: dt.datetime
    lo: float
    hi: float


@dataclass(frozen=True)
class QuietRead:
    """What a channel committed after its cursor, in short: the newest sample's time, and whether any
    sample lies outside the band (NaN does), in which case the reader wants the samples themselves."""

    newest: dt.datetime
    loud: bool


async def quiet_after(conn: Conn, cursors: Sequence[QuietCursor]) -> dict[tuple[int, str], QuietRead]:
    """(edge_pk, "device/Channel") -> QuietRead, for the channels that committed a sample after their
    cursor. Most samples of a watched channel change nothing; checking them here, instead of sending
    every one to the reader, keeps the reader's share of ten thousand channels' samples small."""
    if not cursors:
        return {}
    rows = await conn.fetch(
        """SELECT c.edge_pk, c.channel, x.newest, x.loud
           FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::float8[], $5::float8[])
                AS c(edge_pk, channel, after, lo, hi)
           JOIN telemetry.series s ON s.edge_pk = c.edge_pk AND s.channel = c.channel
           CROSS JOIN LATERAL (
               SELECT max(p.time) AS newest, bool_or(NOT (p.value > c.lo AND p.value < c.hi)) AS loud
               FROM telemetry.samples p WHERE p.series_id = s.id AND p.time > c.after
           ) x
           WHERE x.newest IS NOT NULL""",
        [c.edge_pk for c in cursors],
        [c.channel for c in cursors],
        [c.after for c in cursors],
        [c.lo for c in cursors],
        [c.hi for c in cursors],
    )
    return {(r["edge_pk"], r["channel"]): QuietRead(r["newest"], r["loud"]) for r in rows}


async def latest_times(conn: Conn, channels: Sequence[tuple[int, str]]) -> dict[tuple[int, str], dt.datetime]:
    """(edge_pk, "device/Channel") -> the time of its newest sample, for the channels that reported."""
    if not channels:
        return {}
    rows = await conn.fetch(
        """SELECT c.edge_pk, c.channel, l.time
           FROM unnest($1::bigint[], $2::text[]) AS c(edge_pk, channel)
           JOIN telemetry.series s ON s.edge_pk = c.edge_pk AND s.channel = c.channel
           JOIN telemetry.latest l ON l.series_id = s.id""",
        [c[0] for c in channels],
        [c[1] for c in channels],
    )
    return {(r["edge_pk"], r["channel"]): r["time"] for r in rows}


async def last_batch_times(conn: Conn, edge_pks: Sequence[int]) -> dict[int, dt.datetime]:
    """edge_pk -> when the cloud stored its newest telemetry batch, for the edges that ever sent one."""
    if not edge_pks:
        return {}
    rows = await conn.fetch(
        """SELECT e.pk, b.received_time FROM unnest($1::bigint[]) AS e(pk)
           CROSS JOIN LATERAL (
               SELECT received_time FROM telemetry.batch_ledger WHERE edge_pk = e.pk ORDER BY batch_seq DESC LIMIT 1
           ) b""",
        list(edge_pks),
    )
    return {int(r["pk"]): r["received_time"] for r in rows}
