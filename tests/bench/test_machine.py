"""bench/machine.py, run as the benchmarks' machine line is read (`python -m bench.machine`): it carries
the cross-CPU round trip and the Python loop step that tell two machines of the same kind apart
(sessions 16 and 17)."""

from __future__ import annotations

import json
import os

from tests.support.bench_process import bench_stdout


def test_the_machine_line_carries_a_timed_cross_cpu_round_trip_and_cpu_speed() -> None:
    machine = json.loads(bench_stdout("machine", []))
    assert machine["cpu_count"] == os.cpu_count()
    assert 0 < machine["pipe_round_trip_us"] < 100_000  # µs: a real round trip (a hung child would time out)
    assert 0 < machine["python_step_ns"] < 100_000  # ns: a timed loop, not a constant
