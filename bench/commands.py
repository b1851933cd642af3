"""Command round trip: CreateCommand -> EXECUTED visible to the caller, p50/p99.

    python -m bench.commands [--quick]

`emma serve edge command` runs as its own process, one simulated edge as another (bench.command_edge,
answering at once); the caller creates a command and watches it until EXECUTED. Measured idle, then
while 1,000 simulated edge streams send one 50-point batch per second (the ingest fleet load). The
caller stays under the 10 commands/s rate limit.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid

import grpc
from emma.command.v1 import command_pb2, command_pb2_grpc

from bench.harness import BENCH_ENV, cloud_process, database, login, migrate, percentile, run_benchmark
from bench.ingest import provision, run_generators
from bench.machine import describe

S = command_pb2


async def round_trips(port: int, edge: str, count: int, auth: list[tuple[str, str]]) -> list[float]:
    latencies = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = command_pb2_grpc.CommandServiceStub(channel)
        for i in range(count):
            started = time.perf_counter()
            created = await stub.CreateCommand(
                S.CreateCommandRequest(
                    parent=edge,
                    request_id=str(uuid.uuid4()),
                    command=S.Command(channel="battery_1/SetActivePower", value=float(-100 - i % 50)),
                ),
                metadata=auth,
            )
            final = None
            async for update in stub.WatchCommand(S.WatchCommandRequest(name=created.name), metadata=auth):
                final = update.command
            assert final is not None and final.state == S.COMMAND_STATE_EXECUTED, final
            latencies.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(max(0.0, 0.125 - (time.perf_counter() - started)))  # 8 per second
    return latencies


async def main_async(quick: bool) -> dict[str, object]:
    count = 60 if quick else 300
    with database() as dsn:
        version = await migrate(dsn)
        keys = json.loads((await provision(dsn, 1, "cmd")).read_text())
        fleet_keys = await provision(dsn, 1000, "cmdload")
        result: dict[str, object] = {
            "machine": describe(version),
            "command": "python -m bench.commands" + (" --quick" if quick else ""),
        }
        async with cloud_process(dsn, "edge command identity", env=BENCH_ENV) as (port, _pid, _stats):
            auth = await login(dsn, port, "bench")
            edge = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.command_edge",
                "--port",
                str(port),
                "--edge",
                keys[0]["edge"],
                "--key",
                keys[0]["key"],
                stdout=subprocess.PIPE,
            )
            try:
                # It says "ready" once its Hello and first limits are stored (its imports take a while).
                assert edge.stdout is not None
                line = await asyncio.wait_for(edge.stdout.readline(), 60)
                if line.strip() != b"ready":
                    raise RuntimeError(f"the simulated edge did not start: {line!r}")
                idle = await round_trips(port, keys[0]["edge"], count, auth)
                duration = count / 8 + 15
                load = asyncio.create_task(
                    run_generators(
                        port, fleet_keys, 1000, 4, ["--points", "50", "--rate", "1", "--duration", str(duration)]
                    )
                )
                await asyncio.sleep(8)  # past the fleet's connection storm
                loaded = await round_trips(port, keys[0]["edge"], count, auth)
                await load
            finally:
                edge.kill()
        for label, values in (("idle", idle), ("under_1000_edge_load", loaded)):
            result[label] = {
                "p50_ms": percentile(values, 0.5),
                "p99_ms": percentile(values, 0.99),
                "max_ms": max(values),
                "commands": len(values),
            }
    return result


def main() -> None:
    run_benchmark("commands", __doc__, main_async)


if __name__ == "__main__":
    main()
