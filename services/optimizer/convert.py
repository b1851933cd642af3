"""The contract's messages <-> the model's values: OptimizationInputs -> Problem, Plan -> the run's
results. The contract speaks W, Wh and EUR/MWh; the model kW, kWh and EUR/kWh."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from emma.optimizer.v1 import optimizer_pb2 as pb

from services.names import parse_device, parse_site
from services.optimizer.errors import OptimizerInputError
from services.optimizer.inputs import (
    SLOT,
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
from services.optimizer.plan import Outcome, Plan

K = 1000.0  # W per kW, Wh per kWh, EUR/MWh per EUR/kWh, g per kg, kg per tonne
DEFAULT_EFFICIENCY = 0.95
DEFAULT_TIME_LIMIT = timedelta(seconds=10)
MAX_TIME_LIMIT = timedelta(hours=1)

OBJECTIVES = {
    pb.OPTIMIZATION_OBJECTIVE_UNSPECIFIED: Objective.COST,
    pb.OPTIMIZATION_OBJECTIVE_COST: Objective.COST,
    pb.OPTIMIZATION_OBJECTIVE_COST_AND_CARBON: Objective.COST_AND_CARBON,
    pb.OPTIMIZATION_OBJECTIVE_SELF_CONSUMPTION: Objective.SELF_CONSUMPTION,
}


def _kilo(values: object) -> tuple[float, ...]:
    return tuple(float(v) / K for v in values)  # type: ignore[attr-defined]


def _slot_of(field: str, when: datetime, start: datetime, slots: int, *, clamp_before: bool = False) -> int:
    offset = when - start
    if offset < timedelta(0) and clamp_before:
        return 0
    index, rest = divmod(offset, SLOT)
    if rest or not 0 <= index <= slots:
        raise OptimizerInputError(field, f"must be on a 15-minute boundary within the horizon, got {when.isoformat()}")
    return int(index)


def _site_of_device(field: str, name: str, sites: set[str]) -> str:
    site = str(parse_device(name, field).edge.site_name)
    if site not in sites:
        raise OptimizerInputError(field, f"{name} is not on one of the run's sites")
    return site


def problem(inputs: pb.OptimizationInputs) -> Problem:
    """The model's Problem of `inputs`; OptimizerInputError (field named as in the contract) if invalid."""
    if not inputs.HasField("start_time"):
        raise OptimizerInputError("inputs.start_time", "required")
    start = inputs.start_time.ToDatetime(UTC)
    if start.second or start.microsecond or start.minute % 15:
        raise OptimizerInputError("inputs.start_time", "must be on a 15-minute boundary")
    n = inputs.slot_count
    limit = inputs.time_limit.ToTimedelta() if inputs.HasField("time_limit") else DEFAULT_TIME_LIMIT
    if not timedelta(seconds=1) <= limit <= MAX_TIME_LIMIT:
        raise OptimizerInputError("inputs.time_limit", "must be 1s..3600s")
    pr = inputs.prices
    prices = Prices(
        market_eur_per_kwh=_kilo(pr.market_price_eur_per_mwh),
        feed_in_eur_per_kwh=_kilo(pr.feed_in_price_eur_per_mwh),
        network_eur_per_kwh=pr.network_tariff_eur_per_mwh / K,
        tax_eur_per_kwh=pr.tax_eur_per_mwh / K,
        vat_rate=pr.vat_rate,
        carbon_kg_per_kwh=_kilo(pr.carbon_intensity_g_per_kwh),
        carbon_eur_per_kg=pr.carbon_cost_eur_per_tonne / K,
    )
    sites = tuple(
        Site(
            str(parse_site(s.site, f"inputs.sites[{i}].site")),
            _kilo(s.load_w),
            s.import_limit_w / K,
            s.export_limit_w / K,
            s.peak_charge_eur_per_kw,
            s.billed_peak_w / K,
        )
        for i, s in enumerate(inputs.sites)
    )
    names = {s.name for s in sites}
    bats = tuple(
        Battery(
            b.device,
            _site_of_device(f"inputs.batteries[{i}].device", b.device, names),
            capacity_kwh=b.capacity_wh / K,
            soc_kwh=b.soc_wh / K,
            max_charge_kw=b.max_charge_w / K,
            max_discharge_kw=b.max_discharge_w / K,
            charge_efficiency=b.charge_efficiency or DEFAULT_EFFICIENCY,
            discharge_efficiency=b.discharge_efficiency or DEFAULT_EFFICIENCY,
            min_soc_kwh=b.min_soc_wh / K,
            reserve_kwh=b.reserve_wh / K,
            max_soc_kwh=b.max_soc_wh / K if b.HasField("max_soc_wh") else None,
            terminal_soc_kwh=b.terminal_soc_wh / K if b.HasField("terminal_soc_wh") else None,
            stored_value_eur_per_kwh=b.stored_value_eur_per_mwh / K,
            degradation_eur_per_kwh=b.degradation_eur_per_mwh / K,
        )
        for i, b in enumerate(inputs.batteries)
    )
    pv = tuple(
        PvArray(
            a.device,
            _site_of_device(f"inputs.pv_arrays[{i}].device", a.device, names),
            _kilo(a.forecast_w),
            a.curtailable,
        )
        for i, a in enumerate(inputs.pv_arrays)
    )
    evs = tuple(
        EvCharger(
            e.device,
            _site_of_device(f"inputs.ev_chargers[{i}].device", e.device, names),
            e.energy_wh / K,
            _slot_of(
                f"inputs.ev_chargers[{i}].arrival_time", e.arrival_time.ToDatetime(UTC), start, n, clamp_before=True
            ),
            _slot_of(f"inputs.ev_chargers[{i}].departure_time", e.departure_time.ToDatetime(UTC), start, n),
            e.max_power_w / K,
            e.min_power_w / K,
        )
        for i, e in enumerate(inputs.ev_chargers)
    )
    flex = tuple(
        FlexibleLoad(
            f.device,
            _site_of_device(f"inputs.flexible_loads[{i}].device", f.device, names),
            f.energy_wh / K,
            _slot_of(f"inputs.flexible_loads[{i}].window_start_time", f.window_start_time.ToDatetime(UTC), start, n),
            _slot_of(f"inputs.flexible_loads[{i}].window_end_time", f.window_end_time.ToDatetime(UTC), start, n),
            f.max_power_w / K,
        )
        for i, f in enumerate(inputs.flexible_loads)
    )
    sh = inputs.shared_connection if inputs.HasField("shared_connection") else None
    shared = (
        SharedConnection(sh.import_limit_w / K, sh.export_limit_w / K, sh.peak_charge_eur_per_kw, sh.billed_peak_w / K)
        if sh is not None
        else None
    )
    if inputs.objective not in OBJECTIVES:
        raise OptimizerInputError("inputs.objective", "unknown objective")
    if start.second or start.microsecond or start.minute % 15:
        raise OptimizerInputError("inputs.start_time", "must be on a 15-minute boundary")
    return Problem(
        start,
        n,
        prices,
        sites,
        bats,
        pv,
        evs,
        flex,
        shared,
        OBJECTIVES[inputs.objective],
        time_limit_s=limit.total_seconds(),
    )


def outcome_message(o: Outcome) -> pb.Outcome:
    return pb.Outcome(
        cost_eur=o.cost_eur,
        grid_cost_eur=o.energy_eur,
        peak_charge_eur=o.peak_eur,
        degradation_eur=o.degradation_eur,
        stored_value_eur=o.stored_value_eur,
        co2_kg=o.co2_kg,
        import_wh=o.import_kwh * K,
        export_wh=o.export_kwh * K,
    )


def _w(values: tuple[float, ...]) -> list[float]:
    return [v * K for v in values]


def fill_run(run: pb.OptimizationRun, plan: Plan) -> None:
    """Write `plan`'s results into `run` (state, objective, outcomes, times, schedules)."""
    run.state = pb.OPTIMIZATION_RUN_STATE_SUCCEEDED
    run.objective_value = plan.objective
    run.expected.CopyFrom(outcome_message(plan.expected))
    run.baseline.CopyFrom(outcome_message(plan.baseline))
    run.build_duration.FromTimedelta(timedelta(seconds=plan.build_s))
    run.solve_duration.FromTimedelta(timedelta(seconds=plan.solve_s))
    run.mip_gap = plan.mip_gap
    run.optimal = plan.optimal
    run.solver = plan.solver
    run.solver_version = plan.solver_version
    for name, b in plan.batteries.items():
        power = [c - d for c, d in zip(b.charge_kw, b.discharge_kw, strict=True)]
        run.schedules.add(asset=name, kind=pb.ASSET_KIND_BATTERY, power_w=_w(tuple(power)), soc_wh=_w(b.soc_kwh))
    for name, pv in plan.pv.items():
        run.schedules.add(asset=name, kind=pb.ASSET_KIND_PV, power_w=_w(pv.used_kw), curtailed_w=_w(pv.curtailed_kw))
    for name, ev in plan.evs.items():
        run.schedules.add(asset=name, kind=pb.ASSET_KIND_EV_CHARGER, power_w=_w(ev))
    for name, fl in plan.flexible_loads.items():
        run.schedules.add(asset=name, kind=pb.ASSET_KIND_FLEXIBLE_LOAD, power_w=_w(fl))
    for name, g in plan.grid.items():
        net = tuple(i - e for i, e in zip(g.import_kw, g.export_kw, strict=True))
        run.schedules.add(asset=name, kind=pb.ASSET_KIND_GRID, power_w=_w(net))
