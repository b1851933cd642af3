"""bench/alarms.py runs end to end on tiny sizes (20 edges, 100 rules, one 5 s run per variant with a 1 s
storm window) against a fresh database of the test PostgreSQL, as a process of its own (tests never
import bench/); what it measured is checked (alarms raised and seen, acks), never a timing."""

from __future__ import annotations

from pathlib import Path

from tests.support.bench_process import run_bench


def test_bench_runs_end_to_end_on_tiny_sizes(database_url: str, tmp_path: Path) -> None:
    result = run_bench(
        "alarms",
        ["--edges", "20", "--rules", "100", "--duration", "5", "--storm", "1", "--tail", "1", "--runs", "1"],
        database_url,
        tmp_path / "alarms.json",
    )
    assert set(result) >= {"machine", "command", "with_rules", "without_rules", "alarm_p99_ms", "alarm_goal_met"}
    for variant, rules in (("with_rules", 100), ("without_rules", 0)):
        (run,) = result[variant]
        assert run["rules_enabled"] == rules
        latency = run["alarm_latency_ms"]
        # Every probe sample flipped its alarm and the flip was seen on WatchAlarms, after its ack.
        assert latency["samples"] > 0 and latency["samples_without_change"] == 0 and latency["probe_errors"] == 0
        assert latency["ack_to_seen_ms"]["samples"] == latency["samples"] and latency["ack_to_seen_ms"]["p50"] > 0
        assert run["storm_alarm_latency_ms"]["samples_without_change"] == 0
        assert run["ingest"]["errors"] == 0 and run["ingest"]["acked_points_per_s"] > 0
    assert isinstance(result["alarm_goal_met"], bool)
