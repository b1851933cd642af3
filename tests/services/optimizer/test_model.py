"""Hand-checkable optimizer cases: each expected value is worked out in the test from the inputs."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pyomo.environ as pyo
import pytest
from pyomo.contrib.appsi.solvers import Highs

from services.optimizer.errors import InfeasibleError, OptimizerInputError
from services.optimizer.inputs import (
    SLOT_H,
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
from services.optimizer.model import build
from services.optimizer.plan import Plan
from services.optimizer.solve import solve, solve_pyomo

START = datetime(2026, 1, 1, tzinfo=UTC)
TOL = 1e-6

Engine = Callable[[Problem], Plan]


@pytest.fixture(params=[solve, solve_pyomo], ids=["highs-arrays", "pyomo"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """Every case runs on both builds of the model: HiGHS arrays with lazy binaries, and pyomo."""
    fn: Engine = request.param
    return fn


def prices(market: list[float], feed_in: list[float] | None = None, **kw: float) -> Prices:
    return Prices(tuple(market), tuple(feed_in or [0.0] * len(market)), **kw)


def site(name: str, load: list[float], imp: float = 100.0, exp: float = 100.0, **kw: float) -> Site:
    return Site(name, tuple(load), imp, exp, **kw)


def test_one_battery_charges_cheap_and_discharges_dear(engine: Engine) -> None:
    # 4 kW for two cheap slots at 90 % charge efficiency stores 2 x 4 x 0.25 x 0.9 = 1.8 kWh; the two
    # dear slots need 2 x 4 x 0.25 = 2 kWh, so 0.2 kWh is still imported at 0.30.
    p = Problem(
        START,
        4,
        prices([0.10, 0.10, 0.30, 0.30]),
        (site("s1", [0, 0, 4, 4]),),
        batteries=(Battery("b1", "s1", 10, 0, 4, 4, charge_efficiency=0.9, discharge_efficiency=1.0),),
    )
    plan = engine(p)
    charged_kwh = 2 * 4 * SLOT_H
    stored = charged_kwh * 0.9
    expected = charged_kwh * 0.10 + (2 * 4 * SLOT_H - stored) * 0.30
    assert plan.objective == pytest.approx(expected, abs=TOL)
    assert plan.expected.cost_eur == pytest.approx(expected, abs=TOL)
    assert plan.batteries["b1"].charge_kw == pytest.approx((4, 4, 0, 0), abs=TOL)
    assert SLOT_H * sum(plan.batteries["b1"].discharge_kw) == pytest.approx(stored, abs=TOL)
    # The self-consumption controller alone has no PV to charge from: everything is bought dear.
    assert plan.baseline.cost_eur == pytest.approx(2 * 4 * SLOT_H * 0.30, abs=TOL)
    assert plan.solver == "HiGHS" and plan.optimal and plan.mip_gap <= 1e-6


def _negative_afternoon() -> Problem:
    return Problem(
        START,
        4,
        prices([0.10, -0.20, -0.20, 0.30], [0.05, -0.10, -0.10, 0.05]),
        (site("s1", [1, 1, 1, 1], imp=10, exp=10),),
        batteries=(Battery("b1", "s1", 1, 0, 4, 4, charge_efficiency=0.8, discharge_efficiency=0.8),),
        pv=(PvArray("pv1", "s1", (0, 8, 8, 0)),),
    )


def test_negative_prices_curtail_pv_and_absorb_without_burning_energy(engine: Engine) -> None:
    plan = engine(_negative_afternoon())
    # Slots 1-2 pay 0.20/kWh for importing: all PV is curtailed (using it would mean importing less),
    # nothing is exported (feed-in costs 0.10), the battery fills: 1 kWh / 0.8 = 1.25 kWh bought.
    # Slot 3: the full battery gives 0.8 kWh: 0.25 kWh for the load, 0.55 kWh exported at 0.05.
    expected = 0.25 * 1 * 0.10 + (2 * 0.25 * 1 + 1 / 0.8) * -0.20 - (0.8 - 0.25) * 0.05
    assert plan.objective == pytest.approx(expected, abs=TOL)
    assert plan.pv["pv1"].curtailed_kw == pytest.approx((0, 8, 8, 0), abs=TOL)
    assert plan.grid["s1"].export_kw[1:3] == pytest.approx((0, 0), abs=TOL)
    bat = plan.batteries["b1"]
    assert all(min(c, d) <= TOL for c, d in zip(bat.charge_kw, bat.discharge_kw, strict=True))
    assert bat.soc_kwh[2] == pytest.approx(1.0, abs=TOL)
    # Baseline: slot 0 imports 1 kW; slots 1-2 charge 4 then 1 kW from PV and export the rest (3 and 6 kW)
    # at -0.10; slot 3 covers the load from the battery.
    assert plan.baseline.energy_eur == pytest.approx(0.25 * 0.10 + 0.25 * (3 + 6) * 0.10, abs=TOL)


def test_without_the_binary_an_lp_would_burn_energy_at_negative_prices() -> None:
    # The same model with the charge/discharge binaries relaxed: charging and discharging at once
    # turns imported energy into losses, which negative prices pay for. The MIP must not do this.
    p = _negative_afternoon()
    m = build(p)
    for v in m.component_data_objects(pyo.Var):
        if v.is_binary():
            v.domain = pyo.UnitInterval
    opt = Highs()
    opt.config.load_solution = True
    opt.config.stream_solver = False
    lp = opt.solve(m)
    burned = [min(pyo.value(m.ch["b1", t]), pyo.value(m.dis["b1", t])) for t in range(4)]
    assert max(burned) > 0.1
    assert lp.best_feasible_objective < solve(p).objective - 0.01


def test_ev_charges_in_the_cheapest_slots_before_departure(engine: Engine) -> None:
    p = Problem(
        START,
        8,
        prices([0.3, 0.3, 0.1, 0.1, 0.2, 0.2, 0.05, 0.05]),
        (site("s1", [0] * 8),),
        evs=(EvCharger("ev_1", "s1", 3.0, 0, 6, 11.0),),
    )
    plan = engine(p)
    # Slots 6-7 are cheapest but after departure; 2 x 11 kW x 0.25 h = 5.5 kWh fit in slots 2-3.
    assert plan.objective == pytest.approx(3.0 * 0.1, abs=TOL)
    assert sum(plan.evs["ev_1"][2:4]) * SLOT_H == pytest.approx(3.0, abs=TOL)
    assert plan.evs["ev_1"][6:] == (0.0, 0.0)
    # Baseline charges at full power on arrival: 2.75 kWh in slot 0, 0.25 kWh in slot 1, both at 0.30.
    assert plan.baseline.energy_eur == pytest.approx(3.0 * 0.3, abs=TOL)


def test_ev_minimum_power_is_all_or_nothing(engine: Engine) -> None:
    # 1.5 kWh at exactly 4 kW (1 kWh a slot) takes two whole cheap slots: 2 kWh at 0.10, not 1.5.
    p = Problem(
        START,
        4,
        prices([0.3, 0.1, 0.1, 0.3]),
        (site("s1", [0] * 4),),
        evs=(EvCharger("ev_1", "s1", 1.5, 0, 4, 4.0, min_kw=4.0),),
    )
    plan = engine(p)
    assert plan.objective == pytest.approx(2 * 4 * SLOT_H * 0.1, abs=TOL)
    assert all(kw <= TOL or kw >= 4 - TOL for kw in plan.evs["ev_1"])


def test_flexible_load_moves_to_the_cheap_part_of_its_window(engine: Engine) -> None:
    p = Problem(
        START,
        4,
        prices([0.05, 0.3, 0.1, 0.2]),
        (site("s1", [0] * 4),),
        flexible_loads=(FlexibleLoad("heat", "s1", 1.0, 1, 4, 2.0),),
    )
    plan = engine(p)
    # Slot 0 is outside the window; 2 kW x 0.25 h = 0.5 kWh at 0.10, the other 0.5 kWh at 0.20.
    assert plan.objective == pytest.approx(0.5 * 0.1 + 0.5 * 0.2, abs=TOL)
    assert plan.flexible_loads["heat"] == pytest.approx((0, 0, 2, 2), abs=TOL)


def _two_sites(shared_import_kw: float) -> Problem:
    return Problem(
        START,
        2,
        prices([0.1, 0.1]),
        (site("a", [6, 6], imp=10), site("b", [6, 6], imp=10)),
        batteries=(
            Battery(
                "bb", "b", 4, 2, 4, 4, charge_efficiency=1.0, discharge_efficiency=1.0, stored_value_eur_per_kwh=0.2
            ),
        ),
        shared=SharedConnection(shared_import_kw, 100.0),
    )


def test_shared_connection_limit_across_two_sites(engine: Engine) -> None:
    plan = engine(_two_sites(10.0))
    # 12 kW of load behind a 10 kW connection: the battery gives exactly the 2 kW missing (its energy is
    # worth 0.20 kept, more than the 0.10 a kWh costs to import), imports are 10 kW in both slots.
    assert plan.batteries["bb"].discharge_kw == pytest.approx((2, 2), abs=TOL)
    total = [plan.grid["a"].import_kw[t] + plan.grid["b"].import_kw[t] for t in range(2)]
    assert total == pytest.approx([10, 10], abs=TOL)
    assert plan.objective == pytest.approx(10 * 2 * SLOT_H * 0.1 - (2 - 2 * 2 * SLOT_H) * 0.2, abs=TOL)


def test_peak_demand_charge_is_shaved_with_the_battery(engine: Engine) -> None:
    p = Problem(
        START,
        4,
        prices([0.1] * 4),
        (site("s1", [2, 8, 2, 2], peak_eur_per_kw=1.0),),
        batteries=(Battery("b1", "s1", 4, 1, 4, 4, charge_efficiency=1.0, discharge_efficiency=1.0),),
    )
    plan = engine(p)
    # The battery's 1 kWh goes into slot 1 at 4 kW: peak 8 - 4 = 4 kW; imports 2, 4, 2, 2 kW.
    assert plan.grid["s1"].peak_kw == pytest.approx(4.0, abs=TOL)
    assert plan.objective == pytest.approx(4 * 1.0 + (2 + 4 + 2 + 2) * SLOT_H * 0.1, abs=TOL)
    # Self-consumption alone spends 0.5 kWh at 2 kW in slot 0 and has 0.5 kWh left for the 8 kW slot.
    assert plan.baseline.peak_eur == pytest.approx(8 - 0.5 / SLOT_H, abs=TOL)


def test_carbon_price_moves_consumption_to_clean_slots(engine: Engine) -> None:
    p = Problem(
        START,
        2,
        prices([0.1, 0.1], carbon_kg_per_kwh=(0.5, 0.1), carbon_eur_per_kg=0.1),
        (site("s1", [0, 0]),),
        evs=(EvCharger("ev_1", "s1", 2.0, 0, 2, 11.0),),
        objective=Objective.COST_AND_CARBON,
    )
    plan = engine(p)
    assert plan.evs["ev_1"] == pytest.approx((0, 8), abs=TOL)
    assert plan.expected.co2_kg == pytest.approx(2.0 * 0.1, abs=TOL)
    assert plan.objective == pytest.approx(2.0 * 0.1 + 0.1 * 2.0 * 0.1, abs=TOL)


def test_the_reserve_is_never_used(engine: Engine) -> None:
    # 2 kWh stored, 1 kWh of it reserved for outages: an 8 kW slot at a dear price gets 4 kW (1 kWh) from
    # the battery and no more, and the battery ends at its reserve.
    p = Problem(
        START,
        1,
        prices([0.3]),
        (site("s1", [8]),),
        batteries=(Battery("b1", "s1", 4, 2, 8, 8, charge_efficiency=1.0, discharge_efficiency=1.0, reserve_kwh=1.0),),
    )
    plan = engine(p)
    assert plan.batteries["b1"].discharge_kw == pytest.approx((4.0,), abs=TOL)
    assert plan.batteries["b1"].soc_kwh == pytest.approx((1.0,), abs=TOL)
    assert plan.objective == pytest.approx(4 * SLOT_H * 0.3, abs=TOL)


def test_wear_stops_an_arbitrage_thinner_than_it(engine: Engine) -> None:
    # Buying at 0.10 to save 0.11 gains 0.01 per kWh shifted; each kWh shifted is 2 kWh of throughput at
    # 0.02 of wear: the battery stays idle and the load is bought when it comes.
    p = Problem(
        START,
        2,
        prices([0.10, 0.11]),
        (site("s1", [0, 4]),),
        batteries=(
            Battery(
                "b1", "s1", 4, 0, 4, 4, charge_efficiency=1.0, discharge_efficiency=1.0, degradation_eur_per_kwh=0.02
            ),
        ),
    )
    plan = engine(p)
    assert plan.batteries["b1"].charge_kw == pytest.approx((0.0, 0.0), abs=TOL)
    assert plan.objective == pytest.approx(4 * SLOT_H * 0.11, abs=TOL)
    # Without wear the same battery shifts all of it.
    free = engine(
        Problem(
            START,
            2,
            prices([0.10, 0.11]),
            (site("s1", [0, 4]),),
            batteries=(Battery("b1", "s1", 4, 0, 4, 4, charge_efficiency=1.0, discharge_efficiency=1.0),),
        )
    )
    assert free.objective == pytest.approx(4 * SLOT_H * 0.10, abs=TOL)


def test_self_consumption_keeps_the_pv_for_later_where_cost_would_sell_it(engine: Engine) -> None:
    # 4 kW of PV in slot 0, 4 kW of load in slot 1; feed-in (0.20) pays more than import costs (0.10).
    # COST sells the PV and buys the load; SELF_CONSUMPTION stores the PV and imports nothing.
    def problem(objective: Objective) -> Problem:
        return Problem(
            START,
            2,
            prices([0.10, 0.10], [0.20, 0.20]),
            (site("s1", [0, 4]),),
            batteries=(Battery("b1", "s1", 1, 0, 4, 4, charge_efficiency=1.0, discharge_efficiency=1.0),),
            pv=(PvArray("pv1", "s1", (4.0, 0.0), curtailable=False),),
            objective=objective,
        )

    cost = engine(problem(Objective.COST))
    assert cost.batteries["b1"].charge_kw == pytest.approx((0.0, 0.0), abs=TOL)
    assert cost.expected.import_kwh == pytest.approx(1.0, abs=TOL)
    own = engine(problem(Objective.SELF_CONSUMPTION))
    assert own.batteries["b1"].charge_kw == pytest.approx((4.0, 0.0), abs=TOL)
    assert own.expected.import_kwh == pytest.approx(0.0, abs=TOL)
    # Imported kWh, with cost (0 bought, nothing sold) breaking ties at 1e-3.
    assert own.objective == pytest.approx(0.0, abs=TOL)


def test_import_price_adds_network_tax_and_vat(engine: Engine) -> None:
    p = Problem(
        START, 1, prices([0.1], network_eur_per_kwh=0.05, tax_eur_per_kwh=0.02, vat_rate=0.2), (site("s1", [4]),)
    )
    assert engine(p).objective == pytest.approx(4 * SLOT_H * (0.1 + 0.05 + 0.02) * 1.2, abs=TOL)


def test_ev_that_cannot_reach_its_energy_is_named(engine: Engine) -> None:
    p = Problem(
        START,
        32,
        prices([0.1] * 32),
        (site("s1", [0] * 32),),
        evs=(EvCharger("ev_1", "s1", 40.0, 24, 28, 11.0),),
    )
    with pytest.raises(InfeasibleError) as err:
        engine(p)
    assert err.value.conflicts == ["EV ev_1 cannot reach 40 kWh by 07:00 with 11 kW (at most 11 kWh from 06:00)"]


def test_flexible_load_and_terminal_soc_conflicts_are_named_together(engine: Engine) -> None:
    p = Problem(
        START,
        4,
        prices([0.1] * 4),
        (site("s1", [0] * 4),),
        batteries=(Battery("b1", "s1", 10, 0, 2, 2, charge_efficiency=1.0, terminal_soc_kwh=5.0),),
        flexible_loads=(FlexibleLoad("pump", "s1", 3.0, 0, 2, 2.0),),
    )
    with pytest.raises(InfeasibleError) as err:
        engine(p)
    assert err.value.conflicts == [
        "flexible load pump cannot consume 3 kWh between 00:00 and 00:30 at 2 kW (at most 1 kWh)",
        "battery b1 cannot reach 5 kWh by 01:00 from 0 kWh (at most 2 kWh with 2 kW and max SoC 10 kWh)",
    ]


def test_load_above_the_import_limit_is_named(engine: Engine) -> None:
    p = Problem(START, 2, prices([0.1, 0.1]), (site("s1", [5, 12], imp=10),))
    with pytest.raises(InfeasibleError) as err:
        engine(p)
    assert err.value.conflicts == ["site s1 needs 12 kW from the grid at 00:15 but its import limit is 10 kW"]


def test_shared_limit_that_no_battery_can_cover_is_named(engine: Engine) -> None:
    # 12 kW of load, 4 kW from the battery: 8 kW must come through a 5 kW connection.
    with pytest.raises(InfeasibleError) as err:
        engine(_two_sites(5.0))
    assert err.value.conflicts == [
        "the sites need 8 kW together at 00:00 but the shared connection's import limit is 5 kW"
    ]


def test_ev_blocked_by_the_connection_is_named(engine: Engine) -> None:
    # The EV alone could take 11 kW, but the site may import only 3 kW and has 2 kW of load.
    p = Problem(
        START, 4, prices([0.1] * 4), (site("s1", [2] * 4, imp=3),), evs=(EvCharger("ev_1", "s1", 2.0, 0, 4, 11.0),)
    )
    with pytest.raises(InfeasibleError) as err:
        engine(p)
    assert err.value.conflicts == ["EV ev_1 cannot reach 2 kWh by 01:00 within the site's grid limits (short by 1 kWh)"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"slots": 0}, "slots"),
        ({"sites": ()}, "sites"),
        ({"batteries": (Battery("b1", "nowhere", 1, 0, 1, 1),)}, "batteries[0].site"),
        ({"batteries": (Battery("b1", "s1", 1, 2, 1, 1),)}, "batteries[0].soc_kwh"),
        ({"evs": (EvCharger("e", "s1", 1, 1, 1, 1),)}, "evs[0].departure_slot"),
        ({"objective": Objective.COST_AND_CARBON}, "prices.carbon_kg_per_kwh"),
    ],
)
def test_bad_inputs_name_their_field(change: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"start": START, "slots": 2, "prices": prices([0.1, 0.1]), "sites": (site("s1", [0, 0]),)}
    args.update(change)
    with pytest.raises(OptimizerInputError) as err:
        Problem(**args)  # type: ignore[arg-type]
    assert err.value.field == field
