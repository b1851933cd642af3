"""Modbus driver: read latency of 100 registers, and cycle lateness with 10 polled devices.

    python -m bench.modbus [--quick]

A pymodbus server runs in its own process on loopback (10 units of 200 holding registers, plus a
port that accepts connections and never answers: a hung device).

1. Read latency: the driver's link reads holding registers 0..99 (one request) and, separately, a
   driver poll of a 100-point register map (two u16 blocks of 50, decoded and scaled). Repeated
   `reads` times per run; median and p99 per run, summarised over runs.
2. Cycle lateness: the real EdgeDaemon (offline, SQLite outbox) in its own process with 10 Modbus
   devices (100 registers each, 4 requests per poll) polled every 1 s and a 1 s cycle; lateness is
   each cycle's start minus its deadline. Run once with all devices answering and once with 2 of the
   10 pointing at the hung port (their polls time out and retry), which must not move the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import percentile, summary, write_result
from bench.machine import describe

UNITS = 10
REGISTERS = 200


# -- the server process ------------------------------------------------------------------------------


async def serve() -> None:
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    devices = [
        SimDevice(
            unit,
            simdata=(
                [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
                [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
                [SimData(0, values=[(unit * 1000 + i) % 65536 for i in range(REGISTERS)], datatype=DataType.REGISTERS)],
                [SimData(0, values=[0] * 16, datatype=DataType.REGISTERS)],
            ),
        )
        for unit in range(1, UNITS + 1)
    ]
    server = ModbusTcpServer(devices, address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    transport = server.transport
    assert isinstance(transport, asyncio.Server)

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(4096):
            pass  # swallow requests, never answer

    silent = await asyncio.start_server(hang, "127.0.0.1", 0)
    ports = {"port": transport.sockets[0].getsockname()[1], "silent_port": silent.sockets[0].getsockname()[1]}
    print(json.dumps(ports), flush=True)
    await asyncio.Event().wait()


def start_server() -> tuple[subprocess.Popen[str], dict[str, int]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.modbus", "--serve"], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    ports: dict[str, int] = json.loads(proc.stdout.readline())
    return proc, ports


# -- 1. read latency -------------------------------------------------------------------------------


def register_map_doc(points: int = 100) -> list[dict[str, Any]]:
    """`points` u16 values at 0.. and 100.. (two blocks of 50 with max_registers_per_read = 50)."""
    return [{"name": f"Value{i}", "address": i, "type": "u16", "scale": 0.1, "unit": "V"} for i in range(points)]


async def read_latency(port: int, reads: int) -> dict[str, float]:
    from edge_daemon.drivers.modbus.link import ModbusLink, RetryPolicy, TcpEndpoint
    from edge_daemon.drivers.modbus.profile import parse_register_map
    from edge_daemon.drivers.modbus.reader import RegisterReader
    from edge_daemon.drivers.modbus.registers import Function
    from edge_daemon.drivers.params import DeviceReader

    policy = RetryPolicy(timeout_s=1.0, retries=0)
    link = ModbusLink(TcpEndpoint("127.0.0.1", port), timeout_s=1.0)
    device = {"id": "b", "registers": register_map_doc(), "max_registers_per_read": 50}
    reader = RegisterReader("b", link, 1, parse_register_map(DeviceReader(device, "bench", "", "b")), policy)
    try:
        await link.read(1, Function.HOLDING, 0, 100, policy)  # connect
        raw: list[float] = []
        for _ in range(reads):
            t0 = time.perf_counter()
            await link.read(1, Function.HOLDING, 0, 100, policy)
            raw.append((time.perf_counter() - t0) * 1000)
        decoded: list[float] = []
        for _ in range(reads):
            t0 = time.perf_counter()
            values = await reader.read()
            decoded.append((time.perf_counter() - t0) * 1000)
        assert len(values) == 100
    finally:
        link.close()
    return {
        "read_100_registers_p50_ms": percentile(raw, 0.5),
        "read_100_registers_p99_ms": percentile(raw, 0.99),
        "poll_100_points_p50_ms": percentile(decoded, 0.5),
        "poll_100_points_p99_ms": percentile(decoded, 0.99),
    }


# -- 2. cycle lateness (child process) -------------------------------------------------------------------


def site(outbox: Path, port: int, silent_port: int, dead: int) -> dict[str, Any]:
    devices = []
    for i in range(UNITS):
        devices.append(
            {
                "id": f"inverter_{i}",
                "type": "modbus",
                "host": "127.0.0.1",
                "port": silent_port if i < dead else port,
                "unit_id": i + 1,
                "poll_interval_s": 1.0,
                "timeout_s": 0.5,
                "retries": 1,
                "reconnect_max_s": 8.0,
                "max_registers_per_read": 25,
                "registers": register_map_doc(),
            }
        )
    return {
        "site": {"id": "bench", "timezone": "UTC", "latitude": 0, "longitude": 0},
        "cycle": {"period_s": 1.0},
        "outbox": {"path": str(outbox)},
        "devices": devices,
    }


async def run_cycle(port: int, silent_port: int, dead: int, seconds: float) -> dict[str, float]:
    from edge_daemon.config import parse_config
    from edge_daemon.daemon import EdgeDaemon
    from edge_daemon.drivers.modbus.device import ModbusDevice

    with tempfile.TemporaryDirectory() as tmp:
        config = parse_config(site(Path(tmp) / "outbox.sqlite", port, silent_port, dead), Path(tmp) / "site.toml")
        daemon = EdgeDaemon(config)
        lateness: list[float] = []
        daemon.cycle.add_hook(lambda ctx: lateness.append(daemon.cycle.stats.last_lateness_s * 1000))
        task = asyncio.create_task(daemon.run())
        await asyncio.sleep(3.0)  # warm-up: connections, first polls
        lateness.clear()
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        await asyncio.sleep(seconds)
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        devices = [d for d in daemon.devices.devices if isinstance(d, ModbusDevice)]
        lost = sum(d.communication_lost for d in devices)
        daemon.stop()
        await task
    cpu = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / (t1 - t0)
    return {
        "p50_ms": percentile(lateness, 0.5),
        "p99_ms": percentile(lateness, 0.99),
        "max_ms": max(lateness),
        "cycles": len(lateness),
        "overruns": daemon.cycle.stats.overruns,
        "devices_lost": lost,
        "cpu_percent_of_one_core": 100 * cpu,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--child", nargs=4, type=float, metavar=("PORT", "SILENT", "DEAD", "SECONDS"), help=argparse.SUPPRESS
    )
    args = p.parse_args()
    if args.serve:
        asyncio.run(serve())
        return
    if args.child:
        port, silent, dead, seconds = args.child
        print(json.dumps(asyncio.run(run_cycle(int(port), int(silent), int(dead), seconds))))
        return
    runs = 3 if args.quick else 5
    reads = 300 if args.quick else 1000
    seconds = 20 if args.quick else 60
    result: dict[str, object] = {
        "machine": describe(),
        "command": "python -m bench.modbus" + (" --quick" if args.quick else ""),
    }
    server, ports = start_server()
    try:
        latency = [asyncio.run(read_latency(ports["port"], reads)) for _ in range(runs)]
        result["read_latency"] = {k: summary([f[k] for f in latency]) for k in latency[0]} | {"reads_per_run": reads}
        for dead in (0, 2):
            figures = []
            for _ in range(3 if not args.quick else 2):
                out = subprocess.run(
                    [sys.executable, "-m", "bench.modbus", "--child", str(ports["port"]), str(ports["silent_port"]),
                     str(dead), str(seconds)],
                    capture_output=True,
                    text=True,
                    check=True,
                )  # fmt: skip
                figures.append(json.loads(out.stdout.strip().splitlines()[-1]))
            key = f"cycle_1s_10_devices_{dead}_dead"
            result[key] = {k: summary([f[k] for f in figures]) for k in figures[0]} | {"seconds_per_run": seconds}
    finally:
        server.kill()
        server.wait()
    print(json.dumps(result, indent=2))
    print(f"written to {write_result('modbus', result)}")


if __name__ == "__main__":
    main()
