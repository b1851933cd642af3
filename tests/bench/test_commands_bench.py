"""bench/commands.py runs end to end on a tiny size (the two idle lines, 20 commands each, one run)
against a fresh database of the test PostgreSQL, as a process of its own (tests never import bench/),
with its references: the health checks and the command floor (bench/command_floor.py, its own server
and edge processes). What it measured is checked (every command EXECUTED, every floor command
answered, the comparison with the floor made), never a timing."""

from __future__ import annotations

from pathlib import Path

from tests.support.bench_process import run_bench


def test_bench_runs_end_to_end_with_the_command_floor(database_url: str, tmp_path: Path) -> None:
    result = run_bench(
        "commands",
        ["--runs", "1", "--samples", "20", "--lines", "idle,two_calls"],
        database_url,
        tmp_path / "commands.json",
    )
    (run,) = result["runs"]
    for line in ("idle", "idle_two_calls"):
        assert run[line]["commands"] == 20 and run[line]["errors"] == {}
        assert set(run[line]["median_ms_between_waypoints"]) >= {"due -> QUEUED", "EXECUTED -> seen by the caller"}
        assert result[line]["over_floor_p50"]["runs"] == 1 and result[line]["over_floor_p50"]["median"] > 0
    floor = run["reference_floor"]
    assert floor["commands"] == 20 and floor["p50_ms"] > 0
    assert result["reference_floor"]["p50_spread"]["runs"] == 1
    assert run["reference_health_checks"]["one_p50_ms"] > 0
