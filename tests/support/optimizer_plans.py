"""A plan made before its slots began, as the edge followed it: the four-slot case the realised-savings
tests work out by hand (prices 100, 100, 300, 300 EUR/MWh; a 10 kWh battery, empty, 4 kW either way;
no load, then 4 kW), solved and stored by the optimizer's own functions."""

from __future__ import annotations

import datetime as dt

from emma.optimizer.v1 import optimizer_pb2 as pb

from services.names import EdgeName
from services.optimizer import convert
from services.optimizer.runs import solve_run, store_run
from services.platform.migrations import Conn

SLOT = dt.timedelta(minutes=15)


def four_slot_inputs(edge: EdgeName, start: dt.datetime) -> pb.OptimizationInputs:
    inputs = pb.OptimizationInputs(
        slot_count=4,
        prices=pb.PriceInputs(
            market_price_eur_per_mwh=[100, 100, 300, 300],
            feed_in_price_eur_per_mwh=[0] * 4,
            carbon_intensity_g_per_kwh=[100, 100, 500, 500],
        ),
        sites=[
            pb.SiteInputs(
                site=str(edge.site_name), load_w=[0, 0, 4000, 4000], import_limit_w=50_000, export_limit_w=50_000
            )
        ],
        batteries=[
            pb.BatteryInputs(
                device=f"{edge}/devices/battery_1",
                capacity_wh=10_000,
                soc_wh=0,
                max_charge_w=4000,
                max_discharge_w=4000,
                charge_efficiency=1.0,
                discharge_efficiency=1.0,
            )
        ],
    )
    inputs.start_time.FromDatetime(start)
    inputs.step.FromTimedelta(SLOT)
    return inputs


async def store_plan_made_before(conn: Conn, edge: EdgeName, start: dt.datetime) -> pb.OptimizationRun:
    """The four-slot plan from `start`, created 5 minutes before it: in force in its slots."""
    inputs = four_slot_inputs(edge, start)
    problem = convert.problem(inputs)
    site = str(edge.site_name)
    run_id, run, infeasible = await solve_run(
        edge.org, [site], inputs, problem, created=start - dt.timedelta(minutes=5)
    )
    assert infeasible is None, infeasible
    await store_run(conn, run_id, run, inputs, problem, org=edge.org, creator="test")
    return run
