"""Ingest benchmarks: end-to-end points/s against raw COPY, and a fleet of edge streams.

    python -m bench.ingest [--quick]

1. Throughput: simulated edges (separate processes) send 1,000-point batches as fast as acks allow
   through `emma serve edge` (a separate process) into PostgreSQL, with dedup and ack after commit.
   Reference, same run, same table: one connection binary-COPYing the same rows.
2. Fleet: 100 and 1,000 edge streams held by one replica, each sending one 50-point batch per second;
   ack latency p50/p99 and the server's memory at the start and the end.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import numpy as np

from bench.harness import (
    cloud_process,
    copy_samples,
    cpu_seconds,
    database,
    migrate,
    percentile,
    rss_mib,
    run_benchmark,
    summary,
)
from bench.machine import describe
from services.identity import issue_edge_key
from services.names import EdgeName
from services.registry import ensure_edge
from services.telemetry import samples_copy_payload

# Steady state starts once the 1,000-stream connection storm (Hello, auth, audit) has passed.
WARM_UP_S = 8.0
STATS_EVERY_5_S = {"EMMA_INGEST_STATS_INTERVAL_S": "5"}


async def provision(dsn: str, count: int, prefix: str) -> Path:
    conn = await asyncpg.connect(dsn)
    keys = []
    try:
        for i in range(count):
            edge = EdgeName("bench", f"{prefix}-site-{i // 50}", f"{prefix}-edge-{i}")
            pk = await ensure_edge(conn, edge)
            _, key = await issue_edge_key(conn, pk)
            keys.append({"edge": str(edge), "key": key})
    finally:
        await conn.close()
    path = Path(tempfile.mkstemp(prefix="emma-bench-keys-", suffix=".json")[1])
    path.write_text(json.dumps(keys))
    return path


async def run_generators(
    port: int, keys: Path, edges: int, processes: int, extra: list[str]
) -> list[dict[str, object]]:
    per = edges // processes
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.edge_load",
            "--port",
            str(port),
            "--keys",
            str(keys),
            "--first",
            str(i * per),
            "--edges",
            str(per),
            *extra,
            stdout=subprocess.PIPE,
        )
        for i in range(processes)
    ]
    outs = await asyncio.gather(*(p.communicate() for p in procs))
    return [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outs]


async def stored_points(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM telemetry.samples"))
    finally:
        await conn.close()


async def raw_copy(dsn: str, rows: int, group_rows: int) -> float:
    """Rows/s of binary COPY of the same shape into telemetry.samples from one connection."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO app.organizations VALUES ('rawcopy', 'raw') ON CONFLICT DO NOTHING")
        now_us = int(time.time() * 1e6)
        sids = np.arange(1_000_000, 1_000_000 + 50, dtype=np.int64)
        start = time.perf_counter()
        done = 0
        while done < rows:
            n = min(group_rows, rows - done)
            idx = np.arange(done, done + n)
            payload = samples_copy_payload(sids[idx % 50], now_us - 3_600_000_000 + idx * 1000, np.random.rand(n))
            async with conn.transaction():
                await copy_samples(conn, payload)
            done += n
        return rows / (time.perf_counter() - start)
    finally:
        await conn.execute("DELETE FROM telemetry.samples WHERE series_id >= 1000000")
        await conn.close()


async def throughput(dsn: str, quick: bool) -> dict[str, object]:
    edges, processes = 16, 2
    batches = 60 if quick else 250
    keys = await provision(dsn, edges, "tput")
    e2e, raw, server_cpu = [], [], []
    async with cloud_process(dsn, "edge", env=STATS_EVERY_5_S) as (port, pid, _stats):
        for run in range(3):
            before = await stored_points(dsn)
            cpu0 = cpu_seconds(pid)
            t0 = time.perf_counter()
            # Each run continues the edges' batch_seq? No: fresh edges per run keep dedup honest.
            run_keys = keys if run == 0 else await provision(dsn, edges, f"tput{run}")
            results = await run_generators(
                port, run_keys, edges, processes, ["--points", "1000", "--batches", str(batches)]
            )
            elapsed = time.perf_counter() - t0
            stored = await stored_points(dsn) - before
            sent = sum(int(r["points"]) for r in results)  # type: ignore[call-overload]
            assert stored == sent, f"stored {stored} != acked {sent}"
            e2e.append(stored / elapsed)
            server_cpu.append((cpu_seconds(pid) - cpu0) / elapsed)
            raw.append(await raw_copy(dsn, stored, 16_000))
    ratio = [a / b for a, b in zip(e2e, raw, strict=True)]
    return {
        "end_to_end_points_per_s": summary(e2e),
        "raw_copy_rows_per_s": summary(raw),
        "ratio_to_raw_copy": summary(ratio),
        "server_cpu_cores": summary(server_cpu),
        "setup": f"{edges} edges in {processes} processes, 1,000-point batches, {batches} batches per edge per run",
    }


async def fleet(dsn: str, edges: int, duration: float) -> dict[str, object]:
    keys = await provision(dsn, edges, f"fleet{edges}")
    processes = 4 if edges >= 400 else 2
    async with cloud_process(dsn, "edge", env=STATS_EVERY_5_S) as (port, pid, stats):
        rss_start = rss_mib(pid)
        samples: list[float] = []

        async def watch_memory() -> None:
            while True:
                samples.append(rss_mib(pid))
                await asyncio.sleep(1)

        watcher = asyncio.create_task(watch_memory())
        results = await run_generators(
            port, keys, edges, processes, ["--points", "50", "--rate", "1", "--duration", str(duration)]
        )
        watcher.cancel()
    pairs = [(t, ms) for r in results for t, ms in r["latencies_ms"]]  # type: ignore[attr-defined]
    latencies = [ms for _, ms in pairs]
    # Steady state: after every stream has said Hello (the connection storm of the first seconds).
    steady = [ms for t, ms in pairs if t >= WARM_UP_S]
    return {
        "edges": edges,
        "duration_s": duration,
        "acked_batches": sum(int(r["acked"]) for r in results),  # type: ignore[call-overload]
        "errors": sum(int(r["errors"]) for r in results),  # type: ignore[call-overload]
        "ack_latency_ms": {
            "p50": percentile(latencies, 0.5),
            "p99": percentile(latencies, 0.99),
            "max": max(latencies) if latencies else float("nan"),
        },
        "steady_ack_latency_ms": {
            "p50": percentile(steady, 0.5),
            "p99": percentile(steady, 0.99),
            "after_s": WARM_UP_S,
        },
        "server_stats": stats,
        "server_rss_mib": {
            "start": rss_start,
            "peak": max(samples, default=rss_start),
            "end": samples[-1] if samples else rss_start,
        },
    }


async def main_async(quick: bool) -> dict[str, object]:
    with database() as dsn:
        version = await migrate(dsn)
        result: dict[str, object] = {
            "machine": describe(version),
            "command": "python -m bench.ingest" + (" --quick" if quick else ""),
        }
        result["throughput"] = await throughput(dsn, quick)
        duration = 30.0 if quick else 60.0
        result["fleet_100"] = await fleet(dsn, 100, duration)
        result["fleet_1000"] = await fleet(dsn, 1000, duration)
    return result


def main() -> None:
    run_benchmark("ingest", __doc__, main_async)


if __name__ == "__main__":
    main()
