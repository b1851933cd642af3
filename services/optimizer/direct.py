"""The same model as model.py, built directly as HiGHS arrays (highspy) and solved with lazy binaries.

Why: for a community of 100 assets pyomo takes ~0.5 s to build the model and its HiGHS interface ~3 s
to hand it over, against ~1 s for HiGHS to solve it (docs/optimizer.md has the numbers). Here the
rows are collected in Python lists and passed to HiGHS once.

Lazy binaries: the model is first solved without the binaries that forbid charging and discharging
a battery at once, importing and exporting at once, and an EV charging below its minimum power. That
relaxation's optimum is a lower bound; if it breaks none of those rules it is feasible for the full
model, hence optimal for it. Otherwise binaries are added for exactly the slots that broke a rule and
it is solved again (now as a MIP), until no rule is broken; each round is still a relaxation of the
full model, so the last one's bound and gap hold for it. tests/services/optimizer check that this and
the pyomo model (all binaries from the start) reach the same objective.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import highspy
import numpy as np

from services.optimizer.inputs import SELF_CONSUMPTION_COST_WEIGHT, SLOT_H, Objective, Problem

INF = highspy.kHighsInf
# A flow below this (kW) counts as zero when checking the relaxation's answer.
_TOL = 1e-6
_MAX_ROUNDS = 50
# Up to this many EV binaries the minimum power is solved exactly; beyond, each EV's slots are rounded
# (_round_evs) because branching on hundreds of them over a large LP takes seconds to
# minutes. The gap to the first relaxation's bound is then reported as the plan's MIP gap.
EXACT_EV_BINARIES = 16


@dataclass
class _Arrays:
    cost: list[float] = field(default_factory=list)
    lower: list[float] = field(default_factory=list)
    upper: list[float] = field(default_factory=list)
    row_lower: list[float] = field(default_factory=list)
    row_upper: list[float] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    index: list[int] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    offset: float = 0.0

    def col(self, lower: float, upper: float, cost: float = 0.0) -> int:
        self.cost.append(cost)
        self.lower.append(lower)
        self.upper.append(upper)
        return len(self.cost) - 1

    def row(self, terms: list[tuple[int, float]], lower: float, upper: float) -> None:
        self.starts.append(len(self.index))
        for c, v in terms:
            self.index.append(c)
            self.value.append(v)
        self.row_lower.append(lower)
        self.row_upper.append(upper)


@dataclass
class Built:
    """A model handed to HiGHS, with where each variable of the plan lives."""

    highs: highspy.Highs
    cols: dict[tuple[str, str, int], int]  # (kind, name, slot) -> column
    limits: dict[tuple[str, str], tuple[float, float]]  # upper bounds the lazy rows need
    binaries: set[tuple[str, str, int]] = field(default_factory=set)


def build_direct(p: Problem) -> Built:
    """The model of `p` (without its lazy binaries) in a HiGHS instance."""
    n = p.slots
    a = _Arrays()
    cols: dict[tuple[str, str, int], int] = {}
    limits: dict[tuple[str, str], tuple[float, float]] = {}
    ci = p.prices.carbon_kg_per_kwh or (0.0,) * n
    # Cost weight and the extra per-kWh weight of imports, by objective (as in model.py).
    w = SELF_CONSUMPTION_COST_WEIGHT if p.objective is Objective.SELF_CONSUMPTION else 1.0
    extra = [0.0] * n
    if p.objective is Objective.COST_AND_CARBON:
        extra = [p.prices.carbon_eur_per_kg * ci[t] for t in range(n)]
    elif p.objective is Objective.SELF_CONSUMPTION:
        extra = [1.0] * n

    for s in p.sites:
        limits[("grid", s.name)] = (s.import_limit_kw, s.export_limit_kw)
        for t in range(n):
            cols["imp", s.name, t] = a.col(
                0.0, s.import_limit_kw, SLOT_H * (w * p.prices.import_eur_per_kwh(t) + extra[t])
            )
            cols["exp", s.name, t] = a.col(0.0, s.export_limit_kw, -SLOT_H * w * p.prices.feed_in_eur_per_kwh[t])
    for b in p.batteries:
        limits[("bat", b.name)] = (b.max_charge_kw, b.max_discharge_kw)
        top = max(b.capacity_kwh if b.max_soc_kwh is None else b.max_soc_kwh, b.soc_kwh)
        floor = min(max(b.min_soc_kwh, b.reserve_kwh), b.soc_kwh)
        deg = SLOT_H * w * b.degradation_eur_per_kwh
        for t in range(n):
            ch = cols["ch", b.name, t] = a.col(0.0, b.max_charge_kw, deg)
            dis = cols["dis", b.name, t] = a.col(0.0, b.max_discharge_kw, deg)
            last = t == n - 1
            low = max(floor, b.terminal_soc_kwh or 0.0) if last else floor
            soc = cols["soc", b.name, t] = a.col(low, top, -w * b.stored_value_eur_per_kwh if last else 0.0)
            terms = [(soc, 1.0), (ch, -SLOT_H * b.charge_efficiency), (dis, SLOT_H / b.discharge_efficiency)]
            rhs = b.soc_kwh
            if t > 0:
                terms.append((cols["soc", b.name, t - 1], -1.0))
                rhs = 0.0
            a.row(terms, rhs, rhs)
    for pv in p.pv:
        for t in range(n):
            f = pv.forecast_kw[t]
            cols["pv", pv.name, t] = a.col(0.0 if pv.curtailable else f, f)
    for ev in p.evs:
        limits[("ev", ev.name)] = (ev.min_kw, ev.max_kw)
        for t in range(ev.arrival_slot, ev.departure_slot):
            cols["ev", ev.name, t] = a.col(0.0, ev.max_kw)
        a.row([(cols["ev", ev.name, t], SLOT_H) for t in range(ev.arrival_slot, ev.departure_slot)], ev.energy_kwh, INF)
    for fl in p.flexible_loads:
        for t in range(fl.window_start_slot, fl.window_end_slot):
            cols["flex", fl.name, t] = a.col(0.0, fl.max_kw)
        span = range(fl.window_start_slot, fl.window_end_slot)
        a.row([(cols["flex", fl.name, t], SLOT_H) for t in span], fl.energy_kwh, fl.energy_kwh)

    at: dict[str, list[tuple[str, str, float]]] = {s.name: [] for s in p.sites}
    for b in p.batteries:
        at[b.site] += [("dis", b.name, 1.0), ("ch", b.name, -1.0)]
    for pv in p.pv:
        at[pv.site].append(("pv", pv.name, 1.0))
    for ev in p.evs:
        at[ev.site].append(("ev", ev.name, -1.0))
    for fl in p.flexible_loads:
        at[fl.site].append(("flex", fl.name, -1.0))
    for s in p.sites:
        for t in range(n):
            terms = [(cols["imp", s.name, t], 1.0), (cols["exp", s.name, t], -1.0)]
            terms += [(cols[k, x, t], sign) for k, x, sign in at[s.name] if (k, x, t) in cols]
            a.row(terms, s.load_kw[t], s.load_kw[t])
        if s.peak_eur_per_kw > 0:
            peak = a.col(s.billed_peak_kw, INF, w * s.peak_eur_per_kw)
            a.offset -= w * s.peak_eur_per_kw * s.billed_peak_kw
            for t in range(n):
                a.row([(peak, 1.0), (cols["imp", s.name, t], -1.0)], 0.0, INF)
    sh = p.shared
    if sh is not None:
        peak = a.col(sh.billed_peak_kw, INF, w * sh.peak_eur_per_kw) if sh.peak_eur_per_kw > 0 else -1
        a.offset -= w * sh.peak_eur_per_kw * sh.billed_peak_kw if peak >= 0 else 0.0
        for t in range(n):
            net = [(cols["imp", s.name, t], 1.0) for s in p.sites] + [(cols["exp", s.name, t], -1.0) for s in p.sites]
            a.row(net, -sh.export_limit_kw, sh.import_limit_kw)
            if peak >= 0:
                a.row([(peak, 1.0)] + [(c, -v) for c, v in net], 0.0, INF)

    h = highspy.Highs()  # type: ignore[no-untyped-call]  # highspy's constructor carries no annotations
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    h.setOptionValue("time_limit", p.time_limit_s)
    h.setOptionValue("mip_rel_gap", p.mip_gap)
    h.addCols(
        len(a.cost),
        np.array(a.cost),
        np.array(a.lower),
        np.array(a.upper),
        0,
        np.zeros(0, np.int32),
        np.zeros(0, np.int32),
        np.zeros(0),
    )
    h.addRows(
        len(a.row_lower),
        np.array(a.row_lower),
        np.array(a.row_upper),
        len(a.index),
        np.array(a.starts, dtype=np.int32),
        np.array(a.index, dtype=np.int32),
        np.array(a.value),
    )
    h.changeObjectiveOffset(a.offset)
    return Built(h, cols, limits)


@dataclass(frozen=True)
class DirectResult:
    values: dict[tuple[str, str, int], float]
    objective: float
    mip_gap: float
    optimal: bool
    rounds: int  # solves: 1 when the relaxation already kept every rule
    binaries: int  # binaries added lazily
    rounded_evs: int  # EVs whose charging slots were rounded instead of branched on


class DirectInfeasible(Exception):
    """HiGHS found no schedule (solve.py names the conflict with the elastic pyomo model)."""


class DirectNoPlan(Exception):
    """HiGHS ended without a usable plan (time limit before any, unbounded, an error); says which."""


def _violations(p: Problem, b: Built, x: np.ndarray) -> list[tuple[str, str, int]]:
    cols = b.cols
    out: list[tuple[str, str, int]] = []
    for t in range(p.slots):
        for bat in p.batteries:
            if ("bat", bat.name, t) not in b.binaries and min(
                x[cols["ch", bat.name, t]], x[cols["dis", bat.name, t]]
            ) > _TOL:
                out.append(("bat", bat.name, t))
        for s in p.sites:
            if ("grid", s.name, t) not in b.binaries and min(
                x[cols["imp", s.name, t]], x[cols["exp", s.name, t]]
            ) > _TOL:
                out.append(("grid", s.name, t))
    for ev in p.evs:
        if ev.min_kw <= 0:
            continue
        for t in range(ev.arrival_slot, ev.departure_slot):
            v = x[cols["ev", ev.name, t]]
            if ("ev", ev.name, t) not in b.binaries and _TOL < v < ev.min_kw - _TOL:
                out.append(("ev", ev.name, t))
    return out


def _add_binary(b: Built, kind: str, name: str, t: int) -> None:
    h, cols = b.highs, b.cols
    u = h.getNumCol()
    h.addCol(0.0, 0.0, 1.0, 0, np.zeros(0, np.int32), np.zeros(0))
    h.changeColIntegrality(u, highspy.HighsVarType.kInteger)
    if kind == "bat":  # u = 1: may charge; u = 0: may discharge
        pc, pd = b.limits["bat", name]
        first, second = cols["ch", name, t], cols["dis", name, t]
        h.addRow(-INF, 0.0, 2, np.array([first, u], np.int32), np.array([1.0, -pc]))
        h.addRow(-INF, pd, 2, np.array([second, u], np.int32), np.array([1.0, pd]))
    elif kind == "grid":  # u = 1: may import; u = 0: may export
        li, le = b.limits["grid", name]
        first, second = cols["imp", name, t], cols["exp", name, t]
        h.addRow(-INF, 0.0, 2, np.array([first, u], np.int32), np.array([1.0, -li]))
        h.addRow(-INF, le, 2, np.array([second, u], np.int32), np.array([1.0, le]))
    else:  # u = 1: charging, between min and max; u = 0: off
        lo, hi = b.limits["ev", name]
        col = cols["ev", name, t]
        h.addRow(0.0, INF, 2, np.array([col, u], np.int32), np.array([1.0, -lo]))
        h.addRow(-INF, 0.0, 2, np.array([col, u], np.int32), np.array([1.0, -hi]))
    b.binaries.add((kind, name, t))


def _round_evs(p: Problem, b: Built, x: np.ndarray, evs: set[str]) -> None:
    """Fix each EV's charging slots: the ones the relaxation used most, until at full power they hold
    its energy, at least its minimum power; every other slot off. The LP then places the energy."""
    h = b.highs
    for ev in p.evs:
        if ev.name not in evs:
            continue
        window = list(range(ev.arrival_slot, ev.departure_slot))
        ranked = sorted(window, key=lambda t: (-x[b.cols["ev", ev.name, t]], t))
        # Fewest slots that can hold the energy at full power; more (as many as the relaxation used)
        # while charging all of them at minimum power would not overshoot, to leave the LP room.
        fewest = math.ceil(ev.energy_kwh / (ev.max_kw * SLOT_H) - 1e-9)
        used = sum(1 for t in window if x[b.cols["ev", ev.name, t]] > _TOL)
        room = math.floor(ev.energy_kwh / (ev.min_kw * SLOT_H) + 1e-9)
        on = set(ranked[: max(fewest, min(used, room))])
        for t in window:
            col = b.cols["ev", ev.name, t]
            if t in on:
                h.changeColBounds(col, ev.min_kw, ev.max_kw)
            else:
                h.changeColBounds(col, 0.0, 0.0)


def site_parts(p: Problem) -> list[Problem]:
    """`p` as one problem per site when nothing couples its sites, else [p].

    Without a shared connection every constraint and every cost term belongs to one site, so the
    sites' own optima together are the optimum of `p`. Solving them apart is what keeps a run of
    several sites fast once binaries are needed: HiGHS' branch and bound works on the whole tree at
    once and does not notice that the sites are independent. Ten sites of a battery and PV each over
    96 slots, with a feed-in tariff above the import price in some slots, took 3.8-5.6 s apart and hit
    the 10 s limit together on session 20's machine (bench.optimizer's "independent" case,
    docs/performance.md); tests/services/optimizer/test_site_parts.py checks the optimum."""
    if p.shared is not None or len(p.sites) < 2:
        return [p]
    return [
        replace(
            p,
            sites=(site,),
            batteries=tuple(x for x in p.batteries if x.site == site.name),
            pv=tuple(x for x in p.pv if x.site == site.name),
            evs=tuple(x for x in p.evs if x.site == site.name),
            flexible_loads=tuple(x for x in p.flexible_loads if x.site == site.name),
        )
        for site in p.sites
    ]


def solve_direct(p: Problem) -> tuple[DirectResult, float]:
    """`p` built and solved site by site where its sites are independent (site_parts), within its one
    time limit: each part may use an equal share of what is left when it starts, so a part that
    finishes early leaves its time to the rest. The result and the seconds spent building."""
    deadline = time.monotonic() + p.time_limit_s
    parts = site_parts(p)
    build_s = 0.0
    results: list[DirectResult] = []
    for i, part in enumerate(parts):
        if len(parts) > 1:
            share = (deadline - time.monotonic()) / (len(parts) - i)
            part = replace(part, time_limit_s=min(3600.0, max(0.01, share)))
        started = time.perf_counter()
        built = build_direct(part)
        build_s += time.perf_counter() - started
        results.append(solve_built(part, built))
    return (results[0] if len(results) == 1 else _merged(results)), build_s


def _merged(results: list[DirectResult]) -> DirectResult:
    """Independent parts' results as one: objectives add up, and so do the gaps in money."""
    objective = sum(r.objective for r in results)
    gap_eur = sum(r.mip_gap * max(1e-9, abs(r.objective)) for r in results)
    values: dict[tuple[str, str, int], float] = {}
    for r in results:
        values.update(r.values)
    return DirectResult(
        values,
        objective,
        gap_eur / max(1e-9, abs(objective)) if gap_eur else 0.0,
        all(r.optimal for r in results),
        max(r.rounds for r in results),
        sum(r.binaries for r in results),
        sum(r.rounded_evs for r in results),
    )


def solve_built(p: Problem, b: Built) -> DirectResult:
    """Solve, adding binaries where the answer breaks a rule, until it breaks none."""
    h = b.highs
    deadline = time.monotonic() + p.time_limit_s
    bound: float | None = None  # the first relaxation's objective, when later rounds are not exact
    first_bound = 0.0
    rounded: set[str] = set()
    for rounds in range(1, _MAX_ROUNDS + 1):
        h.setOptionValue("time_limit", max(0.01, deadline - time.monotonic()))
        h.run()
        status = h.getModelStatus()
        if status in (highspy.HighsModelStatus.kInfeasible, highspy.HighsModelStatus.kUnboundedOrInfeasible):
            if rounded:  # the rounding, not the inputs, may be what is infeasible
                raise DirectNoPlan("no plan with the EVs' charging slots rounded to their minimum power")
            raise DirectInfeasible()
        info = h.getInfo()
        has_solution = info.primal_solution_status == 2  # kSolutionStatusFeasible
        if status != highspy.HighsModelStatus.kOptimal and not (
            status == highspy.HighsModelStatus.kTimeLimit and has_solution and b.binaries
        ):
            raise DirectNoPlan(h.modelStatusToString(status))
        if rounds == 1:
            first_bound = float(info.objective_function_value)
        x = np.asarray(h.getSolution().col_value)
        found = _violations(p, b, x)
        if not found or status != highspy.HighsModelStatus.kOptimal:
            if found:  # out of time with rules broken: no plan an edge could follow
                raise DirectNoPlan("time limit reached before a plan that keeps every rule")
            obj = float(info.objective_function_value)
            gap = float(info.mip_gap) if b.binaries else 0.0
            gap = gap if np.isfinite(gap) else 0.0
            if bound is not None:
                gap = max(gap, (obj - bound) / max(1e-9, abs(obj)))
            values = {k: float(x[c]) for k, c in b.cols.items()}
            optimal = status == highspy.HighsModelStatus.kOptimal and bound is None
            return DirectResult(values, obj, gap, optimal, rounds, len(b.binaries), len(rounded))
        ev_found = [v for v in found if v[0] == "ev"]
        ev_binaries = sum(1 for k in b.binaries if k[0] == "ev")
        if ev_found and ev_binaries + len(ev_found) > EXACT_EV_BINARIES:
            names = {name for _, name, _ in ev_found}
            _round_evs(p, b, x, names)
            rounded |= names
            bound = first_bound
            found = [v for v in found if v[0] != "ev"]
        for kind, name, t in found:
            _add_binary(b, kind, name, t)
    raise DirectNoPlan(f"rules still broken after {_MAX_ROUNDS} rounds of binaries")
