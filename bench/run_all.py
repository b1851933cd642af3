"""`make bench`: the quick version of every benchmark, then one JSON file and one markdown table.

Each benchmark runs as its own process (python -m bench.<name> --quick) and writes
bench/results/<name>.json; this script gathers them into bench/results/summary.json and
bench/results/summary.md, the table docs/performance.md reproduces.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.machine import describe

RESULTS = Path(__file__).resolve().parent / "results"
BENCHMARKS = ["edge_cycle", "ingest", "commands", "history", "gateway", "modbus", "market"]


def _fmt(x: Any, digits: int = 1) -> str:
    if isinstance(x, dict) and "median" in x:
        return f"{x['median']:,.{digits}f} ({x['min']:,.{digits}f}–{x['max']:,.{digits}f})"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, value, goal, command) for the markdown table."""
    out: list[tuple[str, str, str, str]] = []
    if "edge_cycle" in results:
        r = results["edge_cycle"]
        for key, label in (("period_100ms", "100 ms"), ("period_1000ms", "1 s")):
            c = r[key]
            out.append(
                (
                    f"edge cycle lateness p50 / p99 at {label}, 20 devices (ms)",
                    f"{_fmt(c['p50_ms'], 2)} / {_fmt(c['p99_ms'], 2)}",
                    "p99 < 5",
                    r["command"],
                )
            )
            out.append(
                (
                    f"edge CPU at {label}, 20 devices (% of one core)",
                    _fmt(c["cpu_percent_of_one_core"], 2),
                    "< 2 (at 1 s)",
                    r["command"],
                )
            )
    if "ingest" in results:
        r = results["ingest"]
        t = r["throughput"]
        out.append(("ingest end to end (points/s)", _fmt(t["end_to_end_points_per_s"], 0), ">= 100,000", r["command"]))
        out.append(
            (
                "best raw binary COPY of 1, 2, 4 connections, same table, same run (rows/s)",
                _fmt(t["best_raw_copy_rows_per_s"], 0),
                "reference",
                r["command"],
            )
        )
        ratio = _fmt(t["ratio_to_best_raw_copy"], 2)
        out.append(("ingest / best raw COPY (5,000-point batches)", ratio, ">= 0.8", r["command"]))
        small = r.get("throughput_1000_point_batches")
        if small:
            ratio = _fmt(small["ratio_to_best_raw_copy"], 2)
            out.append(("the same with 1,000-point batches", ratio, "reported", r["command"]))
        for key, goal in (("fleet_100", "-"), ("fleet_1000", "p99 < 200"), ("fleet_2000", "reported")):
            f = r[key]
            out.append(
                (
                    f"{f['edges']} edges at 1 batch/s: ack p99 from the due time, from 15 s on (ms)",
                    _fmt(f["judged_p99_ms"]),
                    goal,
                    r["command"],
                )
            )
            out.append(
                (
                    f"{f['edges']} edges: ack p99 during the connection storm, first 15 s (ms)",
                    _fmt(f["storm_p99_ms"]),
                    "p99 < 2,000 (1,000 edges)",
                    r["command"],
                )
            )
    if "commands" in results:
        r = results["commands"]
        for key, label, goal in (
            ("idle", "idle, simulated edge, one CreateCommand with final_state_wait", "p50 < 5, p99 < 20"),
            ("idle_two_calls", "idle, simulated edge, CreateCommand then WatchCommand", "reported"),
            ("edge_daemon", "real edge daemon at a 100 ms cycle (includes the wait for the cycle)", "reported"),
            ("under_1000_edge_load", "under the 1,000-edge load", "p99 < 150"),
        ):
            if key not in r:
                continue
            c = r[key]
            out.append(
                (
                    f"command round trip to EXECUTED from its due time, {label}: p50 / p99 (ms)",
                    f"{_fmt(c['p50_spread'])} / {_fmt(c['p99_spread'])}",
                    goal,
                    r["command"],
                )
            )
        if "reference_floor" in r:
            f = r["reference_floor"]
            out.append(
                (
                    "command floor: the same process hops and flushed commits, no EMMA logic (bench/command_floor.py): "
                    "p50 / p99 (ms)",
                    f"{_fmt(f['p50_spread'])} / {_fmt(f['p99_spread'])}",
                    "reference",
                    r["command"],
                )
            )
    if "gateway" in results:
        r = results["gateway"]
        for name, goal in (("split", ">= 1,500 req/s, p99 < 50"), ("up", ">= 1,000 req/s, p99 < 50")):
            if name not in r:
                continue
            g = r[name]["summary"]
            out.append(
                (
                    f"gateway GET latest (50 values), 50 clients, {name}: open loop at the goal rate, req/s; p99 (ms)",
                    f"{_fmt(g['gateway_open']['requests_per_s'], 0)}; {_fmt(g['gateway_open']['p99_ms'])}",
                    goal,
                    r["command"],
                )
            )
            out.append(
                (
                    f"same, closed loop ({name}): gateway req/s; gRPC direct req/s (reference, own process)",
                    f"{_fmt(g['gateway_closed']['requests_per_s'], 0)}; {_fmt(g['grpc_closed']['requests_per_s'], 0)}",
                    "reference",
                    r["command"],
                )
            )
    if "modbus" in results:
        r = results["modbus"]
        lat = r["read_latency"]
        out.append(
            (
                "Modbus: read 100 registers from a local server, p50 / p99 (ms)",
                f"{_fmt(lat['read_100_registers_p50_ms'], 2)} / {_fmt(lat['read_100_registers_p99_ms'], 2)}",
                "-",
                r["command"],
            )
        )
        for key, label in (("cycle_1s_10_devices_0_dead", "all answering"), ("cycle_1s_10_devices_2_dead", "2 hung")):
            c = r[key]
            out.append(
                (
                    f"cycle lateness, 1 s, 10 Modbus devices polled ({label}): p50 / p99 (ms)",
                    f"{_fmt(c['p50_ms'], 2)} / {_fmt(c['p99_ms'], 2)}",
                    "p99 < 5",
                    r["command"],
                )
            )
    if "history" in results:
        r = results["history"]
        for key, label in (("15min", "15 min"), ("1h_local", "1 h, local"), ("1d_local", "1 day, local")):
            h = r[key]
            out.append(
                (
                    f"30-day history, {label} buckets: p50 / p99 (ms)",
                    f"{_fmt(h['p50_ms'])} / {_fmt(h['p99_ms'])}",
                    "p99 < 100 (15 min)",
                    r["command"],
                )
            )
    if "market" in results:
        r = results["market"]
        s = r["store"]
        out.append(
            (
                f"market: parse + store A44 documents, one transaction each, {s['connections']} connections "
                "(documents/s; rows/s)",
                f"{_fmt(s['store_documents_per_s'], 0)}; {_fmt(s['store_rows_per_s'], 0)}",
                "-",
                r["command"],
            )
        )
        out.append(("market: parse alone (documents/s)", _fmt(s["parse_documents_per_s"], 0), "-", r["command"]))
        out.append(
            (
                "market: raw binary COPY, same rows, best of 1/2/4 connections (rows/s)",
                _fmt(s["best_copy_rows_per_s"], 0),
                "reference",
                r["command"],
            )
        )
        out.append(("market: store / raw COPY", _fmt(s["ratio_to_best_copy"], 2), ">= 0.5", r["command"]))
        for key, label in (
            ("curve", "GetPriceCurve, one zone and day"),
            ("batch", "BatchGetMarketSummaries, 40 zones"),
            ("parallel", "40 GetMarketSummary at once"),
        ):
            q = r["read"][key]
            out.append(
                (
                    f"market: {label}, open loop {q['rate_per_s']:g}/s: p50 / p99 (ms)",
                    f"{_fmt(q['p50_ms'])} / {_fmt(q['p99_ms'])}",
                    q["goal"],
                    r["command"],
                )
            )
    return out


def markdown(results: dict[str, Any], machine: dict[str, Any]) -> str:
    lines = [
        f"Machine: {machine['cpu_count']} × {machine['cpu_model']}, {machine['memory_gib']} GiB, "
        f"Python {machine['python']}, "
        f"a pipe round trip to a process on the other CPU {machine['pipe_round_trip_us']} µs, "
        f"a Python loop step {machine['python_step_ns']} ns, "
        f"one through 160 MB {machine.get('memory_step_ns', '?')} ns, "
        f"CPU taken by the hypervisor since boot {machine.get('steal_pct', '?')} %, "
        f"proactive page reclaim: {machine.get('page_reclaimer') or 'none'}, "
        f"PostgreSQL {results.get('ingest', {}).get('machine', {}).get('postgres', '?')}",
        "",
        "| figure | median (min–max over runs) | goal | command |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | `{d}` |" for a, b, c, d in rows(results)]
    return "\n".join(lines) + "\n"


def main() -> None:
    only = sys.argv[1:] or BENCHMARKS
    results: dict[str, Any] = {}
    for name in only:
        started = time.perf_counter()
        print(f"== bench.{name} --quick", flush=True)
        subprocess.run([sys.executable, "-m", f"bench.{name}", "--quick"], check=True)
        results[name] = json.loads((RESULTS / f"{name}.json").read_text())
        print(f"== bench.{name} took {time.perf_counter() - started:.0f} s", flush=True)
    machine = describe()
    (RESULTS / "summary.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    table = markdown(results, machine)
    (RESULTS / "summary.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
