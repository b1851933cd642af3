"""The HiGHS-arrays build with lazy binaries (direct.py) and the pyomo build with every binary from the
start (model.py) reach the same objective on a corpus of seeded random communities: negative prices,
EVs with a minimum power, shared connections, peak charges, every objective."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

import pytest

from services.optimizer.errors import InfeasibleError
from services.optimizer.inputs import (
    Battery,
    EvCharger,
    FlexibleLoad,
    Objective,
    Prices,
    Problem,
    PvArray,
    SharedConnection,
    Site,
)
from services.optimizer.solve import solve, solve_pyomo

SLOTS = 24


def case(seed: int) -> Problem:
    rng = random.Random(seed)
    n = SLOTS
    market = tuple(round(0.1 * math.cos(2 * math.pi * t / n) + rng.uniform(-0.15, 0.1), 4) for t in range(n))
    feed_in = tuple(round(min(0.06, m) if rng.random() < 0.8 else rng.uniform(-0.1, 0.2), 4) for m in market)
    objective = rng.choice(list(Objective))
    prices = Prices(
        market,
        feed_in,
        network_eur_per_kwh=rng.choice([0.0, 0.05]),
        tax_eur_per_kwh=rng.choice([0.0, 0.02]),
        vat_rate=rng.choice([0.0, 0.19]),
        carbon_kg_per_kwh=tuple(round(rng.uniform(0.05, 0.6), 3) for _ in range(n)),
        carbon_eur_per_kg=rng.choice([0.0, 0.1]),
    )
    nsites = rng.randint(1, 3)
    sites = tuple(
        Site(
            f"s{i}",
            tuple(round(rng.uniform(0.2, 3.0), 3) for _ in range(n)),
            import_limit_kw=rng.choice([8.0, 15.0]),
            export_limit_kw=rng.choice([3.0, 10.0]),
            peak_eur_per_kw=rng.choice([0.0, 0.5]),
            billed_peak_kw=rng.choice([0.0, 2.0]),
        )
        for i in range(nsites)
    )
    bats = tuple(
        Battery(
            f"b{i}",
            f"s{i % nsites}",
            capacity_kwh=5.0,
            soc_kwh=round(rng.uniform(0.5, 4.5), 2),
            max_charge_kw=3.0,
            max_discharge_kw=3.0,
            charge_efficiency=0.92,
            discharge_efficiency=0.92,
            reserve_kwh=rng.choice([0.0, 1.0]),
            terminal_soc_kwh=rng.choice([None, 2.0]),
            stored_value_eur_per_kwh=rng.choice([0.0, 0.05]),
            degradation_eur_per_kwh=rng.choice([0.0, 0.02]),
        )
        for i in range(rng.randint(1, 3))
    )
    pv = tuple(
        PvArray(
            f"pv{i}",
            f"s{i % nsites}",
            tuple(
                round(max(0.0, rng.uniform(3, 8) * math.sin(math.pi * (t - 4) / 16)), 3) if 4 <= t < 20 else 0.0
                for t in range(n)
            ),
            curtailable=rng.random() < 0.8,
        )
        for i in range(rng.randint(0, 2))
    )
    evs = tuple(
        EvCharger(
            f"ev{i}",
            f"s{i % nsites}",
            round(rng.uniform(1, 6), 2),
            rng.randint(0, 8),
            rng.randint(14, 24),
            7.4,
            rng.choice([0.0, 4.2]),
        )
        for i in range(rng.randint(0, 2))
    )
    flex = tuple(
        FlexibleLoad(f"f{i}", f"s{i % nsites}", round(rng.uniform(0.5, 3), 2), 2, 22, 2.0)
        for i in range(rng.randint(0, 1))
    )
    shared = (
        SharedConnection(rng.choice([6.0, 20.0]), 10.0, rng.choice([0.0, 0.3]))
        if nsites > 1 and rng.random() < 0.7
        else None
    )
    return Problem(datetime(2026, 3, 1, tzinfo=UTC), n, prices, sites, bats, pv, evs, flex, shared, objective)


@pytest.mark.parametrize("seed", range(20))
def test_both_builds_reach_the_same_objective(seed: int) -> None:
    p = case(seed)
    try:
        reference = solve_pyomo(p)
    except InfeasibleError as e:
        expected = e.conflicts
    else:
        expected = []
    if expected:
        with pytest.raises(InfeasibleError) as err:
            solve(p)
        assert err.value.conflicts == expected
        return
    fast = solve(p)
    if fast.optimal:
        assert fast.objective == pytest.approx(reference.objective, rel=1e-6, abs=1e-6)
    else:
        # More EV binaries than EXACT_EV_BINARIES: the EVs' slots were rounded. The plan can be no
        # better than the optimum, and no worse than its reported gap says.
        assert fast.objective >= reference.objective - 1e-6
        assert fast.objective - reference.objective <= fast.mip_gap * abs(fast.objective) + 1e-6
    for b in fast.batteries.values():
        assert all(min(c, d) <= 1e-6 for c, d in zip(b.charge_kw, b.discharge_kw, strict=True))


def test_the_corpus_is_not_trivial() -> None:
    # The corpus must exercise what the lazy binaries are for, or agreement proves little.
    problems = [case(seed) for seed in range(20)]
    assert sum(1 for p in problems if min(p.prices.market_eur_per_kwh) < -0.05) >= 7
    assert sum(1 for p in problems if any(ev.min_kw > 0 for ev in p.evs)) >= 5
    assert sum(1 for p in problems if p.shared is not None) >= 5
    assert {p.objective for p in problems} == set(Objective)
