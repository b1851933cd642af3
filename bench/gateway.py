"""Gateway throughput: GET latest values through the REST gateway at 50 concurrent clients.

    python -m bench.gateway [--quick]

`emma serve all` and `emma gateway` run as their own processes; one simulated edge reports 50
channels; the load comes from a separate process (bench.http_load) with 50 keep-alive clients.
Reference in the same run: the same ListLatestValues over gRPC directly, from 50 concurrent callers.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import grpc
from emma.edge.v1 import edge_link_pb2, edge_link_pb2_grpc
from emma.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc

from bench.edge_load import BatchFactory, hello
from bench.harness import (
    BENCH_ENV,
    EMMA,
    cloud_process,
    database,
    login,
    migrate,
    percentile,
    run_benchmark,
    summary,
)
from bench.ingest import provision
from bench.machine import describe


async def report_once(port: int, edge: str, key: str) -> None:
    """One batch of 50 channels through a real EdgeLink stream, so latest values exist."""
    out: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def requests():  # type: ignore[no-untyped-def]
        while (item := await out.get()) is not None:
            yield item

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(
            "/emma.edge.v1.EdgeLinkService/Connect",
            request_serializer=None,
            response_deserializer=edge_link_pb2.ConnectResponse.FromString,
        )(requests())
        await out.put(hello(edge, key, 50))
        await call.read()
        await out.put(BatchFactory(channels=50, points=50).make(1))
        await call.read()
        await out.put(None)
        call.cancel()
    _ = edge_link_pb2_grpc  # the stub module registers the service's types


async def grpc_reference(port: int, site: str, auth: list[tuple[str, str]], seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = telemetry_pb2_grpc.TelemetryServiceStub(channel)

        async def caller() -> None:
            while time.perf_counter() < stop:
                started = time.perf_counter()
                await stub.ListLatestValues(telemetry_pb2.ListLatestValuesRequest(parent=site), metadata=auth)
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(50)))
        elapsed = time.perf_counter() - started
    return {
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
    }


async def main_async(quick: bool) -> dict[str, object]:
    seconds = 8.0 if quick else 30.0
    with database() as dsn:
        version = await migrate(dsn)
        keys = json.loads((await provision(dsn, 1, "gw")).read_text())
        edge, key = keys[0]["edge"], keys[0]["key"]
        site = edge.rsplit("/edges/", 1)[0]
        async with cloud_process(dsn, "all", env={**BENCH_ENV, "EMMA_TRUST_FORWARDED_FOR": "1"}) as (port, _, _s):
            auth = await login(dsn, port, "bench")
            await report_once(port, edge, key)
            gateway = subprocess.Popen(
                [EMMA, "--log-level", "WARNING", "gateway", "--target", f"127.0.0.1:{port}", "--port", "0"],
                env={**os.environ, "EMMA_GATEWAY_WRITE_RATE_PER_S": "0"},
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert gateway.stdout is not None
                line = await asyncio.to_thread(gateway.stdout.readline)
                base = "http://" + line.split("http://", 1)[1].split()[0]
                url = f"{base}/v1/{site}/latestValues"
                runs = []
                for _ in range(3):
                    out = await asyncio.to_thread(
                        subprocess.run,
                        [
                            sys.executable,
                            "-m",
                            "bench.http_load",
                            url,
                            "--clients",
                            "50",
                            "--seconds",
                            str(seconds),
                            "--token",
                            auth[0][1].removeprefix("Bearer "),
                        ],
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                reference = await grpc_reference(port, site, auth, seconds)
            finally:
                gateway.send_signal(signal.SIGINT)
                gateway.wait(20)
    assert all(r["errors"] == 0 for r in runs), runs
    return {
        "machine": describe(version),
        "command": "python -m bench.gateway" + (" --quick" if quick else ""),
        "gateway_latest_requests_per_s": summary([float(r["requests_per_s"]) for r in runs]),
        "gateway_latest_p99_ms": summary([float(r["p99_ms"]) for r in runs]),
        "gateway_latest_p50_ms": summary([float(r["p50_ms"]) for r in runs]),
        "grpc_direct_reference": reference,
        "clients": 50,
        "seconds_per_run": seconds,
    }


def main() -> None:
    run_benchmark("gateway", __doc__, main_async)


if __name__ == "__main__":
    main()
