"""A day planned and executed: the plan of a real ENTSO-E day (DE-LU, 2024-10-06, with negative
prices) followed by a simulated edge (the edge daemon's own devices, control cycle and schedule
follower on an accelerated clock) next to an identical edge run by the self-consumption controller
alone. The forecast the plan was made from is a dry run of the site under other clouds and another load
noise, so the day differs from the plan by a forecast error.

What it proves: the planned site costs less than the baseline site; the realised savings come within
the forecast error of the savings the plan expected; and GetRealisedSavings' arithmetic, fed the
executed site's measured grid and battery through the real ingest writer, prices the realised day
exactly as the simulation did."""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections import defaultdict
from pathlib import Path

import asyncpg
from emma.optimizer.v1 import optimizer_pb2 as pb

from edge_daemon.controllers.schedule_follower import ScheduleFollower
from edge_daemon.uplink.schedules import schedule_from_proto
from services.market import save_document, zone_prices
from services.names import EdgeName
from services.optimizer import convert
from services.optimizer.dispatch import edge_schedule
from services.optimizer.runs import solve_run, store_run
from services.optimizer.savings import realised_savings
from services.registry import ensure_edge, store_inventory
from tests.services.optimizer.test_platform_inputs import _document, _inventory, add_series, store_samples
from tests.support.sim import Site, site_config

UTC = dt.UTC
DAY = dt.datetime(2024, 10, 5, 22, tzinfo=UTC)  # local midnight in Berlin (CEST)
SLOT = dt.timedelta(minutes=15)
SLOTS = 96
STEP_S = 10.0
DE_LU = "10Y1001A1001A82H"
TARIFF = 95.5  # EUR/MWh on every imported MWh; exports earn the market price


def _devices(cloudiness: float, seed: int) -> list[dict[str, object]]:
    return [
        {
            "id": "battery_1",
            "type": "sim_battery",
            "capacity_wh": 10_000,
            "max_charge_w": 5_000,
            "max_discharge_w": 5_000,
            "efficiency": 0.92,
            "min_soc": 10,
            "max_soc": 95,
            "initial_soc": 50,
        },
        {"id": "pv_1", "type": "sim_pv", "peak_power_w": 8_000, "cloudiness": cloudiness},
        {"id": "load_1", "type": "sim_load", "mean_power_w": 600, "noise_w": 150, "seed": seed},
        {"id": "grid_1", "type": "sim_grid_meter"},
    ]


def _run_day(site: Site) -> dict[str, list[float]]:
    """Mean power per slot of the grid, the battery, the load and the PV over the day."""
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0] * SLOTS)
    counts = [0] * SLOTS
    for _ in range(int(SLOTS * 900 / STEP_S)):
        ctx = site.step(STEP_S)
        index = min(SLOTS - 1, int((ctx.now - STEP_S / 2 - DAY.timestamp()) // 900))
        counts[index] += 1
        for channel in ("grid_1/ActivePower", "battery_1/ActivePower", "load_1/ActivePower", "pv_1/ActivePower"):
            sums[channel][index] += float(ctx.snapshot[channel].value)  # type: ignore[arg-type]
    return {k: [v / counts[i] for i, v in enumerate(values)] for k, values in sums.items()}


def _cost(grid_w: list[float], market: list[float]) -> float:
    return sum(
        0.25 * (max(g, 0) / 1000 * (m + TARIFF) / 1000 - max(-g, 0) / 1000 * m / 1000)
        for g, m in zip(grid_w, market, strict=True)
    )


async def test_a_planned_day_realises_the_planned_savings_within_the_forecast_error(
    tmp_path: Path, db: asyncpg.Connection, migrated_url: str
) -> None:
    await save_document(db, _document(), DAY + dt.timedelta(hours=-10))
    market = [v for _, v in await zone_prices(db, DE_LU, DAY, DAY + SLOT * SLOTS)]
    assert len(market) == SLOTS and min(market) < 0  # the real day, negative hours included

    # The forecast: the site on its own (battery idle) under 20 % clouds and one load noise.
    dry = Site(site_config(tmp_path, devices=_devices(0.2, 1), controllers=[]), start=DAY.timestamp())
    forecast = _run_day(dry)
    load_fc, pv_fc = forecast["load_1/ActivePower"], forecast["pv_1/ActivePower"]

    edge = EdgeName("acme", f"day-{uuid.uuid4().hex[:8]}", "gw")
    pk = await ensure_edge(db, edge, time_zone="Europe/Berlin", country_code="DE")
    await store_inventory(db, pk, [d for d in _inventory() if d.device_id in ("battery_1", "grid_1")])
    site = str(edge.site_name)

    leg = math.sqrt(0.92)
    inputs = pb.OptimizationInputs(
        slot_count=SLOTS,
        prices=pb.PriceInputs(
            market_price_eur_per_mwh=market, feed_in_price_eur_per_mwh=market, network_tariff_eur_per_mwh=TARIFF
        ),
        sites=[pb.SiteInputs(site=site, load_w=load_fc, import_limit_w=50_000, export_limit_w=50_000)],
        batteries=[
            pb.BatteryInputs(
                device=f"{edge}/devices/battery_1",
                capacity_wh=10_000,
                soc_wh=5_000,
                max_charge_w=5_000,
                max_discharge_w=5_000,
                charge_efficiency=leg,
                discharge_efficiency=leg,
                min_soc_wh=1_000,
                max_soc_wh=9_500,
            )
        ],
        pv_arrays=[pb.PvInputs(device=f"{edge}/devices/pv_1", forecast_w=pv_fc)],
    )
    inputs.start_time.FromDatetime(DAY)
    inputs.step.FromTimedelta(SLOT)
    problem = convert.problem(inputs)
    run_id, run, infeasible = await solve_run("acme", [site], inputs, problem, created=DAY - dt.timedelta(hours=1))
    assert infeasible is None
    await store_run(db, run_id, run, inputs, problem, org="acme", creator="test")
    planned_savings = run.baseline.grid_cost_eur - run.expected.grid_cost_eur
    assert planned_savings > 0

    # The day as it happened: 35 % clouds and another load noise, once following the plan, once not.
    follower = {
        "type": "schedule_follower",
        "battery": "battery_1",
        "safe_mode": "self_consumption",
        "grid_meter": "grid_1",
    }
    planned_site = Site(site_config(tmp_path, devices=_devices(0.35, 7), controllers=[follower]), start=DAY.timestamp())
    message = edge_schedule(run, inputs, str(edge), DAY)
    assert message is not None
    (controller,) = planned_site.controllers
    assert isinstance(controller, ScheduleFollower)
    controller.set_schedule(schedule_from_proto(message, DAY.timestamp()))
    executed = _run_day(planned_site)
    baseline_controller = {"type": "self_consumption", "battery": "battery_1", "grid_meter": "grid_1"}
    baseline_site = Site(
        site_config(tmp_path, devices=_devices(0.35, 7), controllers=[baseline_controller]), start=DAY.timestamp()
    )
    base = _run_day(baseline_site)

    realised_cost, baseline_cost = (
        _cost(executed["grid_1/ActivePower"], market),
        _cost(base["grid_1/ActivePower"], market),
    )
    realised_savings_eur = baseline_cost - realised_cost
    assert realised_savings_eur > 0
    # The forecast error, priced: the most the day's differences from the forecast (net demand per slot,
    # each valued at the dearer of the slot's import and export price) can move the savings, once for
    # each site.
    actual_net = [d - p for d, p in zip(executed["load_1/ActivePower"], executed["pv_1/ActivePower"], strict=True)]
    forecast_net = [d - p for d, p in zip(load_fc, pv_fc, strict=True)]
    error_eur = sum(
        0.25 * abs(a - f) / 1000 * max(abs(m + TARIFF), abs(m)) / 1000
        for a, f, m in zip(actual_net, forecast_net, market, strict=True)
    )
    assert error_eur > 0
    assert abs(realised_savings_eur - planned_savings) <= 2 * error_eur, (
        realised_savings_eur,
        planned_savings,
        error_eur,
    )

    # The executed site's measurements through the real ingest writer: GetRealisedSavings' arithmetic
    # prices them exactly as above, and its baseline on the measured demand comes within the error too.
    mid = [DAY + SLOT * i + SLOT / 2 for i in range(SLOTS)]
    await store_samples(
        migrated_url,
        pk,
        {
            await add_series(db, pk, "grid_1/ActivePower"): list(zip(mid, executed["grid_1/ActivePower"], strict=True)),
            await add_series(db, pk, "battery_1/ActivePower"): list(
                zip(mid, executed["battery_1/ActivePower"], strict=True)
            ),
        },
    )
    got = await realised_savings(db, [edge.site_name], DAY, DAY + SLOT * SLOTS, dt.datetime.now(UTC))
    (one,) = got.sites
    assert (one.slot_count, one.missing_slot_count) == (SLOTS, 0)
    assert math.isclose(one.realised.grid_cost_eur, realised_cost, rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(one.planned.grid_cost_eur, run.expected.grid_cost_eur, rel_tol=1e-6, abs_tol=1e-6)
    assert abs(one.baseline.grid_cost_eur - baseline_cost) <= error_eur, (one.baseline.grid_cost_eur, baseline_cost)
    assert list(got.runs) == [run.name]
