"""Conflicts found before any solve: one asset's own limits that cannot meet its own target.

HiGHS can only say "infeasible"; these checks name the asset and the numbers, in plain words. What
only the whole model can show (a connection limit against a load) is named by the elastic re-solve
in solve.py.
"""

from __future__ import annotations

from services.optimizer.inputs import SLOT_H, Problem

_EPS = 1e-9


def precheck(p: Problem) -> list[str]:
    """Every conflict an asset has with itself; empty when none."""
    out: list[str] = []
    for ev in p.evs:
        most = ev.max_kw * (ev.departure_slot - ev.arrival_slot) * SLOT_H
        if ev.energy_kwh > most + _EPS:
            out.append(
                f"EV {ev.name} cannot reach {ev.energy_kwh:g} kWh by {p.slot_label(ev.departure_slot)} "
                f"with {ev.max_kw:g} kW (at most {most:g} kWh from {p.slot_label(ev.arrival_slot)})"
            )
    for fl in p.flexible_loads:
        most = fl.max_kw * (fl.window_end_slot - fl.window_start_slot) * SLOT_H
        if fl.energy_kwh > most + _EPS:
            out.append(
                f"flexible load {fl.name} cannot consume {fl.energy_kwh:g} kWh between "
                f"{p.slot_label(fl.window_start_slot)} and {p.slot_label(fl.window_end_slot)} "
                f"at {fl.max_kw:g} kW (at most {most:g} kWh)"
            )
    for b in p.batteries:
        if b.terminal_soc_kwh is None:
            continue
        top = b.capacity_kwh if b.max_soc_kwh is None else b.max_soc_kwh
        reach = min(top, b.soc_kwh + b.charge_efficiency * b.max_charge_kw * p.slots * SLOT_H)
        if b.terminal_soc_kwh > reach + _EPS:
            out.append(
                f"battery {b.name} cannot reach {b.terminal_soc_kwh:g} kWh by {p.slot_label(p.slots)} "
                f"from {b.soc_kwh:g} kWh (at most {reach:g} kWh with {b.max_charge_kw:g} kW and max SoC {top:g} kWh)"
            )
    return out
