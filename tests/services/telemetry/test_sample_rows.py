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
