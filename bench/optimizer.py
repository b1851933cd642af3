"""Optimizer benchmarks: build + solve time of the optimizer's model, split between building and HiGHS.

    python -m bench.optimizer [--quick] [--output PATH]

Scenarios (96 slots of 15 minutes, one day; seeded, so every run solves the same problems):
1. site: one site with a battery, PV and load. Goal: build + solve < 0.1 s.
2. community: 40 sites behind one shared connection, 100 assets (40 batteries, 40 PV arrays,
   20 EV chargers with a 4.2 kW minimum), peak charges, negative midday prices. Goal: < 1.5 s.
3. fleet: 1,000 sites like (1) optimised independently, one after another on one core: total time
   and the per-site p50/p99.
4. independent sites: 10 sites like (1) in one run without a shared connection, paid a fixed feed-in
   tariff of 0.08 EUR/kWh, above the import price in the negative midday slots, so each meter needs
   binaries to keep to one direction there. The optimizer solves such sites one by one
   (direct.site_parts); "together" is the same arrays as one model, as before session 20.

Each of (1) and (2) is built two ways: directly as HiGHS arrays with lazy binaries
(services/optimizer/direct.py, what the optimizer uses) and as the pyomo model with every binary
(services/optimizer/model.py) solved through pyomo's appsi HiGHS interface, whose "solve" includes
handing the model to HiGHS. Every goal is run 3 times; the result holds each run and the median (min-max).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import percentile, summary
from bench.machine import describe
from services.optimizer.direct import build_direct, solve_built
from services.optimizer.errors import SolverError
from services.optimizer.inputs import Battery, EvCharger, Prices, Problem, PvArray, SharedConnection, Site
from services.optimizer.solve import solve, solve_pyomo, solver_version

SLOTS = 96
RUNS = 3
GOAL_SITE_S = 0.1
GOAL_COMMUNITY_S = 1.5
START = datetime(2026, 6, 1, tzinfo=UTC)


def _prices(rng: random.Random) -> Prices:
    # An evening peak, a midday dip that goes negative (slots 44-59), German-like network, tax and VAT.
    market = tuple(
        0.08
        + 0.06 * math.cos(2 * math.pi * (t - 76) / SLOTS)
        - (0.12 if 44 <= t < 60 else 0.0)
        + rng.uniform(-0.01, 0.01)
        for t in range(SLOTS)
    )
    carbon = tuple(0.3 + 0.2 * math.cos(2 * math.pi * t / SLOTS) for t in range(SLOTS))
    return Prices(market, tuple(min(0.07, m) for m in market), 0.08, 0.02, 0.19, carbon, 0.1)


def _pv(kwp: float) -> tuple[float, ...]:
    return tuple(max(0.0, kwp * math.sin(math.pi * (t - 24) / 56)) if 24 <= t < 80 else 0.0 for t in range(SLOTS))


def problem(
    sites: int, batteries: int, pv: int, evs: int, *, shared: bool, seed: int = 1, feed_in: float | None = None
) -> Problem:
    """`feed_in`: a fixed feed-in tariff (EUR/kWh) instead of the market price capped at 0.07."""
    rng = random.Random(seed)
    site_list = tuple(
        Site(
            f"s{i}",
            tuple(0.5 + rng.uniform(0, 1.5) + (1.5 if 68 <= t < 88 else 0.0) for t in range(SLOTS)),
            import_limit_kw=30.0,
            export_limit_kw=30.0,
            peak_eur_per_kw=0.05,
        )
        for i in range(sites)
    )
    bats = tuple(
        Battery(
            f"b{i}",
            f"s{i % sites}",
            10.0,
            5.0,
            5.0,
            5.0,
            reserve_kwh=1.0,
            degradation_eur_per_kwh=0.02,
            stored_value_eur_per_kwh=0.1,
        )
        for i in range(batteries)
    )
    arrays = tuple(PvArray(f"pv{i}", f"s{i % sites}", _pv(rng.uniform(4, 10))) for i in range(pv))
    chargers = tuple(
        EvCharger(f"ev{i}", f"s{i % sites}", rng.uniform(5, 20), rng.randint(60, 76), rng.randint(88, 95), 11.0, 4.2)
        for i in range(evs)
    )
    connection = SharedConnection(sites * 8.0, sites * 8.0, 0.02) if shared else None
    prices = _prices(rng)
    if feed_in is not None:
        prices = replace(prices, feed_in_eur_per_kwh=(feed_in,) * SLOTS)
    return Problem(START, SLOTS, prices, site_list, bats, arrays, chargers, shared=connection)


def _run(fn: Any, p: Problem) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        plan = fn(p)
    except SolverError as e:
        return {"total_s": time.perf_counter() - t0, "error": str(e)}
    return {
        "total_s": time.perf_counter() - t0,
        "build_s": plan.build_s,
        "solve_s": plan.solve_s,
        "objective": plan.objective,
        "mip_gap": plan.mip_gap,
        "optimal": plan.optimal,
        "expected_cost_eur": plan.expected.cost_eur,
        "baseline_cost_eur": plan.baseline.cost_eur,
    }


def _solve_together(p: Problem) -> dict[str, Any]:
    """The whole problem as one HiGHS model, as the optimizer solved independent sites before."""
    t0 = time.perf_counter()
    built = build_direct(p)
    t1 = time.perf_counter()
    res = solve_built(p, built)
    t2 = time.perf_counter()
    return {
        "total_s": t2 - t0,
        "build_s": t1 - t0,
        "solve_s": t2 - t1,
        "objective": res.objective,
        "mip_gap": res.mip_gap,
        "optimal": res.optimal,
    }


def independent(runs: int, together_runs: int) -> dict[str, Any]:
    p = problem(10, 10, 10, 0, shared=False, feed_in=0.08)
    solve(p)  # warm
    return {
        "highs_arrays": _stats([_run(solve, p) for _ in range(runs)]),
        "together": _stats([_solve_together(p) for _ in range(together_runs)]),
    }


def _stats(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": runs}
    for key in ("total_s", "build_s", "solve_s"):
        values = [r[key] for r in runs if key in r]
        if values:
            out[key] = summary(values)
    return out


def scenario(p: Problem, runs: int, pyomo_runs: int) -> dict[str, Any]:
    solve(p)  # warm: imports and HiGHS's first start are not the model's cost
    return {
        "highs_arrays": _stats([_run(solve, p) for _ in range(runs)]),
        "pyomo": _stats([_run(solve_pyomo, p) for _ in range(pyomo_runs)]),
    }


def fleet(count: int) -> dict[str, Any]:
    times = []
    t0 = time.perf_counter()
    for i in range(count):
        p = problem(1, 1, 1, 0, shared=False, seed=1000 + i)
        t = time.perf_counter()
        solve(p)
        times.append(time.perf_counter() - t)
    return {
        "sites": count,
        "total_s": time.perf_counter() - t0,
        "p50_s": percentile(times, 0.5),
        "p99_s": percentile(times, 0.99),
        "max_s": max(times),
    }


def _line(name: str, r: dict[str, Any]) -> str:
    def fmt(key: str) -> str:
        s = r.get(key)
        return "-" if s is None else f"{s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f})"

    gaps = {round(x.get("mip_gap", float("nan")), 4) for x in r["runs"]}
    optimal = [x.get("optimal") for x in r["runs"]]
    return (
        f"  {name:13s} total {fmt('total_s')} s  build {fmt('build_s')} s  solve {fmt('solve_s')} s  gap {sorted(gaps)}"
        f"  optimal {optimal}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="100 fleet sites, one pyomo (and one 'together') run per scenario"
    )
    ap.add_argument("--output", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    pyomo_runs = 1 if args.quick else RUNS
    result: dict[str, Any] = {"machine": describe(), "solver": f"HiGHS {solver_version()}", "slots": SLOTS}
    result["site"] = scenario(problem(1, 1, 1, 0, shared=False), RUNS, pyomo_runs)
    result["community"] = scenario(problem(40, 40, 40, 20, shared=True), RUNS, pyomo_runs)
    result["fleet"] = fleet(100 if args.quick else 1000)
    result["independent"] = independent(RUNS, pyomo_runs)
    result["goals"] = {
        "site_s": GOAL_SITE_S,
        "site_met": result["site"]["highs_arrays"]["total_s"]["median"] < GOAL_SITE_S,
        "community_s": GOAL_COMMUNITY_S,
        "community_met": result["community"]["highs_arrays"]["total_s"]["median"] < GOAL_COMMUNITY_S,
    }
    print(json.dumps(result["machine"]))
    for name in ("site", "community", "independent"):
        print(name)
        for engine, r in result[name].items():
            print(_line(engine, r))
    f = result["fleet"]
    print(
        f"fleet {f['sites']} sites: total {f['total_s']:.2f} s, "
        f"p50 {f['p50_s'] * 1000:.1f} ms, p99 {f['p99_s'] * 1000:.1f} ms"
    )
    print("goals", result["goals"])
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
