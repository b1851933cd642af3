"""SampleRows.of: a group's points in the COPY's order (series, batch, time), each point still whole,
and the latest candidates and dirty buckets as before the points were sorted."""

from __future__ import annotations

import numpy as np

from services.telemetry.buckets import ROLLUP_BUCKET_US
from services.telemetry.ingest import Columns, SampleRows

T = 1_700_000_000_000_000  # µs, on a bucket boundary or not: only differences matter here


def columns(points: list[tuple[int, int, float]]) -> Columns:
    return Columns(
        series_ids=np.array([p[0] for p in points], dtype=np.int64),
        times_unix_us=np.array([p[1] for p in points], dtype=np.int64),
        values=np.array([p[2] for p in points], dtype=np.float64),
    )


def test_points_are_sorted_by_series_batch_and_time_and_keep_their_batch_and_value() -> None:
    # Two edges' batches interleave their series as edges send them (channel after channel, time after
    # time); the second batch of series 7 comes from a later batch of the same edge.
    first = [(7, T, 1.0), (5, T, 2.0), (7, T + 100, 3.0), (5, T + 100, 4.0)]
    second = [(9, T + 50, 5.0), (5, T + 200, 6.0), (9, T, 7.0)]
    third = [(7, T + 300, 8.0), (7, T + 200, 9.0)]
    rows = SampleRows.of([columns(first), columns(second), columns(third)])

    got = list(zip(rows.series.tolist(), rows.batch.tolist(), rows.times.tolist(), rows.values.tolist(), strict=True))
    sent = [(s, b, t, v) for b, batch in enumerate((first, second, third)) for s, t, v in batch]
    assert got == sorted(sent)  # every point once, as sent, in (series, batch, time) order


def test_latest_candidates_are_each_batch_and_series_last_point_and_the_later_one_on_ties() -> None:
    first = [(7, T + 100, 1.0), (5, T, 2.0), (7, T, 3.0), (5, T, 4.0)]  # series 5: two points at T
    second = [(7, T + 50, 5.0)]
    rows = SampleRows.of([columns(first), columns(second)])

    latest = set(
        zip(
            rows.latest_batch.tolist(),
            rows.latest_series.tolist(),
            rows.latest_time.tolist(),
            rows.latest_value.tolist(),
            strict=True,
        )
    )
    assert latest == {(0, 7, T + 100, 1.0), (0, 5, T, 4.0), (1, 7, T + 50, 5.0)}


def test_dirty_buckets_are_the_distinct_batch_and_bucket_pairs() -> None:
    later = T + 3 * ROLLUP_BUCKET_US
    rows = SampleRows.of([columns([(1, later, 1.0), (2, T, 2.0), (1, T, 3.0)]), columns([(1, T, 4.0)])])

    pairs = set(zip(rows.dirty_batch.tolist(), rows.dirty_bucket.tolist(), strict=True))
    bucket = T // ROLLUP_BUCKET_US
    assert pairs == {(0, bucket), (0, bucket + 3), (1, bucket)}


def test_an_empty_group_has_no_rows() -> None:
    rows = SampleRows.of([columns([])])
    assert len(rows.series) == len(rows.latest_series) == len(rows.dirty_batch) == 0


def lexsorted(batches: list[Columns]) -> list[tuple[int, int, int, float]]:
    """The points as (series, batch, time, value) in the reference order: np.lexsort, stable."""
    batch = np.concatenate([np.full(c.size, i, dtype=np.int64) for i, c in enumerate(batches)])
    series = np.concatenate([c.series_ids for c in batches])
    times = np.concatenate([c.times_unix_us for c in batches])
    values = np.concatenate([c.values for c in batches])
    order = np.lexsort((times, batch, series))
    return list(
        zip(series[order].tolist(), batch[order].tolist(), times[order].tolist(), values[order].tolist(), strict=True)
    )


def edge_batches(rng: np.random.Generator, first_series: list[int], in_time_order: bool) -> list[Columns]:
    """Batches as edges send them: each of 20 channels' points in turn, one time step after the other
    (or shuffled), some times equal; edges' series ids far apart or close together."""
    out = []
    for base in first_series:
        for step in range(3):
            points = [
                (base + ch, T + (step * 5 + k // 2) * 1_000_000, float(rng.normal()))
                for k in range(10)
                for ch in range(20)
            ]
            if not in_time_order:
                points = [points[i] for i in rng.permutation(len(points))]
            out.append(columns(points))
    return out


def test_the_order_is_lexsorts_whichever_way_it_is_found() -> None:
    # Series ids close together (the radix sort), far apart (the sort of a wide key) and beyond any
    # key (the lexsort), each with points in time order and shuffled (the lexsort again).
    rng = np.random.default_rng(7)
    for first_series in ([1, 100, 200], [1, 10_000_000, 20_000_000], [1, 2**61, 2**62]):
        for in_time_order in (True, False):
            batches = edge_batches(rng, first_series, in_time_order)
            rows = SampleRows.of(batches)
            got = list(
                zip(rows.series.tolist(), rows.batch.tolist(), rows.times.tolist(), rows.values.tolist(), strict=True)
            )
            assert got == lexsorted(batches), (first_series, in_time_order)


def test_a_batch_over_several_buckets_marks_only_the_buckets_it_has_points_in() -> None:
    bucket = T // ROLLUP_BUCKET_US
    start = bucket * ROLLUP_BUCKET_US
    backlog = [(1, start + b * ROLLUP_BUCKET_US + 5, 1.0) for b in (0, 2, 3, 7)]  # none in 1, 4, 5, 6
    two = [(1, start + ROLLUP_BUCKET_US - 1, 2.0), (2, start + ROLLUP_BUCKET_US, 3.0)]
    rows = SampleRows.of([columns(backlog), columns([]), columns(two), columns([(3, start, 4.0)])])

    pairs = list(zip(rows.dirty_batch.tolist(), rows.dirty_bucket.tolist(), strict=True))
    expected = sorted(
        {
            (i, t // ROLLUP_BUCKET_US)
            for i, batch in enumerate((backlog, [], two, [(3, start, 4.0)]))
            for _, t, _ in batch
        }
    )
    assert pairs == expected
