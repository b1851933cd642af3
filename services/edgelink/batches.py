"""Validating a TelemetryBatch against its session and turning it into numpy columns and event rows.

Every check here answers a malformed batch with a reason instead of an exception, so one bad batch
never ends a stream: the edge gets a REJECTED ack, drops the batch and logs why. A batch that passed
must be storable: the checks cover everything PostgreSQL or numpy would refuse later (a batch_seq
beyond bigint, a time beyond int64 microseconds or timestamptz, a NUL character in text), because a
batch that fails inside the writer's transaction would fail again on every resend.

The limits (docs/telemetry-store.md): batch_seq 1 to 2^63-1, at most MAX_EVENTS_PER_BATCH events,
an event's device_id at most MAX_EVENT_DEVICE_ID_CHARS characters, no NUL character in an event's
text, event times within the protobuf Timestamp range (years 1 to 9999). An event message longer
than MAX_EVENT_MESSAGE_CHARS is stored truncated to that length (the original length is kept in the
event's details) rather than rejected: the message is for people, the batch's samples are not lost
for it. An event kind this server does not know (a newer edge's) is stored as its number.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from emma.common.v1 import errors_pb2
from emma.edge.v1 import edge_link_pb2
from google.protobuf import timestamp_pb2

from services.errors import reason_name
from services.platform.validation import TIMESTAMP_MAX_S, TIMESTAMP_MIN_S
from services.telemetry import Columns

# batch_seq is uint64 on the wire and bigint in the ledger.
MAX_BATCH_SEQ = 2**63 - 1
MAX_EVENTS_PER_BATCH = 1_000
MAX_EVENT_MESSAGE_CHARS = 1_000
MAX_EVENT_DEVICE_ID_CHARS = 128


@dataclass(frozen=True)
class Rejection:
    reason: str
    message: str


@dataclass(frozen=True)
class EventRow:
    """An edge event as app.edge_events stores it."""

    kind: str
    severity: str
    event_time_s: float
    message: str
    details: dict[str, Any] = field(default_factory=dict)


def _reject(reason: int, message: str) -> Rejection:
    return Rejection(reason_name(reason), message)


def _field_invalid(path: str, problem: str) -> Rejection:
    return _reject(errors_pb2.ERROR_REASON_FIELD_INVALID, f"{path}: {problem}")


def _timestamp_problem(ts: timestamp_pb2.Timestamp) -> str:
    # Timestamp's own range (years 1 to 9999), which is what PostgreSQL's timestamptz holds.
    if not TIMESTAMP_MIN_S <= ts.seconds <= TIMESTAMP_MAX_S or not 0 <= ts.nanos < 1_000_000_000:
        return "must be a time between 0001-01-01 and 9999-12-31"
    return ""


def event_kind(kind: int) -> str:
    """The kind's name without its prefix, or its number for a kind this server does not know yet
    (enums are only ever added to, so a newer edge may send one)."""
    if kind in edge_link_pb2.EdgeEventKind.values():
        return edge_link_pb2.EdgeEventKind.Name(kind).removeprefix("EDGE_EVENT_KIND_")  # type: ignore[arg-type]
    return str(kind)


def to_events(events: Any, *, now_s: float | None = None) -> list[EventRow] | Rejection:
    """Check a batch's events; return their rows or why the batch is rejected (see the module doc)."""
    if len(events) > MAX_EVENTS_PER_BATCH:
        return _reject(
            errors_pb2.ERROR_REASON_BATCH_TOO_LARGE,
            f"{len(events)} events; at most {MAX_EVENTS_PER_BATCH} per batch",
        )
    rows: list[EventRow] = []
    for i, ev in enumerate(events):
        path = f"events[{i}]"
        if "\x00" in ev.device_id:
            return _field_invalid(f"{path}.device_id", "must not contain a NUL character")
        if len(ev.device_id) > MAX_EVENT_DEVICE_ID_CHARS:
            return _field_invalid(f"{path}.device_id", f"at most {MAX_EVENT_DEVICE_ID_CHARS} characters")
        if "\x00" in ev.message:
            return _field_invalid(f"{path}.message", "must not contain a NUL character")
        for name in ("event_time", "end_time"):
            if ev.HasField(name) and (problem := _timestamp_problem(getattr(ev, name))):
                return _field_invalid(f"{path}.{name}", problem)
        details: dict[str, Any] = {
            "first_batch_seq": ev.first_batch_seq,
            "last_batch_seq": ev.last_batch_seq,
            "device_id": ev.device_id,
            "end_time_unix_s": ev.end_time.seconds + ev.end_time.nanos / 1e9,
        }
        message = ev.message
        if len(message) > MAX_EVENT_MESSAGE_CHARS:
            details["message_chars"] = len(message)
            message = message[:MAX_EVENT_MESSAGE_CHARS]
        stamp = ev.event_time
        rows.append(
            EventRow(
                kind=event_kind(ev.kind),
                severity="warning" if ev.kind == edge_link_pb2.EDGE_EVENT_KIND_TELEMETRY_GAP else "info",
                event_time_s=stamp.seconds + stamp.nanos / 1e9
                if ev.HasField("event_time")
                else (now_s if now_s is not None else time.time()),
                message=message,
                details=details,
            )
        )
    return rows


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
    if not 1 <= batch.batch_seq <= MAX_BATCH_SEQ:
        return _reject(
            errors_pb2.ERROR_REASON_BATCH_SEQ_INVALID,
            f"batch_seq {batch.batch_seq} is outside 1..{MAX_BATCH_SEQ} (2^63-1)",
        )
    if len(batch.channel_indexes) != n or len(batch.time_offsets_ms) != n:
        return _reject(
            errors_pb2.ERROR_REASON_BATCH_LENGTH_MISMATCH,
            f"channel_indexes={len(batch.channel_indexes)} time_offsets_ms={len(batch.time_offsets_ms)} "
            f"values={n}: the three arrays must have the same length",
        )
    if n > max_points:
        return _reject(errors_pb2.ERROR_REASON_BATCH_TOO_LARGE, f"{n} points; at most {max_points} per batch")
    # np.array, not np.fromiter: the upb containers hand numpy their packed array at once (3 µs for
    # 1,000 points), where iterating makes a Python number per point (80 µs, a third of EdgeLink's CPU
    # per point in the throughput bench; docs/performance.md, issue 21, session 15).
    values = np.array(batch.values, dtype=np.float64)
    if not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        return _reject(
            errors_pb2.ERROR_REASON_BATCH_VALUE_NOT_FINITE,
            f"values[{bad}] is {values[bad]}; values must be finite",
        )
    indexes = np.array(batch.channel_indexes).astype(np.int64, copy=False)
    if n and (indexes.max() >= len(series_lut) or (series_lut[indexes] < 0).any()):
        if len(series_lut):
            known = (indexes < len(series_lut)) & (series_lut[np.minimum(indexes, len(series_lut) - 1)] >= 0)
            bad = int(np.flatnonzero(~known)[0])
        else:  # a session without a channel table: every index is unknown
            bad = 0
        return _reject(
            errors_pb2.ERROR_REASON_BATCH_UNKNOWN_CHANNEL,
            f"channel_indexes[{bad}]={int(indexes[bad])} is not in this session's channel table",
        )
    if not n:
        # No points: base_time means nothing, and must not reach numpy (it may not fit an int64).
        empty = np.zeros(0, dtype=np.int64)
        return Columns(series_ids=empty, times_unix_us=empty.copy(), values=values)
    offsets_us = np.array(batch.time_offsets_ms).astype(np.int64, copy=False) * 1000
    # The window is checked on Python integers first: a base_time of a billion years overflows the
    # int64 microseconds numpy computes with.
    base_us = batch.base_time.seconds * 1_000_000 + batch.base_time.nanos // 1000
    oldest, newest = base_us + int(offsets_us.min()), base_us + int(offsets_us.max())
    lowest, highest = now_unix_us - max_past_us, now_unix_us + max_future_us
    if oldest < lowest or newest > highest:
        worst = oldest if oldest < lowest else newest
        skew_s = (worst - now_unix_us) / 1e6
        return _reject(
            errors_pb2.ERROR_REASON_BATCH_TIME_OUT_OF_RANGE,
            f"a sample is {skew_s:+.0f} s from the server's clock; accepted: "
            f"-{max_past_us / 1e6:.0f} s to +{max_future_us / 1e6:.0f} s",
        )
    times = base_us + offsets_us
    return Columns(series_ids=series_lut[indexes], times_unix_us=times, values=values)
