"""Sites that share no connection are solved one by one (direct.site_parts), with the same optimum as
the whole model; the limits that keep a run from pinning the CPU (assets, time) hold."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from services.optimizer.direct import site_parts
from services.optimizer.errors import OptimizerInputError, SolverError
from services.optimizer.inputs import (
    MAX_ASSETS,
    Battery,
    EvCharger,
    FlexibleLoad,
    Prices,
    Problem,
    PvArray,
    SharedConnection,
    Site,
)
from services.optimizer.solve import solve, solve_pyomo

START = datetime(2026, 1, 1, tzinfo=UTC)


def _arbitrage_day(sites: int, slots: int = 96, shared: SharedConnection | None = None) -> Problem:
    """Sites with a battery and PV each, and a fixed feed-in price of 0.05 EUR/kWh above the market's
    import price in a third of the slots (0.02-0.18): there importing and exporting at once would pay,
    so the plan needs binaries to keep each meter to one direction."""
    market = tuple(0.1 + 0.08 * math.sin(t / 12) for t in range(slots))
    names = [f"s{i}" for i in range(sites)]
    return Problem(
        START,
        slots,
        Prices(market, (0.05,) * slots),
        tuple(
            Site(n, tuple(1.0 + 0.5 * math.sin(t / 7 + i) for t in range(slots)), 50, 50) for i, n in enumerate(names)
        ),
        batteries=tuple(Battery(f"b{i}", n, 10, 5, 4, 4) for i, n in enumerate(names)),
        pv=tuple(
            PvArray(f"p{i}", n, tuple(max(0.0, 5 * math.sin((t % 96 - 24) / 48 * math.pi)) for t in range(slots)))
            for i, n in enumerate(names)
        ),
        shared=shared,
    )


def test_independent_sites_reach_the_optimum_of_the_whole_model() -> None:
    p = _arbitrage_day(3)
    apart, whole = solve(p), solve_pyomo(p)  # pyomo: one model, every binary from the start
    assert apart.optimal and whole.optimal
    assert apart.objective == pytest.approx(whole.objective, rel=1e-6, abs=1e-6)
    assert apart.expected.cost_eur == pytest.approx(whole.expected.cost_eur, rel=1e-6, abs=1e-6)
    assert set(apart.batteries) == {"b0", "b1", "b2"} and set(apart.grid) == {"s0", "s1", "s2"}
    # Each site alone gives its share of the objective: the parts are the sites.
    alone = [solve(part) for part in site_parts(p)]
    assert sum(plan.objective for plan in alone) == pytest.approx(apart.objective, rel=1e-9, abs=1e-9)
    for plan in alone:
        (site,) = plan.grid
        assert apart.grid[site] == plan.grid[site]
    # No slot imports and exports at once, where the prices would reward it.
    for grid in apart.grid.values():
        assert all(min(i, e) < 1e-6 for i, e in zip(grid.import_kw, grid.export_kw, strict=True))


def test_each_part_holds_its_own_sites_assets_and_a_shared_connection_keeps_one_model() -> None:
    p = Problem(
        START,
        4,
        Prices((0.1,) * 4, (0.0,) * 4),
        (Site("a", (1.0,) * 4, 10, 10), Site("b", (2.0,) * 4, 10, 10)),
        batteries=(Battery("bat_b", "b", 5, 1, 2, 2),),
        pv=(PvArray("pv_a", "a", (1.0,) * 4),),
        evs=(EvCharger("ev_b", "b", 1.0, 0, 4, 11.0),),
        flexible_loads=(FlexibleLoad("pump_a", "a", 1.0, 0, 4, 2.0),),
    )
    parts = site_parts(p)
    assert [[s.name for s in part.sites] for part in parts] == [["a"], ["b"]]
    assert (parts[0].pv, parts[0].flexible_loads, parts[0].batteries, parts[0].evs) == (p.pv, p.flexible_loads, (), ())
    assert (parts[1].batteries, parts[1].evs, parts[1].pv, parts[1].flexible_loads) == (p.batteries, p.evs, (), ())
    assert all(part.prices == p.prices and part.time_limit_s == p.time_limit_s for part in parts)
    coupled = Problem(p.start, p.slots, p.prices, p.sites, batteries=p.batteries, shared=SharedConnection(5, 5))
    assert site_parts(coupled) == [coupled]
    one = Problem(p.start, p.slots, p.prices, p.sites[:1])
    assert site_parts(one) == [one]


def test_a_time_limit_too_short_for_the_problem_is_a_named_solver_error() -> None:
    # 40 sites behind one connection over three days: one model, which HiGHS cannot even relax in 10 ms.
    p = _arbitrage_day(40, slots=288, shared=SharedConnection(300, 300))
    p = Problem(p.start, p.slots, p.prices, p.sites, batteries=p.batteries, pv=p.pv, shared=p.shared, time_limit_s=0.01)
    with pytest.raises(SolverError, match="HiGHS gave no usable plan: Time limit reached"):
        solve(p)


def test_more_assets_than_the_cap_are_refused_naming_the_field() -> None:
    sites = (Site("s", (0.0,), 100, 100),)
    prices = Prices((0.1,), (0.0,))
    at_cap = tuple(Battery(f"b{i}", "s", 1, 0, 1, 1) for i in range(MAX_ASSETS))
    Problem(START, 1, prices, sites, batteries=at_cap)  # exactly the cap is accepted
    with pytest.raises(OptimizerInputError) as refused:
        Problem(START, 1, prices, sites, batteries=at_cap, pv=(PvArray("one_more", "s", (0.0,)),))
    assert refused.value.field == "assets"
    assert refused.value.message == f"at most {MAX_ASSETS} assets, got {MAX_ASSETS + 1}"
