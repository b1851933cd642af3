"""Edge daemon footprint: resident memory and start-up time with 20 Modbus devices, connected to a cloud.

    python -m bench.edge_footprint [--quick]

Edge hardware is often a small ARM board, so what one daemon costs matters as much as how fast it is.
Each run starts the real daemon (`python -m edge_daemon --config site.toml`) as its own process with
20 Modbus TCP devices (100 registers each, polled every second from bench.modbus's pymodbus server
with 10 units) and a [cloud] section pointing at a real `emma serve edge` on an embedded PostgreSQL,
with an edge key issued by the identity domain. Measured per run:

- start-up: from spawning the process to its "edge daemon started" log line (devices started, control
  cycle running), and to "connected to the cloud" (Welcome received on the bidirectional stream);
- memory: VmRSS sampled every second over the steady window after connecting (its last value and
  maximum), and VmHWM (the kernel's peak RSS since the start). At the end of the window RSS is also
  split as the kernel counts it: RssAnon (what the process allocated itself) and RssFile (pages of
  the interpreter and the shared libraries such as grpcio's, mapped from the page cache). RssFile
  depends on the kernel and on what else has those files cached (fault-around maps neighbouring
  cached pages in), so it moves between machines while the daemon's own memory does not.

The reference in the same run is the floor no daemon can go below: a Python interpreter that imports
only grpcio, protobuf, the generated edge-link contract and pymodbus and then sleeps.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench.harness import BENCH_ENV, cloud_process, database, migrate, rss_mib, run_benchmark, summary
from bench.machine import describe
from bench.modbus import UNITS, register_map_doc, start_server

DEVICES = 20
REFERENCE_IMPORTS = "import grpc, google.protobuf, pymodbus.client; from emma.edge.v1 import edge_link_pb2_grpc"


def status_mib(pid: int, field: str) -> float:
    """A memory field of /proc/PID/status (VmHWM, RssAnon, RssFile) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def site_doc(modbus_port: int, cloud_port: int, edge: str) -> dict[str, Any]:
    devices = [
        {
            "id": f"meter_{i}",
            "type": "modbus",
            "host": "127.0.0.1",
            "port": modbus_port,
            "unit_id": i % UNITS + 1,
            "poll_interval_s": 1.0,
            "timeout_s": 0.5,
            "max_registers_per_read": 50,
            "profile": "meter.toml",
        }
        for i in range(DEVICES)
    ]
    return {
        "site": {"id": "footprint", "timezone": "UTC", "latitude": 0, "longitude": 0},
        "cycle": {"period_s": 1.0},
        "outbox": {"path": "outbox.sqlite"},
        "telemetry": {"batch_interval_s": 1.0},
        "cloud": {"endpoint": f"127.0.0.1:{cloud_port}", "edge": edge, "key_file": "edge.key", "tls": False},
        "devices": devices,
    }


async def provision(dsn: str) -> tuple[str, str]:
    from services.identity import issue_edge_key
    from services.names import EdgeName
    from services.registry import ensure_edge

    edge = EdgeName("bench", "footprint-site", "footprint-edge")
    conn = await asyncpg.connect(dsn)
    try:
        _, key = await issue_edge_key(conn, await ensure_edge(conn, edge))
    finally:
        await conn.close()
    return str(edge), key


async def wait_for_line(proc: asyncio.subprocess.Process, marker: str, deadline: float) -> float:
    """The monotonic time at which `marker` appears in the daemon's log."""
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        async with asyncio.timeout(deadline - time.monotonic()):
            line = await proc.stderr.readline()
        if not line:
            raise RuntimeError(f"edge daemon exited before logging {marker!r}")
        if marker.encode() in line:
            return time.monotonic()
    raise RuntimeError(f"edge daemon did not log {marker!r} in time")


async def one_daemon(folder: Path, steady_s: float) -> dict[str, float]:
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge_daemon", "--config", str(folder / "site.toml"), "--log-level", "INFO",
        cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        started = await wait_for_line(proc, "edge daemon started", t0 + 60)
        connected = await wait_for_line(proc, "connected to the cloud", t0 + 60)
        drain = asyncio.create_task(_drain(proc))
        samples = []
        for _ in range(int(steady_s)):
            await asyncio.sleep(1.0)
            samples.append(rss_mib(proc.pid))
        peak = status_mib(proc.pid, "VmHWM")
        anon, file = status_mib(proc.pid, "RssAnon"), status_mib(proc.pid, "RssFile")
        drain.cancel()
    finally:
        proc.terminate()
        await proc.wait()
    return {
        "startup_to_cycle_s": started - t0,
        "startup_to_connected_s": connected - t0,
        "rss_steady_mib": samples[-1],
        "rss_max_sampled_mib": max(samples),
        "vm_hwm_mib": peak,
        "rss_anon_mib": anon,
        "rss_file_mib": file,
    }


async def _drain(proc: asyncio.subprocess.Process) -> None:
    assert proc.stderr is not None
    while await proc.stderr.readline():
        pass


async def reference_rss() -> dict[str, float]:
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", f"{REFERENCE_IMPORTS}; print('ready', flush=True); import time; time.sleep(60)",
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    await proc.stdout.readline()
    ready = time.monotonic() - t0
    await asyncio.sleep(1.0)
    rss = rss_mib(proc.pid)
    anon, file = status_mib(proc.pid, "RssAnon"), status_mib(proc.pid, "RssFile")
    proc.kill()
    await proc.wait()
    return {"rss_mib": rss, "rss_anon_mib": anon, "rss_file_mib": file, "import_s": ready}


async def main_async(quick: bool) -> dict[str, object]:
    from edge_daemon.site_toml import write_site_toml

    runs, steady_s = 3, (10.0 if quick else 30.0)
    server, ports = start_server()
    try:
        with database() as dsn:
            await migrate(dsn)
            edge, key = await provision(dsn)
            async with cloud_process(dsn, "edge", BENCH_ENV) as (cloud_port, _pid, _stats):
                figures, references = [], []
                for _ in range(runs):
                    with tempfile.TemporaryDirectory(prefix="emma-footprint-") as tmp:
                        folder = Path(tmp)
                        key_file = folder / "edge.key"
                        key_file.write_text(key + "\n")
                        os.chmod(key_file, 0o600)
                        # One device profile (100 u16 registers) shared by the 20 devices, as a site would.
                        profile = {"profile": {"name": "bench meter"}, "registers": register_map_doc()}
                        write_site_toml(folder / "meter.toml", profile)
                        write_site_toml(folder / "site.toml", site_doc(ports["port"], cloud_port, edge))
                        figures.append(await one_daemon(folder, steady_s))
                    references.append(await reference_rss())
    finally:
        server.kill()
        server.wait()
    return {
        "machine": describe(),
        "command": "python -m bench.edge_footprint" + (" --quick" if quick else ""),
        "devices": DEVICES,
        "steady_seconds_per_run": steady_s,
        "edge_daemon": {k: summary([f[k] for f in figures]) for k in figures[0]},
        "reference_python_grpc_pymodbus": {k: summary([r[k] for r in references]) for k in references[0]},
        "goals": {"rss_steady_mib": "< 60", "startup_to_cycle_s": "< 1"},
    }


def main() -> None:
    run_benchmark("edge_footprint", __doc__, main_async)


if __name__ == "__main__":
    main()
