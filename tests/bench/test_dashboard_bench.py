"""bench/dashboard.py runs end to end on tiny sizes (one browser run, a day of history, two live values)
against a fresh database of the test PostgreSQL, as a process of its own (tests never import bench/);
only the structure of its result is checked, never a timing. The bench itself fails when the page
throws, never shows the 20 devices, a live value or the 30-day buckets."""

from __future__ import annotations

from pathlib import Path

from tests.support.bench_process import run_bench


def test_bench_runs_end_to_end_on_tiny_sizes(database_url: str, tmp_path: Path) -> None:
    result = run_bench(
        "dashboard", ["--runs", "1", "--days", "1", "--samples", "2"], database_url, tmp_path / "dashboard.json"
    )
    assert set(result) >= {"machine", "command", "setup", "runs", "first_render_ms", "bundle", "met"}
    assert result["setup"]["devices"] == 20
    assert result["setup"]["history_rows"] == 25 * 24 * 60  # 25 channels, a day at 60 s
    assert "browser" in result["machine"]
    (run,) = result["runs"]
    assert run["first_render_ms"] > 0 and run["live_samples"] == 2
    assert run["chart_30d_total_ms"] >= run["chart_30d_draw_ms"] >= 0 and run["chart_30d_points"] > 0
    assert set(run["transferred_bytes"]) == set(result["bundle"]["files"])
    assert 0 < result["bundle"]["gzip_kb"] < result["bundle"]["raw_kb"]
    assert all(isinstance(v, bool) for v in result["met"].values())
