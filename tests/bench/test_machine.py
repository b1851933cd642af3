"""bench/machine.py: the machine line every benchmark stores, with the cross-CPU round trip that tells
two machines of the same kind apart (session 16)."""

from __future__ import annotations

import os

from bench.machine import describe, pipe_round_trip_us


def test_the_round_trip_is_timed_and_this_process_keeps_its_cpus() -> None:
    cpus = os.sched_getaffinity(0)
    took = pipe_round_trip_us(rounds=200)
    assert 0 < took < 100_000  # µs: a real round trip, not a hung child (that would not return)
    assert os.sched_getaffinity(0) == cpus


def test_the_machine_line_carries_it() -> None:
    machine = describe("16.2")
    assert machine["postgres"] == "16.2"
    assert isinstance(machine["pipe_round_trip_us"], float) and machine["pipe_round_trip_us"] > 0
