"""bench/machine.py, run as the benchmarks' machine line is read (`python -m bench.machine`): it carries
the cross-CPU round trip that tells two machines of the same kind apart (session 16)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_machine_line_carries_a_timed_cross_cpu_round_trip() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.machine"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    machine = json.loads(out)
    assert machine["cpu_count"] == os.cpu_count()
    assert 0 < machine["pipe_round_trip_us"] < 100_000  # µs: a real round trip (a hung child would time out)
