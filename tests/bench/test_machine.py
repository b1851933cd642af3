"""bench/machine.py, run as the benchmarks' machine line is read (`python -m bench.machine`): it carries
the cross-CPU round trip and the Python loop step that tell two machines of the same kind apart
(sessions 16 and 17), and what the host takes: CPU stolen, pages reclaimed (session 18)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.support.bench_process import bench_stdout

DAMON = Path("/sys/kernel/mm/damon/admin/kdamonds")


def test_the_machine_line_carries_a_timed_cross_cpu_round_trip_and_cpu_speed() -> None:
    machine = json.loads(bench_stdout("machine", []))
    assert machine["cpu_count"] == os.cpu_count()
    assert 0 < machine["pipe_round_trip_us"] < 100_000  # µs: a real round trip (a hung child would time out)
    assert 0 < machine["python_step_ns"] < 100_000  # ns: a timed loop, not a constant
    assert 0 < machine["memory_step_ns"] < 100_000  # ns: a timed chase through memory
    assert 0 <= machine["steal_pct"] <= 100
    # DAMON's proactive reclaim, as this machine's kernel has it (session 18's ran a pageout scheme).
    running = [state for state in DAMON.glob("*/state") if state.read_text().strip() == "on"]
    actions = {a.read_text().strip() for state in running for a in state.parent.glob("contexts/*/schemes/*/action")}
    assert machine["page_reclaimer"] == " ".join(f"damon {a}" for a in sorted(actions))
