"""Telemetry batches: samples -> columnar TelemetryBatch -> durable outbox, on a fixed interval.

`build_batches` is pure: points (channel index, time, value) become TelemetryBatches of at most
`max_points` points whose times are `base_time + time_offsets_ms[i]`.

`BatchProducer` runs for the daemon's whole life, connected or not: every `batch_interval_s` it takes
the samples the cycle collected, maps channels to their permanent registry indexes, builds batches and
appends each to the outbox before anything tries to send it. Nothing measured waits for the cloud.

batch_seq: the outbox assigns it (an AUTOINCREMENT key), but it must also be inside the payload. The
producer holds `seq_lock` (shared with the Welcome handling, the only other code that moves the
sequence via `advance_seq`) and, in one worker-thread call, reads the outbox's last assigned seq, stamps
`last + 1` into the batch and appends it; the append returns the seq it really assigned, and the two
agree because nothing else appends. The row and its payload commit in one transaction, so a crash
leaves either both or neither. Should they ever disagree, the sender trusts the row (see session.py).

Events ride in the first batch built after they happened: DAEMON_STARTED once per process, and every
outbox gap (overflow dropped batches) as TELEMETRY_GAP. A gap is forgotten (`ack_gap`) only after the
batch carrying it is durable; if it grew meanwhile, the larger gap goes out with the next batch.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Final, NamedTuple

from emma.edge.v1 import edge_link_pb2

from edge_daemon.channels import Sample
from edge_daemon.cycle import LATENESS
from edge_daemon.errors import OutboxError
from edge_daemon.outbox import Gap, Outbox
from edge_daemon.uplink.wire import timestamp, timestamp_ms, wire_channel, wire_value

if TYPE_CHECKING:
    from edge_daemon.daemon import EdgeDaemon

log = logging.getLogger(__name__)

UINT32_MAX: Final = 2**32 - 1
# A point costs ~12-16 bytes on the wire; 32 keeps a batch far below the outbox bound it must fit.
BYTES_PER_POINT_BOUND: Final = 32
LATENESS_WINDOW_S: Final = 60.0


class Point(NamedTuple):
    channel_index: int
    time_s: float
    value: float


def build_batches(
    points: Sequence[Point], max_points: int, events: Sequence[edge_link_pb2.EdgeEvent] = ()
) -> list[edge_link_pb2.TelemetryBatch]:
    """Columnar batches of at most `max_points` points, in time order; `events` go in the first one.

    batch_seq is left 0: the outbox assigns it. A batch also ends where an offset would not fit the
    uint32 milliseconds column (a wall-clock jump of 49 days).
    """
    if max_points < 1:
        raise ValueError("max_points must be at least 1")
    batches: list[edge_link_pb2.TelemetryBatch] = []
    indexes: list[int] = []
    offsets: list[int] = []
    values: list[float] = []
    base_ms = 0

    def close() -> None:
        batch = edge_link_pb2.TelemetryBatch(
            base_time=timestamp_ms(base_ms),
            channel_indexes=indexes,
            time_offsets_ms=offsets,
            values=values,
            events=events if not batches else (),
        )
        batches.append(batch)

    for point in sorted(points, key=lambda p: p.time_s):
        ms = round(point.time_s * 1000)
        if not values:
            base_ms = ms
        elif len(values) >= max_points or ms - base_ms > UINT32_MAX:
            close()
            indexes, offsets, values = [], [], []
            base_ms = ms
        indexes.append(point.channel_index)
        offsets.append(ms - base_ms)
        values.append(point.value)
    if values or (events and not batches):
        if not values:
            base_ms = round(time.time() * 1000)
        close()
    return batches


def gap_event(gap: Gap) -> edge_link_pb2.EdgeEvent:
    return edge_link_pb2.EdgeEvent(
        kind=edge_link_pb2.EDGE_EVENT_KIND_TELEMETRY_GAP,
        event_time=timestamp(gap.start_time),
        end_time=timestamp(gap.end_time),
        first_batch_seq=gap.first_seq,
        last_batch_seq=gap.last_seq,
        message=(
            f"outbox full: {gap.batch_count} unsent batches ({gap.size_bytes} bytes) between batch_seq "
            f"{gap.first_seq} and {gap.last_seq} were dropped"
        ),
    )


class LatenessWindow:
    """The cycle's lateness samples (`_cycle/LatenessMs`) of the last minute, for the heartbeat's p99."""

    def __init__(self, span_s: float = LATENESS_WINDOW_S) -> None:
        self.span_s = span_s
        self._values: deque[tuple[float, float]] = deque()

    def observe(self, samples: Iterable[Sample]) -> None:
        for s in samples:
            if s.name == LATENESS:
                value = float(s.value)
                if math.isfinite(value):
                    self._values.append((s.timestamp, value))
        if self._values:
            newest = self._values[-1][0]
            while self._values and self._values[0][0] < newest - self.span_s:
                self._values.popleft()

    def p99(self) -> float:
        """The 99th percentile (nearest rank) in milliseconds; 0 without samples."""
        if not self._values:
            return 0.0
        ordered = sorted(v for _, v in self._values)
        return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


class BatchProducer:
    def __init__(self, daemon: EdgeDaemon, outbox: Outbox, *, started_time: float | None = None) -> None:
        registry = daemon.registry
        if registry is None:
            raise OutboxError("the channel registry is not open")
        self.daemon = daemon
        self.outbox = outbox
        self.registry = registry
        telemetry = daemon.config.telemetry
        self.interval_s = telemetry.batch_interval_s
        self.max_points = max(1, min(telemetry.max_batch_points, outbox.max_bytes // BYTES_PER_POINT_BOUND))
        self.seq_lock = asyncio.Lock()
        self.appended = asyncio.Event()
        self.lateness = LatenessWindow()
        self.batches = 0
        self.points = 0
        self.non_finite = 0
        self._units: dict[str, str] = {}
        self._unmapped: set[str] = set()
        self._events: list[edge_link_pb2.EdgeEvent] = []
        if started_time is not None:
            self._events.append(
                edge_link_pb2.EdgeEvent(
                    kind=edge_link_pb2.EDGE_EVENT_KIND_DAEMON_STARTED,
                    event_time=timestamp(started_time),
                    message="edge daemon started",
                )
            )

    def limit_points(self, cloud_max: int) -> None:
        """Respect the cloud's Welcome.max_batch_points from now on (batches already stored keep theirs)."""
        if cloud_max > 0 and cloud_max < self.max_points:
            log.warning(
                "the cloud accepts fewer points per batch than configured",
                extra={"configured": self.max_points, "cloud_max": cloud_max},
            )
            self.max_points = cloud_max

    async def run(self) -> None:
        """Flush on absolute deadlines every `interval_s`; never returns."""
        deadline = time.monotonic()
        while True:
            deadline += self.interval_s
            now = time.monotonic()
            if deadline < now:  # a slow disk made us miss deadlines: skip them, do not bunch
                deadline = now + self.interval_s
            await asyncio.sleep(deadline - now)
            await self.flush()

    async def flush(self) -> list[int]:
        """Turn every sample taken so far into outbox batches; returns their batch_seqs."""
        samples = self.daemon.take_samples()
        self.lateness.observe(samples)
        points, channels = self._points(samples)
        if not points:
            return []
        indices = await asyncio.to_thread(self.registry.indices_for, channels)
        gaps = await asyncio.to_thread(self.outbox.gaps)
        events = [*self._events, *(gap_event(g) for g in gaps)]
        batches = build_batches(
            [Point(i, t, v) for i, (t, v) in zip(indices, points, strict=True)], self.max_points, events
        )
        seqs = []
        for batch in batches:
            async with self.seq_lock:
                seq = await asyncio.to_thread(self._append, batch)
            if seq is None:
                continue
            seqs.append(seq)
            self.batches += 1
            self.points += len(batch.values)
            self.appended.set()
        if seqs:
            self._events.clear()
            for gap in gaps:
                if await asyncio.to_thread(self.outbox.ack_gap, gap):
                    log.warning(
                        "telemetry gap reported",
                        extra={"first_batch_seq": gap.first_seq, "last_batch_seq": gap.last_seq},
                    )
        return seqs

    def _points(self, samples: Sequence[Sample]) -> tuple[list[tuple[float, float]], list[tuple[str, str]]]:
        points: list[tuple[float, float]] = []
        channels: list[tuple[str, str]] = []
        for s in samples:
            unit = self._units.get(s.name)
            if unit is None:
                if s.name in self._unmapped:
                    continue
                if wire_channel(s.name) is None:
                    self._unmapped.add(s.name)
                    log.warning("channel has no cloud address; not sent", extra={"channel": s.name})
                    continue
                unit = self.daemon.channel_units().get(s.name, "")
                self._units[s.name] = unit
            value = wire_value(s.value)
            if value is None:
                self.non_finite += 1
                continue
            points.append((s.timestamp, value))
            channels.append((s.name, unit))
        return points, channels

    def _append(self, batch: edge_link_pb2.TelemetryBatch) -> int | None:
        """In a worker thread, under seq_lock: stamp the seq the outbox will assign, then append."""
        expected = self.outbox.last_seq() + 1
        batch.batch_seq = expected
        start = batch.base_time.seconds + batch.base_time.nanos / 1e9
        end = start + (max(batch.time_offsets_ms) / 1000 if batch.time_offsets_ms else 0.0)
        try:
            seq = self.outbox.append(batch.SerializeToString(), start_time=start, end_time=end)
        except OutboxError as exc:
            log.error("telemetry batch not stored: %s", exc, extra={"points": len(batch.values)})
            return None
        if seq != expected:
            log.error(
                "outbox assigned an unexpected batch_seq; the payload is re-stamped when sent",
                extra={"batch_seq": seq, "expected": expected},
            )
        log.debug("telemetry batch stored", extra={"batch_seq": seq, "points": len(batch.values)})
        return seq
