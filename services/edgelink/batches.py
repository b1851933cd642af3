"""Validating a TelemetryBatch against its session and turning it into numpy columns.

Every check here answers a malformed batch with a reason instead of an exception, so one bad batch
never ends a stream: the edge gets a REJECTED ack, drops the batch and logs why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from emma.common.v1 import errors_pb2
from emma.edge.v1 import edge_link_pb2

from services.errors import reason_name
from services.telemetry import Columns


@dataclass(frozen=True)
class Rejection:
    reason: str
    message: str


def _reject(reason: int, message: str) -> Rejection:
    return Rejection(reason_name(reason), message)


def to_columns(
    batch: edge_link_pb2.TelemetryBatch,
    series_lut: npt.NDArray[np.int64],
    *,
    now_unix_us: int,
    max_points: int,
    max_past_us: int,
    max_future_us: int,
) -> Columns | Rejection:
    """Check the batch; return its columns or why it is rejected."""
    n = len(batch.values)
    if batch.batch_seq == 0:
        return _reject(errors_pb2.ERROR_REASON_BATCH_SEQ_INVALID, "batch_seq must be 1 or more")
    if len(batch.channel_indexes) != n or len(batch.time_offsets_ms) != n:
        return _reject(
            errors_pb2.ERROR_REASON_BATCH_LENGTH_MISMATCH,
            f"channel_indexes={len(batch.channel_indexes)} time_offsets_ms={len(batch.time_offsets_ms)} "
            f"values={n}: the three arrays must have the same length",
        )
    if n > max_points:
        return _reject(errors_pb2.ERROR_REASON_BATCH_TOO_LARGE, f"{n} points; at most {max_points} per batch")
    values = np.fromiter(batch.values, dtype=np.float64, count=n)
    if not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        return _reject(
            errors_pb2.ERROR_REASON_BATCH_VALUE_NOT_FINITE,
            f"values[{bad}] is {values[bad]}; values must be finite",
        )
    indexes = np.fromiter(batch.channel_indexes, dtype=np.int64, count=n)
    if n and (indexes.max() >= len(series_lut) or (series_lut[indexes] < 0).any()):
        known = (indexes < len(series_lut)) & (series_lut[np.minimum(indexes, len(series_lut) - 1)] >= 0)
        bad = int(np.flatnonzero(~known)[0]) if len(series_lut) else 0
        return _reject(
            errors_pb2.ERROR_REASON_BATCH_UNKNOWN_CHANNEL,
            f"channel_indexes[{bad}]={int(indexes[bad])} is not in this session's channel table",
        )
    base_us = batch.base_time.seconds * 1_000_000 + batch.base_time.nanos // 1000
    times = base_us + np.fromiter(batch.time_offsets_ms, dtype=np.int64, count=n) * 1000
    if n:
        oldest, newest = int(times.min()), int(times.max())
        if oldest < now_unix_us - max_past_us or newest > now_unix_us + max_future_us:
            worst = oldest if oldest < now_unix_us - max_past_us else newest
            skew_s = (worst - now_unix_us) / 1e6
            return _reject(
                errors_pb2.ERROR_REASON_BATCH_TIME_OUT_OF_RANGE,
                f"a sample is {skew_s:+.0f} s from the server's clock; accepted: "
                f"-{max_past_us / 1e6:.0f} s to +{max_future_us / 1e6:.0f} s",
            )
    return Columns(series_ids=series_lut[indexes] if n else indexes, times_unix_us=times, values=values)
