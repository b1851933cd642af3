"""History query latency: 30 days of one channel at 15-minute resolution, from rollups.

    python -m bench.history [--quick]

The table holds 100 channels x 30 days at 10 s (the issue's size; --quick: at 60 s), loaded by binary
COPY; the rollup worker's own code computes the rollups. `emma serve telemetry` runs as a separate
process; a client asks QueryHistory over gRPC on loopback, sequentially, and the latencies of
repeated requests give p50/p99.
"""

from __future__ import annotations

import datetime as dt
import time

import asyncpg
import grpc
import numpy as np
from emma.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from google.protobuf import duration_pb2, timestamp_pb2

from bench.harness import BENCH_ENV, cloud_process, copy_samples, database, login, migrate, percentile, run_benchmark
from bench.machine import describe
from services.names import EdgeName
from services.registry import ensure_edge
from services.telemetry import roll_up_closed_buckets, samples_copy_payload

CHANNELS = 100
DAYS = 30


async def load(dsn: str, step_s: int) -> tuple[EdgeName, int]:
    conn = await asyncpg.connect(dsn)
    try:
        edge = EdgeName("bench", "history", "history")
        pk = await ensure_edge(conn, edge, time_zone="Europe/Madrid")
        ids = []
        for i in range(CHANNELS):
            ids.append(
                await conn.fetchval(
                    "INSERT INTO telemetry.series (edge_pk, channel, unit) VALUES ($1, $2, 'W') RETURNING id",
                    pk,
                    f"meter_{i // 10}/Power{i}",
                )
            )
        end = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=1)
        start = end - dt.timedelta(days=DAYS)
        times = np.arange(int(start.timestamp()), int(end.timestamp()), step_s, dtype=np.int64) * 1_000_000
        t0 = time.perf_counter()
        for sid in ids:  # one COPY per channel: ~260k rows at 10 s
            values = np.sin(np.arange(len(times)) / 500.0) * 3000 + np.random.rand(len(times)) * 100

            await copy_samples(conn, samples_copy_payload(np.full(len(times), sid, dtype=np.int64), times, values))
        load_s = time.perf_counter() - t0
        # Mark every bucket dirty, as ingest would have, and let the worker's code roll them up.
        await conn.execute(
            """INSERT INTO telemetry.rollup_dirty (edge_pk, bucket)
               SELECT $1, b FROM generate_series($2::timestamptz, $3::timestamptz - interval '15 minutes',
                                                 interval '15 minutes') b""",
            pk,
            start,
            end,
        )
        t0 = time.perf_counter()
        while await roll_up_closed_buckets(conn, grace_s=0, limit=500):
            pass
        await conn.execute("ANALYZE telemetry.samples; ANALYZE telemetry.rollup_15m; ANALYZE telemetry.rollup_1h")
        print(
            f"loaded {len(times) * CHANNELS} rows in {load_s:.0f} s, rolled up in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        return edge, len(times) * CHANNELS
    finally:
        await conn.close()


async def measure(port: int, edge: EdgeName, requests: int, auth: list[tuple[str, str]]) -> dict[str, object]:
    end = dt.datetime.now(dt.UTC)
    start = end - dt.timedelta(days=DAYS)

    def ts(t: dt.datetime) -> timestamp_pb2.Timestamp:
        out = timestamp_pb2.Timestamp()
        out.FromDatetime(t)
        return out

    results: dict[str, object] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = telemetry_pb2_grpc.TelemetryServiceStub(ch)
        for label, minutes, align in (("15min", 15, False), ("1h_local", 60, True), ("1d_local", 1440, True)):
            latencies = []
            points = 0
            for i in range(requests):
                request = telemetry_pb2.QueryHistoryRequest(
                    site=str(edge.site_name),
                    channels=[f"{edge}/devices/meter_{(i % CHANNELS) // 10}/channels/Power{i % CHANNELS}"],
                    start_time=ts(start),
                    end_time=ts(end),
                    interval=duration_pb2.Duration(seconds=60 * minutes),
                    aggregation=telemetry_pb2.AGGREGATION_AVERAGE,
                    align_to_site_time_zone=align,
                )
                t0 = time.perf_counter()
                reply = await stub.QueryHistory(request, metadata=auth)
                latencies.append((time.perf_counter() - t0) * 1000)
                points = len(reply.series[0].points)
            results[label] = {
                "p50_ms": percentile(latencies, 0.5),
                "p99_ms": percentile(latencies, 0.99),
                "points_per_answer": points,
                "requests": requests,
                "source": telemetry_pb2.HistorySource.Name(reply.series[0].source),
            }
    return results


async def main_async(quick: bool) -> dict[str, object]:
    with database() as dsn:
        version = await migrate(dsn)
        edge, rows = await load(dsn, 60 if quick else 10)
        async with cloud_process(dsn, "telemetry identity", env=BENCH_ENV) as (port, _pid, _stats):
            figures = await measure(port, edge, 100 if quick else 300, await login(dsn, port, edge.org))
    return {
        "machine": describe(version),
        "command": "python -m bench.history" + (" --quick" if quick else ""),
        "table_rows": rows,
        "channels": CHANNELS,
        "days": DAYS,
        **figures,
    }


def main() -> None:
    run_benchmark("history", __doc__, main_async)


if __name__ == "__main__":
    main()
