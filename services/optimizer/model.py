"""The optimizer's model as pyomo: a site or a community over 15-minute slots (docs/optimizer.md).

Pure: builds a ConcreteModel from a Problem and nothing else. Variables are in kW (average power over
a slot) and kWh (battery state of charge at the end of a slot); one slot is SLOT_H = 0.25 h.

With `elastic=True` the limits that can clash with each other (connection limits, EV and flexible
energy, terminal SoC) get non-negative slack variables and the objective becomes their sum: solved,
it says which constraint families an infeasible problem cannot satisfy (solve.py explains them).
"""

from __future__ import annotations

from typing import Any

import pyomo.environ as pyo  # type: ignore[import-untyped]  # pyomo ships no type information

from services.optimizer.inputs import SELF_CONSUMPTION_COST_WEIGHT, SLOT_H, Objective, Problem


def _top(max_soc: float | None, capacity: float) -> float:
    return capacity if max_soc is None else max_soc


def build(p: Problem, *, elastic: bool = False) -> Any:
    """The pyomo model of `p` (a ConcreteModel)."""
    n = p.slots
    T = range(n)
    m = pyo.ConcreteModel(name="emma_optimizer")
    m.T = pyo.Set(initialize=T, ordered=True)
    sites = [s.name for s in p.sites]
    m.S = pyo.Set(initialize=sites, ordered=True)
    ip = [p.prices.import_eur_per_kwh(t) for t in T]
    ep = list(p.prices.feed_in_eur_per_kwh)
    m.import_price = ip
    m.export_price = ep

    def slack(name: str, index: list[Any]) -> Any:
        # A zero-fixed variable when not elastic keeps every constraint's form the same in both modes.
        v = pyo.Var(index, domain=pyo.NonNegativeReals, initialize=0.0)
        m.add_component(name, v)
        if not elastic:
            for k in v:
                v[k].fix(0.0)
        return v

    # Grid exchange per site; a binary forbids importing and exporting in one slot only where the
    # prices would reward it (import cheaper than export); elsewhere it can never pay off.
    lim_i = {s.name: s.import_limit_kw for s in p.sites}
    lim_e = {s.name: s.export_limit_kw for s in p.sites}
    m.imp = pyo.Var(m.S, m.T, domain=pyo.NonNegativeReals)
    m.exp = pyo.Var(m.S, m.T, domain=pyo.NonNegativeReals)
    m.s_imp = slack("s_imp", [(s, t) for s in sites for t in T])
    m.s_exp = slack("s_exp", [(s, t) for s in sites for t in T])
    m.imp_limit = pyo.Constraint(m.S, m.T, rule=lambda m, s, t: m.imp[s, t] <= lim_i[s] + m.s_imp[s, t])
    m.exp_limit = pyo.Constraint(m.S, m.T, rule=lambda m, s, t: m.exp[s, t] <= lim_e[s] + m.s_exp[s, t])
    arb = [(s, t) for s in sites for t in T if ip[t] < ep[t]]
    m.grid_dir = pyo.Var(arb, domain=pyo.Binary)
    # In the elastic model direction does not matter: it only asks which limits cannot hold.
    dir_idx = [] if elastic else arb
    m.grid_dir_i = pyo.Constraint(dir_idx, rule=lambda m, s, t: m.imp[s, t] <= lim_i[s] * m.grid_dir[s, t])
    m.grid_dir_e = pyo.Constraint(dir_idx, rule=lambda m, s, t: m.exp[s, t] <= lim_e[s] * (1 - m.grid_dir[s, t]))

    # Batteries: SoC at the end of each slot; a binary per slot forbids charging and discharging at once.
    bats = {b.name: b for b in p.batteries}
    m.B = pyo.Set(initialize=list(bats), ordered=True)
    m.ch = pyo.Var(m.B, m.T, domain=pyo.NonNegativeReals, bounds=lambda m, b, t: (0.0, bats[b].max_charge_kw))
    m.dis = pyo.Var(m.B, m.T, domain=pyo.NonNegativeReals, bounds=lambda m, b, t: (0.0, bats[b].max_discharge_kw))

    def soc_bounds(m: Any, b: str, t: int) -> tuple[float, float]:
        bat = bats[b]
        # A battery that starts below its floor may not fall further, rather than making the plan infeasible.
        floor = min(max(bat.min_soc_kwh, bat.reserve_kwh), bat.soc_kwh)
        return (floor, max(_top(bat.max_soc_kwh, bat.capacity_kwh), bat.soc_kwh))

    m.soc = pyo.Var(m.B, m.T, bounds=soc_bounds)
    m.charging = pyo.Var(m.B, m.T, domain=pyo.Binary)

    def soc_rule(m: Any, b: str, t: int) -> Any:
        bat = bats[b]
        before = bat.soc_kwh if t == 0 else m.soc[b, t - 1]
        return m.soc[b, t] == before + SLOT_H * (
            bat.charge_efficiency * m.ch[b, t] - m.dis[b, t] / bat.discharge_efficiency
        )

    m.soc_dyn = pyo.Constraint(m.B, m.T, rule=soc_rule)
    m.ch_mode = pyo.Constraint(m.B, m.T, rule=lambda m, b, t: m.ch[b, t] <= bats[b].max_charge_kw * m.charging[b, t])
    m.dis_mode = pyo.Constraint(
        m.B, m.T, rule=lambda m, b, t: m.dis[b, t] <= bats[b].max_discharge_kw * (1 - m.charging[b, t])
    )
    term = [b.name for b in p.batteries if b.terminal_soc_kwh is not None]
    m.s_term = slack("s_term", term)
    m.terminal = pyo.Constraint(
        term, rule=lambda m, b: m.soc[b, n - 1] + m.s_term[b] >= float(bats[b].terminal_soc_kwh or 0.0)
    )

    # PV: used power up to the forecast (curtailable) or exactly the forecast.
    pvs = {a.name: a for a in p.pv}
    m.P = pyo.Set(initialize=list(pvs), ordered=True)
    m.pv = pyo.Var(m.P, m.T, bounds=lambda m, a, t: (0.0, pvs[a].forecast_kw[t]))
    for a in pvs.values():
        if not a.curtailable:
            for t in T:
                m.pv[a.name, t].fix(a.forecast_kw[t])

    # EVs: power only while plugged in; energy by departure; at least min_kw when charging at all.
    evs = {e.name: e for e in p.evs}
    ev_idx = [(e.name, t) for e in p.evs for t in range(e.arrival_slot, e.departure_slot)]
    m.ev = pyo.Var(ev_idx, bounds=lambda m, e, t: (0.0, evs[e].max_kw))
    semi = [(e, t) for e, t in ev_idx if evs[e].min_kw > 0]
    m.ev_on = pyo.Var(semi, domain=pyo.Binary)
    m.ev_min = pyo.Constraint(semi, rule=lambda m, e, t: m.ev[e, t] >= evs[e].min_kw * m.ev_on[e, t])
    m.ev_max = pyo.Constraint(semi, rule=lambda m, e, t: m.ev[e, t] <= evs[e].max_kw * m.ev_on[e, t])
    m.s_ev = slack("s_ev", list(evs))
    by_ev: dict[str, list[int]] = {e: [] for e in evs}
    for e, t in ev_idx:
        by_ev[e].append(t)
    m.ev_energy = pyo.Constraint(
        list(evs), rule=lambda m, e: SLOT_H * sum(m.ev[e, t] for t in by_ev[e]) + m.s_ev[e] >= evs[e].energy_kwh
    )

    # Flexible loads: exactly their energy within their window.
    fls = {f.name: f for f in p.flexible_loads}
    fl_idx = [(f.name, t) for f in p.flexible_loads for t in range(f.window_start_slot, f.window_end_slot)]
    m.flex = pyo.Var(fl_idx, bounds=lambda m, f, t: (0.0, fls[f].max_kw))
    m.s_flex = slack("s_flex", list(fls))
    by_fl: dict[str, list[int]] = {f: [] for f in fls}
    for f, t in fl_idx:
        by_fl[f].append(t)
    m.flex_energy = pyo.Constraint(
        list(fls), rule=lambda m, f: SLOT_H * sum(m.flex[f, t] for t in by_fl[f]) + m.s_flex[f] == fls[f].energy_kwh
    )

    # Power balance per site and slot: what comes in equals what goes out.
    at: dict[str, dict[str, list[str]]] = {s: {"b": [], "p": [], "e": [], "f": []} for s in sites}
    for b in p.batteries:
        at[b.site]["b"].append(b.name)
    for a in p.pv:
        at[a.site]["p"].append(a.name)
    for charger in p.evs:
        at[charger.site]["e"].append(charger.name)
    for flexible in p.flexible_loads:
        at[flexible.site]["f"].append(flexible.name)
    load = {s.name: s.load_kw for s in p.sites}
    ev_set = set(ev_idx)
    fl_set = set(fl_idx)

    def balance(m: Any, s: str, t: int) -> Any:
        a = at[s]
        supply = m.imp[s, t] + sum(m.pv[x, t] for x in a["p"]) + sum(m.dis[x, t] for x in a["b"])
        demand = (
            m.exp[s, t]
            + sum(m.ch[x, t] for x in a["b"])
            + sum(m.ev[x, t] for x in a["e"] if (x, t) in ev_set)
            + sum(m.flex[x, t] for x in a["f"] if (x, t) in fl_set)
        )
        return supply == demand + load[s][t]

    m.balance = pyo.Constraint(m.S, m.T, rule=balance)

    # Peaks: the highest 15-minute import, charged above what this billing period already reached.
    m.peak = pyo.Var(m.S, bounds=lambda m, s: (next(x.billed_peak_kw for x in p.sites if x.name == s), None))
    m.peak_def = pyo.Constraint(m.S, m.T, rule=lambda m, s, t: m.peak[s] >= m.imp[s, t])

    sh = p.shared
    if sh is not None:
        m.s_sh_imp = slack("s_sh_imp", list(T))
        m.s_sh_exp = slack("s_sh_exp", list(T))
        net = {t: sum(m.imp[s, t] - m.exp[s, t] for s in sites) for t in T}
        m.shared_imp = pyo.Constraint(m.T, rule=lambda m, t: net[t] <= sh.import_limit_kw + m.s_sh_imp[t])
        m.shared_exp = pyo.Constraint(m.T, rule=lambda m, t: -net[t] <= sh.export_limit_kw + m.s_sh_exp[t])
        m.shared_peak = pyo.Var(bounds=(sh.billed_peak_kw, None))
        m.shared_peak_def = pyo.Constraint(m.T, rule=lambda m, t: m.shared_peak >= net[t])

    # Objective terms (EUR, kg CO2, kWh), kept as expressions so results can read them back.
    m.energy_eur = pyo.Expression(
        expr=SLOT_H * sum(ip[t] * m.imp[s, t] - ep[t] * m.exp[s, t] for s in sites for t in T)
    )
    peak_eur = sum(x.peak_eur_per_kw * (m.peak[x.name] - x.billed_peak_kw) for x in p.sites)
    if sh is not None:
        peak_eur = peak_eur + sh.peak_eur_per_kw * (m.shared_peak - sh.billed_peak_kw)
    m.peak_eur = pyo.Expression(expr=peak_eur)
    m.degradation_eur = pyo.Expression(
        expr=SLOT_H * sum(bats[b].degradation_eur_per_kwh * (m.ch[b, t] + m.dis[b, t]) for b in bats for t in T)
    )
    m.stored_value_eur = pyo.Expression(expr=sum(bats[b].stored_value_eur_per_kwh * m.soc[b, n - 1] for b in bats))
    ci = p.prices.carbon_kg_per_kwh or (0.0,) * n
    m.co2_kg = pyo.Expression(expr=SLOT_H * sum(ci[t] * m.imp[s, t] for s in sites for t in T))
    m.import_kwh = pyo.Expression(expr=SLOT_H * sum(m.imp[s, t] for s in sites for t in T))
    cost = m.energy_eur + m.peak_eur + m.degradation_eur - m.stored_value_eur
    if elastic:
        slacks = [m.s_imp, m.s_exp, m.s_term, m.s_ev, m.s_flex] + ([m.s_sh_imp, m.s_sh_exp] if sh else [])
        m.obj = pyo.Objective(expr=sum(v[k] for v in slacks for k in v), sense=pyo.minimize)
    elif p.objective is Objective.COST:
        m.obj = pyo.Objective(expr=cost, sense=pyo.minimize)
    elif p.objective is Objective.COST_AND_CARBON:
        m.obj = pyo.Objective(expr=cost + p.prices.carbon_eur_per_kg * m.co2_kg, sense=pyo.minimize)
    else:
        m.obj = pyo.Objective(expr=m.import_kwh + SELF_CONSUMPTION_COST_WEIGHT * cost, sense=pyo.minimize)
    return m
