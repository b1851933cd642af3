"""The baseline a plan is compared with: what the edge's self-consumption controller alone would do.

Per site and slot: batteries absorb PV surplus and cover deficits within their limits; EVs charge at
full power from arrival until full; flexible loads run at full power from the start of their window;
PV is curtailed only where export would exceed the site's limit. Pure and deterministic.
"""

from __future__ import annotations

from services.optimizer.inputs import SLOT_H, Problem
from services.optimizer.plan import Outcome


def baseline(p: Problem) -> Outcome:
    n = p.slots
    soc = {b.name: b.soc_kwh for b in p.batteries}
    imp: dict[str, list[float]] = {s.name: [0.0] * n for s in p.sites}
    exp: dict[str, list[float]] = {s.name: [0.0] * n for s in p.sites}
    throughput = {b.name: 0.0 for b in p.batteries}
    ev_left = {e.name: e.energy_kwh for e in p.evs}
    fl_left = {f.name: f.energy_kwh for f in p.flexible_loads}
    for t in range(n):
        for s in p.sites:
            net = s.load_kw[t] - sum(a.forecast_kw[t] for a in p.pv if a.site == s.name)
            for e in p.evs:
                if e.site == s.name and e.arrival_slot <= t < e.departure_slot and ev_left[e.name] > 0:
                    kw = min(e.max_kw, ev_left[e.name] / SLOT_H)
                    ev_left[e.name] -= kw * SLOT_H
                    net += kw
            for f in p.flexible_loads:
                if f.site == s.name and f.window_start_slot <= t < f.window_end_slot and fl_left[f.name] > 0:
                    kw = min(f.max_kw, fl_left[f.name] / SLOT_H)
                    fl_left[f.name] -= kw * SLOT_H
                    net += kw
            for b in p.batteries:
                if b.site != s.name:
                    continue
                top = b.capacity_kwh if b.max_soc_kwh is None else b.max_soc_kwh
                floor = min(max(b.min_soc_kwh, b.reserve_kwh), b.soc_kwh)
                if net < 0:  # surplus: charge
                    kw = min(-net, b.max_charge_kw, max(0.0, top - soc[b.name]) / (b.charge_efficiency * SLOT_H))
                    soc[b.name] += kw * b.charge_efficiency * SLOT_H
                    net += kw
                elif net > 0:  # deficit: discharge
                    kw = min(net, b.max_discharge_kw, max(0.0, soc[b.name] - floor) * b.discharge_efficiency / SLOT_H)
                    soc[b.name] -= kw / b.discharge_efficiency * SLOT_H
                    net -= kw
                else:
                    kw = 0.0
                throughput[b.name] += kw * SLOT_H
            if net >= 0:
                imp[s.name][t] = net
            else:
                exp[s.name][t] = min(-net, s.export_limit_kw)  # the rest is curtailed
    return outcome(p, imp, exp, throughput, soc)


def outcome(
    p: Problem,
    imp: dict[str, list[float]],
    exp: dict[str, list[float]],
    throughput_kwh: dict[str, float],
    final_soc_kwh: dict[str, float],
) -> Outcome:
    """Money and carbon of given grid flows (kW per slot), battery throughput and final SoC."""
    n = p.slots
    ci = p.prices.carbon_kg_per_kwh or (0.0,) * n
    energy = co2 = imported = exported = peak = 0.0
    for s in p.sites:
        for t in range(n):
            energy += SLOT_H * (
                p.prices.import_eur_per_kwh(t) * imp[s.name][t] - p.prices.feed_in_eur_per_kwh[t] * exp[s.name][t]
            )
            co2 += SLOT_H * ci[t] * imp[s.name][t]
            imported += SLOT_H * imp[s.name][t]
            exported += SLOT_H * exp[s.name][t]
        peak += s.peak_eur_per_kw * max(0.0, max(imp[s.name]) - s.billed_peak_kw)
    if p.shared is not None:
        net = max(sum(imp[s.name][t] - exp[s.name][t] for s in p.sites) for t in range(n))
        peak += p.shared.peak_eur_per_kw * max(0.0, net - p.shared.billed_peak_kw)
    bats = {b.name: b for b in p.batteries}
    return Outcome(
        energy_eur=energy,
        peak_eur=peak,
        degradation_eur=sum(bats[b].degradation_eur_per_kwh * kwh for b, kwh in throughput_kwh.items()),
        stored_value_eur=sum(bats[b].stored_value_eur_per_kwh * kwh for b, kwh in final_soc_kwh.items()),
        co2_kg=co2,
        import_kwh=imported,
        export_kwh=exported,
    )
