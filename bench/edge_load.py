"""Simulated edges for benchmarks, run as a separate process: `python -m bench.edge_load ...`.

Each simulated edge opens its own connection and EdgeLink stream, says Hello with its key, and sends
pre-serialised columnar batches, either as fast as the server acknowledges them (throughput) or at a
fixed rate (fleet; with `--hold`, going on unmeasured that many seconds before closing). It prints one
JSON line: batches acked, points, ack latencies (at a fixed rate from each batch's due time, with that
due time's offset from the process start).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import sys
import time

import grpc
from emma.edge.v1 import edge_link_pb2
from google.protobuf import timestamp_pb2

from core.collector import tune_garbage_collector
from edge_daemon.config import CloudConfig
from edge_daemon.uplink.backoff import Backoff

METHOD = "/emma.edge.v1.EdgeLinkService/Connect"
T0 = time.perf_counter()
# The ends of a stream before its Welcome that another attempt may not meet (a busy or restarting
# server); any other status refuses the edge's Hello itself.
RETRIED = frozenset({"CANCELLED", "UNAVAILABLE", "INTERNAL", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "EOF"})
# An edge daemon's reconnect delays (its defaults; a slotted dataclass keeps them in its fields).
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(CloudConfig)}
RECONNECT_MIN_S = float(_DEFAULTS["reconnect_min_s"])  # type: ignore[arg-type]
RECONNECT_MAX_S = float(_DEFAULTS["reconnect_max_s"])  # type: ignore[arg-type]
SAMPLE_PERIOD_MS = 100


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


class BatchFactory:
    """Serialises a batch once; each send only prepends batch_seq and base_time (fields 1 and 2).

    A batch holds `points` samples of `channels` channels, one sample per channel every 100 ms, so it
    covers `span_us` of each channel's time."""

    def __init__(self, channels: int, points: int) -> None:
        body = edge_link_pb2.TelemetryBatch(
            channel_indexes=[i % channels for i in range(points)],
            time_offsets_ms=[(i // channels) * SAMPLE_PERIOD_MS for i in range(points)],
            values=[random.uniform(-5000, 5000) for _ in range(points)],
        ).SerializeToString()
        self._body = body
        self.points = points
        self.span_us = -(-points // channels) * SAMPLE_PERIOD_MS * 1000

    def make(self, seq: int, base_time_us: int | None = None) -> bytes:
        """Batch `seq` starting at `base_time_us` (µs since the epoch), or now when None."""
        ts = timestamp_pb2.Timestamp()
        # Now from time.time_ns, not GetCurrentTime, which goes through a datetime and calendar.timegm: 6.7
        # µs against 2.2 on session 18's machine, 6 % of a generator's samples in the 1,000-edge fleet.
        ts.FromMicroseconds(time.time_ns() // 1000 if base_time_us is None else base_time_us)
        head = edge_link_pb2.TelemetryBatch(batch_seq=seq, base_time=ts).SerializeToString()
        inner = head + self._body
        return b"\x12" + _varint(len(inner)) + inner  # ConnectRequest.telemetry_batch = field 2


def hello(edge: str, key: str, channels: int) -> bytes:
    return edge_link_pb2.ConnectRequest(
        hello=edge_link_pb2.Hello(
            edge=edge,
            api_key=key,
            agent_version="bench",
            protocol_version=1,
            channel_table=[
                edge_link_pb2.ChannelDescriptor(index=i, channel=f"dev{i // 10}/Ch{i}", unit="W")
                for i in range(channels)
            ],
        )
    ).SerializeToString()


async def run_edge(
    port: int,
    edge: str,
    key: str,
    factory: BatchFactory,
    batches: int,
    rate: float,
    duration: float,
    hold: float,
    latencies: list[tuple[float, float]],
    counts: dict[str, int],
    failures: dict[str, int],
    send_lag_ms: list[float],
    sending: dict[str, float],
) -> None:
    # At a fixed rate the first batch is due when the edge starts connecting: a slow Hello during the
    # connection storm delays it, and that delay is part of its latency.
    start = time.perf_counter()
    # A stream that ends before its Welcome is opened again after a pause, as an edge daemon does
    # (edge_daemon/uplink: a new channel, full-jitter backoff); each such end is counted by its status,
    # and the run goes on. Until session 14 the first one ended the whole generator process, and the
    # bench printed nothing.
    backoff = Backoff(RECONNECT_MIN_S, RECONNECT_MAX_S)
    while True:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
        outbox: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def requests(box: asyncio.Queue[bytes | None] = outbox):  # type: ignore[no-untyped-def]
            while (item := await box.get()) is not None:
                yield item

        call = channel.stream_stream(
            METHOD, request_serializer=None, response_deserializer=edge_link_pb2.ConnectResponse.FromString
        )(requests())
        await outbox.put(hello(edge, key, 50))
        try:
            welcome = await call.read()
            code = "EOF" if welcome is grpc.aio.EOF else ""
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        if not code:
            break
        failures[code] = failures.get(code, 0) + 1
        if code not in RETRIED:  # a refused key or Hello: retrying would not help; this edge is done
            counts["errors"] += 1
            await outbox.put(None)
            await channel.close()
            return
        await outbox.put(None)
        await channel.close()
        await asyncio.sleep(backoff.next_delay())
    window = asyncio.Semaphore(max(1, welcome.welcome.max_unacked_batches))  # type: ignore[union-attr]
    # At a fixed rate a batch's latency runs from when it was due, not from when it could be sent: a
    # server that holds the window shut delays the next sends, and that wait is part of the latency
    # (no coordinated omission). As fast as acked, there is no due time: from the send.
    sent_at: dict[int, float] = {}
    done = asyncio.Event()
    measured = batches if rate == 0 else int(duration * rate)
    # With `hold` the edge goes on sending at its rate, unmeasured, until `hold` seconds after its
    # measured batches were due, and closes its stream only then: the fleet's streams end well after
    # every measured batch was acked, as a fleet's do not all end in the same second.
    hold_until = start + duration + hold if rate else 0.0
    finished = False  # every batch sent: the stream ends once sent_at (the batches not yet acked) is empty

    async def reader() -> None:
        try:
            await read_acks()
        finally:
            done.set()
            window.release()  # a sender waiting for the window sees the stream ended

    async def read_acks() -> None:
        while not done.is_set():
            try:
                msg = await call.read()
            except grpc.aio.AioRpcError as exc:  # after the Welcome: counted, the edge's run ends
                failures[exc.code().name] = failures.get(exc.code().name, 0) + 1
                counts["errors"] += 1
                return
            if msg is grpc.aio.EOF:
                counts["errors"] += 1
                return
            if msg.WhichOneof("message") == "telemetry_ack":  # type: ignore[union-attr]
                seq = msg.telemetry_ack.batch_seq  # type: ignore[union-attr]
                was_sent = sent_at.pop(seq)
                window.release()
                if seq <= measured:
                    latencies.append((round(was_sent - T0, 3), (time.perf_counter() - was_sent) * 1000))
                    counts["acked"] += 1
                    counts["points"] += factory.points
                    sending["last_ack"] = time.perf_counter()
                if finished and not sent_at:
                    done.set()

    read_task = asyncio.create_task(reader())
    # As fast as acked, the edge uploads a backlog, as an edge daemon empties its outbox after an
    # outage: batch after batch in time order, each going on where the one before ended, the last
    # ending about now. (Until session 16 every batch started at the current time, so at 40 batches a
    # second each channel's batches overlapped the ~70 before them in time: PostgreSQL then inserted
    # into the middle of each series' index range, 25-30 % more work per row than the raw COPY it is
    # compared with, whose series go forward in time like a real edge's; docs/performance.md.)
    # At a fixed rate a batch holds the newest samples: it starts now.
    backlog_start_us = int(time.time() * 1e6) - batches * factory.span_us
    if not rate:
        start = time.perf_counter()
    seq = 0
    while True:
        seq += 1
        if rate:
            due = start + (seq - 1) / rate
            if seq > measured and due >= hold_until:
                break
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
        elif seq > measured:
            break
        await window.acquire()
        if done.is_set():
            break
        sent_at[seq] = due if rate else time.perf_counter()
        if rate and seq <= measured:  # how late this process itself got to the send (its own CPU share)
            send_lag_ms.append((time.perf_counter() - due) * 1000)
        sending["first_send"] = min(sending["first_send"], time.perf_counter())
        await outbox.put(factory.make(seq, None if rate else backlog_start_us + (seq - 1) * factory.span_us))
    finished = True
    if not sent_at:  # every batch sent is acked already (or none was sent)
        done.set()
    await done.wait()
    await outbox.put(None)
    read_task.cancel()
    call.cancel()
    await channel.close()


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    with open(args.keys) as f:
        keys = json.load(f)[args.first : args.first + args.edges]
    factory = BatchFactory(channels=50, points=args.points)
    latencies: list[tuple[float, float]] = []
    send_lag_ms: list[float] = []
    counts = {"acked": 0, "points": 0, "errors": 0}
    # Streams that ended before their Welcome (opened again) or after it (the edge's run ended), by status.
    failures: dict[str, int] = {}
    # When this process sent its first batch and got its last ack (time.perf_counter(), CLOCK_MONOTONIC
    # on Linux, so comparable between the processes of one machine): the ingest window without the
    # process's start-up, its connections and Hellos.
    sending = {"first_send": float("inf"), "last_ack": 0.0}
    if args.rate:  # spread the fleet's sends over the first second
        await asyncio.sleep(0)
    start = time.perf_counter()

    async def one(edge: str, key: str) -> None:
        if args.rate:
            await asyncio.sleep(random.uniform(0, 1 / args.rate))
        await run_edge(
            args.port,
            edge,
            key,
            factory,
            args.batches,
            args.rate,
            args.duration,
            args.hold,
            latencies,
            counts,
            failures,
            send_lag_ms,
            sending,
        )

    await asyncio.gather(*(one(k["edge"], k["key"]) for k in keys))
    lag = sorted(send_lag_ms)
    own_lag = {q: lag[min(len(lag) - 1, int(len(lag) * f))] if lag else 0.0 for q, f in (("p50", 0.5), ("p99", 0.99))}
    return {
        "elapsed_s": time.perf_counter() - start,
        **counts,
        "stream_failures": failures,
        "latencies_ms": latencies,
        "send_lag_ms": own_lag,
        **sending,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--keys", required=True)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--edges", type=int, required=True)
    p.add_argument("--points", type=int, default=1000)
    p.add_argument("--batches", type=int, default=100, help="per edge, when --rate is 0")
    p.add_argument("--rate", type=float, default=0.0, help="batches per second per edge (0: as fast as acked)")
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument(
        "--hold",
        type=float,
        default=0.0,
        help="at a fixed rate: go on sending, unmeasured, this many seconds past --duration before closing",
    )
    args = p.parse_args()
    # 250 simulated edges share this process's heap, which real edges do not: its collector is tuned
    # like the server's, so its pauses are not counted as the server's ack latency.
    tune_garbage_collector()
    result = asyncio.run(main_async(args))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
