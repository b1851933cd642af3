"""bench/machine.py, run as the benchmarks' machine line is read (`python -m bench.machine`): it carries
the cross-CPU round trip and the Python loop step that tell two machines of the same kind apart
(sessions 16 and 17), and what the host takes: CPU stolen, pages reclaimed (session 18)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bench.machine import page_reclaimer
from tests.support.bench_process import bench_stdout


def test_the_machine_line_carries_a_timed_cross_cpu_round_trip_and_cpu_speed() -> None:
    machine = json.loads(bench_stdout("machine", []))
    assert machine["cpu_count"] == os.cpu_count()
    assert 0 < machine["pipe_round_trip_us"] < 100_000  # µs: a real round trip (a hung child would time out)
    assert 0 < machine["python_step_ns"] < 100_000  # ns: a timed loop, not a constant
    assert 0 < machine["memory_step_ns"] < 100_000  # ns: a timed chase through memory
    assert 0 <= machine["steal_pct"] <= 100
    assert machine["page_reclaimer"] == page_reclaimer()  # what this machine's /sys says, as read below


def test_the_page_reclaimer_is_read_from_damons_sysfs_tree(tmp_path: Path) -> None:
    """The layout of /sys/kernel/mm/damon/admin/kdamonds (Linux 6.x), written as the kernel shows it."""
    assert page_reclaimer(tmp_path / "absent") == ""
    scheme = tmp_path / "0" / "contexts" / "0" / "schemes" / "0"
    scheme.mkdir(parents=True)
    (scheme / "action").write_text("pageout\n")
    (tmp_path / "0" / "state").write_text("off\n")
    assert page_reclaimer(tmp_path) == ""  # configured but not running
    (tmp_path / "0" / "state").write_text("on\n")
    assert page_reclaimer(tmp_path) == "damon pageout"
