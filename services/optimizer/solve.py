"""Solve a Problem with HiGHS (through pyomo's appsi interface) and read the plan back.

Infeasible inputs never yield an empty plan: conflicts an asset has with itself are named before any
solve (checks.py); any other infeasibility is named by re-solving the elastic model (model.py) and
listing the constraint families whose slack had to be used.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import highspy

from services.optimizer.baseline import baseline, outcome
from services.optimizer.checks import precheck
from services.optimizer.direct import DirectInfeasible, DirectNoPlan, solve_direct
from services.optimizer.errors import InfeasibleError, SolverError
from services.optimizer.inputs import SLOT_H, Problem
from services.optimizer.plan import BatterySchedule, GridSchedule, Outcome, Plan, PvSchedule

# Slack below this (kW or kWh) is solver noise, not a conflict.
_SLACK_TOL = 1e-6


def solver_version() -> str:
    # highspy's own version, which pyomo's HiGHS interface reports too ("1.15.1").
    return str(highspy.Highs().version())  # type: ignore[no-untyped-call]  # the constructor carries no annotations


def _pyomo() -> tuple[Any, Any, Any]:
    """pyomo, its termination conditions and its HiGHS interface, imported on first use. Only the
    reference solve and the explanation of an infeasible problem need them; the everyday path
    (direct.py's arrays) does not, and importing pyomo with this module cost every process that hosts
    the optimizer 1.2-2.1 s of start-up and 23 MiB (session 17's machine)."""
    import pyomo.environ as pyo  # type: ignore[import-untyped]  # pyomo ships no type information
    from pyomo.contrib.appsi.base import TerminationCondition  # type: ignore[import-untyped]
    from pyomo.contrib.appsi.solvers import Highs  # type: ignore[import-untyped]

    return pyo, TerminationCondition, Highs


def _highs(p: Problem) -> Any:
    _, _, highs = _pyomo()
    opt = highs()
    opt.config.time_limit = p.time_limit_s
    opt.config.mip_gap = p.mip_gap
    opt.config.load_solution = False
    opt.config.stream_solver = False
    opt.highs_options = {"threads": 1, "output_flag": False}
    return opt


def solve(p: Problem) -> Plan:
    """The optimal (or, at the time limit, best found) plan of `p`; InfeasibleError naming the conflicts.

    Built as HiGHS arrays with lazy binaries, site by site where nothing couples the sites (direct.py);
    solve_pyomo gives the same objective.
    """
    conflicts = precheck(p)
    if conflicts:
        raise InfeasibleError(conflicts)
    t0 = time.perf_counter()
    try:
        res, build_s = solve_direct(p)
    except DirectInfeasible:
        raise InfeasibleError(explain(p)) from None
    except DirectNoPlan as e:
        raise SolverError(f"HiGHS gave no usable plan: {e}") from None
    values = res.values

    def get(kind: str, name: str, t: int) -> float:
        return values.get((kind, name, t), 0.0)

    return _read(p, get, res.objective, build_s, time.perf_counter() - t0 - build_s, res.mip_gap, res.optimal)


def solve_pyomo(p: Problem) -> Plan:
    """`p` solved through the pyomo model (model.py) with every binary from the start: the reference."""
    from services.optimizer.model import build

    pyo, TerminationCondition, _ = _pyomo()
    conflicts = precheck(p)
    if conflicts:
        raise InfeasibleError(conflicts)
    t0 = time.perf_counter()
    m = build(p)
    t1 = time.perf_counter()
    res = _highs(p).solve(m)
    t2 = time.perf_counter()
    tc = res.termination_condition
    if tc in (TerminationCondition.infeasible, TerminationCondition.infeasibleOrUnbounded):
        raise InfeasibleError(explain(p))
    feasible = res.best_feasible_objective is not None
    if tc is not TerminationCondition.optimal and not (tc is TerminationCondition.maxTimeLimit and feasible):
        raise SolverError(f"HiGHS ended with {tc.name} and no usable plan")
    res.solution_loader.load_vars()
    obj = float(res.best_feasible_objective)
    bound = res.best_objective_bound
    gap = 0.0 if bound is None else abs(obj - float(bound)) / max(1e-9, abs(obj))
    var = {"ch": m.ch, "dis": m.dis, "soc": m.soc, "pv": m.pv, "ev": m.ev, "flex": m.flex, "imp": m.imp, "exp": m.exp}

    def get(kind: str, name: str, t: int) -> float:
        v = var[kind]
        return float(pyo.value(v[name, t])) if (name, t) in v else 0.0

    return _read(p, get, obj, t1 - t0, t2 - t1, gap, tc is TerminationCondition.optimal)


def explain(p: Problem) -> list[str]:
    """The constraint families an infeasible `p` cannot satisfy, in plain words."""
    from services.optimizer.model import build

    pyo, TerminationCondition, _ = _pyomo()
    m = build(p, elastic=True)
    res = _highs(p).solve(m)
    if res.termination_condition is not TerminationCondition.optimal:
        return [f"the inputs admit no schedule (HiGHS: {res.termination_condition.name})"]
    res.solution_loader.load_vars()
    out: list[str] = []
    sites = {s.name: s for s in p.sites}

    def worst(var: Any, keys: list[Any]) -> tuple[Any, float] | None:
        vals = [(k, pyo.value(var[k])) for k in keys]
        hit = [(k, v) for k, v in vals if v > _SLACK_TOL]
        return max(hit, key=lambda kv: kv[1]) if hit else None

    for s in p.sites:
        keys = [(s.name, t) for t in range(p.slots)]
        w = worst(m.s_imp, keys)
        if w:
            t = w[0][1]
            out.append(
                f"site {s.name} needs {sites[s.name].import_limit_kw + w[1]:.3g} kW from the grid at "
                f"{p.slot_label(t)} but its import limit is {s.import_limit_kw:g} kW"
            )
        w = worst(m.s_exp, keys)
        if w:
            t = w[0][1]
            out.append(
                f"site {s.name} must export {s.export_limit_kw + w[1]:.3g} kW at {p.slot_label(t)} "
                f"(PV that cannot be curtailed) but its export limit is {s.export_limit_kw:g} kW"
            )
    for e in p.evs:
        short = pyo.value(m.s_ev[e.name])
        if short > _SLACK_TOL:
            out.append(
                f"EV {e.name} cannot reach {e.energy_kwh:g} kWh by {p.slot_label(e.departure_slot)} "
                f"within the site's grid limits (short by {short:.3g} kWh)"
            )
    for f in p.flexible_loads:
        short = pyo.value(m.s_flex[f.name])
        if short > _SLACK_TOL:
            out.append(
                f"flexible load {f.name} cannot consume {f.energy_kwh:g} kWh between "
                f"{p.slot_label(f.window_start_slot)} and {p.slot_label(f.window_end_slot)} "
                f"within the site's grid limits (short by {short:.3g} kWh)"
            )
    for b in p.batteries:
        if b.terminal_soc_kwh is not None and pyo.value(m.s_term[b.name]) > _SLACK_TOL:
            out.append(
                f"battery {b.name} cannot reach {b.terminal_soc_kwh:g} kWh by {p.slot_label(p.slots)} "
                f"within the site's grid limits (short by {pyo.value(m.s_term[b.name]):.3g} kWh)"
            )
    if p.shared is not None:
        w = worst(m.s_sh_imp, list(range(p.slots)))
        if w:
            out.append(
                f"the sites need {p.shared.import_limit_kw + w[1]:.3g} kW together at {p.slot_label(w[0])} "
                f"but the shared connection's import limit is {p.shared.import_limit_kw:g} kW"
            )
        w = worst(m.s_sh_exp, list(range(p.slots)))
        if w:
            out.append(
                f"the sites must export {p.shared.export_limit_kw + w[1]:.3g} kW together at {p.slot_label(w[0])} "
                f"but the shared connection's export limit is {p.shared.export_limit_kw:g} kW"
            )
    return out or ["the inputs admit no schedule (no single constraint family could be named)"]


def _read(
    p: Problem, get: Callable[[str, str, int], float], obj: float, build_s: float, solve_s: float, gap: float, ok: bool
) -> Plan:
    T = range(p.slots)

    def series(kind: str, name: str) -> tuple[float, ...]:
        return tuple(_clean(get(kind, name, t)) for t in T)

    bats = {
        b.name: BatterySchedule(series("ch", b.name), series("dis", b.name), series("soc", b.name)) for b in p.batteries
    }
    pvs = {}
    for a in p.pv:
        used = series("pv", a.name)
        pvs[a.name] = PvSchedule(used, tuple(_clean(f - u) for f, u in zip(a.forecast_kw, used, strict=True)))
    evs = {e.name: series("ev", e.name) for e in p.evs}
    fls = {f.name: series("flex", f.name) for f in p.flexible_loads}
    grid = {}
    for s in p.sites:
        imp = series("imp", s.name)
        grid[s.name] = GridSchedule(imp, series("exp", s.name), max(imp))
    expected = outcome(
        p,
        {k: list(g.import_kw) for k, g in grid.items()},
        {k: list(g.export_kw) for k, g in grid.items()},
        {k: SLOT_H * (sum(b.charge_kw) + sum(b.discharge_kw)) for k, b in bats.items()},
        {k: b.soc_kwh[-1] for k, b in bats.items()},
    )
    return Plan(
        objective=obj,
        expected=expected,
        baseline=baseline(p),
        batteries=bats,
        pv=pvs,
        evs=evs,
        flexible_loads=fls,
        grid=grid,
        build_s=build_s,
        solve_s=solve_s,
        mip_gap=gap,
        optimal=ok,
        solver="HiGHS",
        solver_version=solver_version(),
    )


def _clean(x: float | None) -> float:
    # HiGHS leaves -1e-12 and the like where the answer is 0; a schedule shows 0.
    v = float(x or 0.0)
    return 0.0 if abs(v) < 1e-9 else v


__all__ = ["Outcome", "explain", "solve", "solve_pyomo", "solver_version"]
