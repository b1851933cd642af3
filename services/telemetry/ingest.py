"""What ingest stores: a group of telemetry batches in one transaction of the caller's.

The EdgeLink ingest writer owns the grouping, the lanes, the transaction and its retries; inside
its transaction it calls these, in this order:

1. `record_batches`: one statement inserts the ledger rows (edge, batch_seq) with ON CONFLICT DO
   NOTHING, which tells new batches from resent ones, and, for the new ones only, upserts latest
   values and marks rollup dirt. It returns the keys of the new batches.
2. `copy_samples`: one binary COPY writes the new batches' samples.

Small groups without events skip the caller's transaction: `store_batches` does both in one
statement, which is a transaction of its own.

`SampleRows.of` lays out a group's points once for both. `create_partitions` (maintenance) makes
the daily partitions a group of old data needs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from services.platform.migrations import Conn
from services.telemetry.buckets import ROLLUP_BUCKET_S, ROLLUP_BUCKET_US
from services.telemetry.copy_binary import samples_copy_payload


@dataclass
class Columns:
    """A validated batch as arrays: one element per point."""

    series_ids: npt.NDArray[np.int64]
    times_unix_us: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]

    @property
    def size(self) -> int:
        return len(self.values)


@dataclass
class SampleRows:
    """A transaction's points as one set of columns, with what the recording statement needs.

    `batch` is each point's batch (0-based index into the transaction's unique batches); the latest
    candidates are, per batch and series, the point with the largest time (the last one on ties);
    the dirty buckets are the distinct (batch, 15-minute bucket) pairs. The statement keeps only
    those of new batches. The points are in the order the COPY writes them: by series, batch, time.
    """

    batch: npt.NDArray[np.int64]
    series: npt.NDArray[np.int64]
    times: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    latest_batch: npt.NDArray[np.int64]
    latest_series: npt.NDArray[np.int64]
    latest_time: npt.NDArray[np.int64]
    latest_value: npt.NDArray[np.float64]
    dirty_batch: npt.NDArray[np.int64]
    dirty_bucket: npt.NDArray[np.int64]

    @classmethod
    def of(cls, batches: Sequence[Columns]) -> SampleRows:
        sizes = np.fromiter((c.size for c in batches), dtype=np.int64, count=len(batches))
        batch = np.repeat(np.arange(len(batches), dtype=np.int64), sizes)
        series = np.concatenate([c.series_ids for c in batches]).astype(np.int64, copy=False)
        times = np.concatenate([c.times_unix_us for c in batches]).astype(np.int64, copy=False)
        values = np.concatenate([c.values for c in batches]).astype(np.float64, copy=False)
        if len(series):
            pairs = _distinct_buckets(times, sizes)
            # The points sorted by series, then batch, then time (ties keep their order), and kept so:
            # the COPY then writes each series' rows together, in time order, into the samples'
            # (series, time) index, which was 6-11 % faster than the edges' interleaved order
            # (docs/performance.md, issue 21). A (batch, series) pair's points are one run of it, the
            # last of which is its latest candidate.
            order = _copy_order(batch, series, times, len(batches))
            batch, series, times, values = batch[order], series[order], times[order], values[order]
            last = np.flatnonzero(np.r_[(batch[1:] != batch[:-1]) | (series[1:] != series[:-1]), True])
        else:
            last = np.zeros(0, dtype=np.int64)
            pairs = np.zeros((2, 0), dtype=np.int64)
        return cls(
            batch=batch,
            series=series,
            times=times,
            values=values,
            latest_batch=batch[last],
            latest_series=series[last],
            latest_time=times[last],
            latest_value=values[last],
            dirty_batch=pairs[0],
            dirty_bucket=pairs[1],
        )


def _copy_order(
    batch: npt.NDArray[np.int64], series: npt.NDArray[np.int64], times: npt.NDArray[np.int64], batches: int
) -> npt.NDArray[np.intp]:
    """The permutation that sorts the points by series, batch, time (ties keep their order): what
    `np.lexsort((times, batch, series))` returns, cheaper for what edges send.

    That lexsort cost 0.9 ms per 27,000 points in the EdgeLink loop. The points arrive batch after
    batch, and an edge sends each channel's points in time order, so a stable sort by one (series,
    batch) key leaves each run in time order already; that is checked, and a group where it does not
    hold is lexsorted. A key below 2^16 is sorted by radix (0.16 ms), a larger one by timsort (0.35 ms)."""
    low = int(series.min())
    span = int(series.max()) - low + 1
    if span <= (1 << 62) // batches:
        key = (series - low) * batches + batch
        order = np.argsort(key.astype(np.uint16) if span * batches <= 1 << 16 else key, kind="stable")
        runs, ordered = key[order], times[order]
        if not ((ordered[1:] < ordered[:-1]) & (runs[1:] == runs[:-1])).any():
            return order
    return np.lexsort((times, batch, series))


def _distinct_buckets(times: npt.NDArray[np.int64], sizes: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """The distinct (batch, 15-minute bucket) pairs of a group's points, sorted, as two rows; `times`
    holds the points batch after batch, `sizes` how many each batch has.

    A batch covers seconds to minutes, so the buckets of its first and last point are all of its
    buckets (there is none between them); only a batch that spans three or more (an edge's backlog)
    has its points' buckets looked at. Per point, the division and np.unique's sort took 1.3 ms per
    27,000 points in the EdgeLink loop; this is two reductions."""
    ends = np.cumsum(sizes)
    starts = ends - sizes
    full = np.flatnonzero(sizes)  # batches without points have no buckets (and reduceat needs points)
    first = np.minimum.reduceat(times, starts[full]) // ROLLUP_BUCKET_US
    last = np.maximum.reduceat(times, starts[full]) // ROLLUP_BUCKET_US
    two = last > first
    parts = [np.stack([full, first]), np.stack([full[two], last[two]])]
    for k in np.flatnonzero(last - first > 1):
        b = full[k]
        inner = np.unique(times[starts[b] : ends[b]] // ROLLUP_BUCKET_US)
        inner = inner[(inner > first[k]) & (inner < last[k])]
        parts.append(np.stack([np.full(len(inner), b), inner]))
    pairs = np.concatenate(parts, axis=1).astype(np.int64, copy=False)
    return pairs[:, np.lexsort((pairs[1], pairs[0]))]


async def record_batches(
    conn: Conn, keys: Sequence[tuple[int, int]], batches: Sequence[Columns], rows: SampleRows
) -> set[tuple[int, int]]:
    """One statement: ledger rows, then latest values and rollup dirt of the batches that are new.

    `keys` are the (edge_pk, batch_seq) of `batches`, unique and sorted (so every transaction locks
    ledger rows in the same order); `rows` is `SampleRows.of(batches)`. Returns the keys that were new.

    The ledger insert decides which batches are new (ON CONFLICT DO NOTHING RETURNING); the
    latest-value upsert and the dirty-bucket insert read that decision in the same statement, so a
    resent batch touches neither. One statement instead of three saves two round trips per
    transaction, and every round trip also waits for this process's event loop, which is busy
    with the streams' messages: under 1,000 streams that wait, not PostgreSQL, was most of a
    transaction's tail.
    """
    found = await conn.fetch(
        _RECORD_GROUP_SQL,
        *_batch_arguments(keys, batches),
        rows.latest_batch.tolist(),
        rows.latest_series.tolist(),
        rows.latest_time.tolist(),
        rows.latest_value.tolist(),
        rows.dirty_batch.tolist(),
        rows.dirty_bucket.tolist(),
    )
    return {(r["edge_pk"], r["batch_seq"]) for r in found}


async def store_batches(
    conn: Conn, keys: Sequence[tuple[int, int]], batches: Sequence[Columns], rows: SampleRows
) -> set[tuple[int, int]]:
    """`record_batches` and the new batches' samples in one statement, outside any transaction of the
    caller's: the statement is its own transaction, committed when this returns. Returns the keys
    that were new.

    For small groups (a fleet of edges sending a batch a second each): BEGIN, the recording
    statement, the COPY (two round trips) and COMMIT are five round trips, each of which waits for
    this process's busy event loop and wakes PostgreSQL; this is one. The samples travel as arrays,
    which costs more CPU per point than the binary COPY, so large groups still use `copy_samples`.
    The statement picks the latest candidates from the points itself: asyncpg encodes a list element
    by element (with a Python-level type check for each), so every array passed costs.
    """
    found = await conn.fetch(
        _STORE_GROUP_SQL,
        *_batch_arguments(keys, batches),
        rows.batch.tolist(),
        rows.series.tolist(),
        rows.times.tolist(),
        rows.values.tolist(),
        rows.dirty_batch.tolist(),
        rows.dirty_bucket.tolist(),
    )
    return {(r["edge_pk"], r["batch_seq"]) for r in found}


def _batch_arguments(keys: Sequence[tuple[int, int]], batches: Sequence[Columns]) -> list[Any]:
    """$1..$5 of the recording statement: the batches."""

    def bound(columns: Columns, pick: Any) -> int | None:
        t = columns.times_unix_us
        return int(pick(t)) if len(t) else None

    return [
        [k[0] for k in keys],
        [k[1] for k in keys],
        [c.size for c in batches],
        [bound(c, np.min) for c in batches],
        [bound(c, np.max) for c in batches],
    ]


async def last_stored_batch_seq(conn: Conn, edge_pk: int) -> int:
    """The highest batch_seq stored for the edge (0 when none): where a reconnecting edge resumes."""
    return (await last_stored_batch_seqs(conn, [edge_pk]))[edge_pk]


async def last_stored_batch_seqs(conn: Conn, edge_pks: Sequence[int]) -> dict[int, int]:
    """`last_stored_batch_seq` of several edges in one statement (each its own backward step of the
    ledger's index, as for one edge: a max over the ledger of many edges would read every row)."""
    rows = await conn.fetch(
        """SELECT e, coalesce((SELECT max(l.batch_seq) FROM telemetry.batch_ledger l WHERE l.edge_pk = e), 0) AS last
           FROM unnest($1::bigint[]) AS u(e)""",
        list(edge_pks),
    )
    return {int(r["e"]): int(r["last"]) for r in rows}


async def copy_samples(conn: Any, rows: SampleRows, fresh: list[int], batches: int) -> None:
    """One binary COPY of the new batches' samples (`fresh`: their indexes among the `batches`)."""
    if len(fresh) == batches:
        sids, times, values = rows.series, rows.times, rows.values
    else:
        keep = np.isin(rows.batch, np.asarray(fresh, dtype=np.int64))
        sids, times, values = rows.series[keep], rows.times[keep], rows.values[keep]
    if len(sids) == 0:
        return
    await conn.copy_to_table(
        "samples",
        schema_name="telemetry",
        columns=["series_id", "time", "value"],
        source=_one_chunk(samples_copy_payload(sids, times, values)),
        format="binary",
    )


# $1..$5: the unique batches (sorted by edge and batch_seq, so every transaction locks ledger rows in
# the same order); $6..$9: latest candidates (batch index, series, time in µs, value); $10..$11:
# dirty (batch index, 15-minute bucket number). Batch indexes are 0-based positions in $1..$5.
_RECORD_CTES = f"""
WITH batch AS (
    SELECT u.e, u.s, u.c, u.lo, u.hi, u.n - 1 AS i
    FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::bigint[], $5::bigint[])
         WITH ORDINALITY AS u(e, s, c, lo, hi, n)
), stored AS (
    INSERT INTO telemetry.batch_ledger (edge_pk, batch_seq, point_count, min_time, max_time)
    SELECT e, s, c, timestamptz 'epoch' + lo * interval '1 microsecond',
           timestamptz 'epoch' + hi * interval '1 microsecond'
    FROM batch
    ON CONFLICT DO NOTHING
    RETURNING edge_pk, batch_seq
), fresh AS (
    SELECT b.i FROM batch b JOIN stored n ON n.edge_pk = b.e AND n.batch_seq = b.s
), candidate AS (
    SELECT DISTINCT ON (p.sid) p.sid, timestamptz 'epoch' + p.t * interval '1 microsecond' AS t, p.v
    FROM unnest($6::bigint[], $7::bigint[], $8::bigint[], $9::float8[]) WITH ORDINALITY AS p(i, sid, t, v, n)
    WHERE p.i IN (SELECT i FROM fresh)
    ORDER BY p.sid, p.t DESC, p.i DESC, p.n DESC
), newer AS (
    -- A plain UPDATE, not INSERT ... ON CONFLICT DO UPDATE: the latter first locks each existing
    -- row (one more WAL record per row) before updating it. Same guard: never an older time.
    UPDATE telemetry.latest AS l SET time = c.t, value = c.v
    FROM candidate c
    WHERE l.series_id = c.sid AND l.time <= c.t
    RETURNING l.series_id
), first_values AS (
    -- The candidates the UPDATE did not take: series without a row yet (their first value), and
    -- the rare sample older than the stored one, which meets the same guard here and changes nothing.
    -- (Not a NOT EXISTS probe of latest: that cost as much as the update itself.)
    INSERT INTO telemetry.latest AS l (series_id, time, value)
    SELECT c.sid, c.t, c.v FROM candidate c
    WHERE c.sid NOT IN (SELECT series_id FROM newer)
    ON CONFLICT (series_id) DO UPDATE SET time = EXCLUDED.time, value = EXCLUDED.value
    WHERE l.time <= EXCLUDED.time
), dirty AS (
    INSERT INTO telemetry.rollup_dirty (edge_pk, bucket)
    SELECT DISTINCT b.e, to_timestamp(d.k * {ROLLUP_BUCKET_S})
    FROM unnest($10::bigint[], $11::bigint[]) AS d(i, k) JOIN batch b ON b.i = d.i
    WHERE d.i IN (SELECT i FROM fresh)
    ORDER BY 1, 2
    ON CONFLICT DO NOTHING
)"""
_RECORD_GROUP_SQL = _RECORD_CTES + "\nSELECT edge_pk, batch_seq FROM stored"
# The same with every point of the group as $6..$9 instead of the latest candidates (the candidate
# CTE picks the same ones: the newest point per series, the later one on equal times), and the new
# batches' samples inserted from them.
_STORE_GROUP_SQL = (
    _RECORD_CTES
    + """, samples AS (
    INSERT INTO telemetry.samples (series_id, time, value)
    SELECT p.sid, timestamptz 'epoch' + p.t * interval '1 microsecond', p.v
    FROM unnest($6::bigint[], $7::bigint[], $8::bigint[], $9::float8[]) AS p(i, sid, t, v)
    WHERE p.i IN (SELECT i FROM fresh)
)
SELECT edge_pk, batch_seq FROM stored"""
)


async def _one_chunk(payload: bytearray) -> AsyncIterator[bytearray]:
    """asyncpg takes an async iterable of bytes as a COPY source; the payload is one chunk."""
    yield payload
