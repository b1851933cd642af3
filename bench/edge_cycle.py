"""Edge control-cycle lateness and CPU: 20 simulated devices at 100 ms and at 1 s.

    python -m bench.edge_cycle [--quick]

Each configuration runs the real EdgeDaemon (devices, controllers, channel store, telemetry sampling,
SQLite outbox) in its own process, offline; lateness is the start of each cycle minus its deadline on
the monotonic clock; CPU is the process's user+system time over the run.
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

from bench.harness import percentile, summary, write_result
from bench.machine import describe


def twenty_device_site(period_s: float, outbox: Path) -> dict[str, object]:
    from edge_daemon.config import demo_site_dict

    doc = demo_site_dict(period_s=period_s, outbox_path=str(outbox))
    battery, pv, load, ev, meter = doc["devices"]  # type: ignore[misc]
    devices = []
    for i in range(5):
        devices += [{**battery, "id": f"battery_{i}"}, {**pv, "id": f"pv_{i}"}, {**load, "id": f"load_{i}", "seed": i}]
    devices += [{**ev, "id": f"ev_{i}"} for i in range(4)]
    devices.append({**meter, "id": "grid_1"})
    doc["devices"] = devices
    doc["controllers"] = [
        {"type": "self_consumption", "battery": "battery_0", "grid_meter": "grid_1"},
        {"type": "manual_override", "default_hold_s": 900},
    ]
    return doc


async def run_one(period_s: float, seconds: float) -> dict[str, float]:
    """In this (child) process: run the daemon, hook every cycle, report lateness and CPU."""
    from edge_daemon.config import parse_config
    from edge_daemon.daemon import EdgeDaemon

    with tempfile.TemporaryDirectory() as tmp:
        config = parse_config(twenty_device_site(period_s, Path(tmp) / "outbox.sqlite"), Path(tmp) / "site.toml")
        daemon = EdgeDaemon(config)
        lateness: list[float] = []
        daemon.cycle.add_hook(lambda ctx: lateness.append(daemon.cycle.stats.last_lateness_s * 1000))
        task = asyncio.create_task(daemon.run())
        await asyncio.sleep(min(2.0, seconds / 5))  # warm-up: imports, pvlib's first call
        lateness.clear()
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        await asyncio.sleep(seconds)
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        cycles = len(lateness)
        daemon.stop()
        await task
    cpu = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / (t1 - t0)
    return {
        "p50_ms": percentile(lateness, 0.5),
        "p99_ms": percentile(lateness, 0.99),
        "max_ms": max(lateness),
        "cycles": cycles,
        "cpu_percent_of_one_core": 100 * cpu,
        "overruns": daemon.cycle.stats.overruns,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--child", nargs=2, type=float, metavar=("PERIOD_S", "SECONDS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(run_one(args.child[0], args.child[1]))))
        return
    runs = 3
    result: dict[str, object] = {
        "machine": describe(),
        "command": "python -m bench.edge_cycle" + (" --quick" if args.quick else ""),
    }
    for period, seconds in ((0.1, 20 if args.quick else 60), (1.0, 30 if args.quick else 120)):
        figures = []
        for _ in range(runs):
            out = subprocess.run(
                [sys.executable, "-m", "bench.edge_cycle", "--child", str(period), str(seconds)],
                capture_output=True,
                text=True,
                check=True,
            )
            figures.append(json.loads(out.stdout.strip().splitlines()[-1]))
        result[f"period_{int(period * 1000)}ms"] = {key: summary([f[key] for f in figures]) for key in figures[0]} | {
            "seconds_per_run": seconds
        }
    print(json.dumps(result, indent=2))
    print(f"written to {write_result('edge_cycle', result)}")


if __name__ == "__main__":
    main()
