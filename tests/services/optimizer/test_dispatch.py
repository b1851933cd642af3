"""A run's plan as the Schedule one edge follows (services/optimizer/dispatch.py): the edge's sign
convention, only that edge's devices, only slots that have not ended, expiry at the horizon's end, and
nothing for an edge without a deliverable asset or after the horizon."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from emma.optimizer.v1 import optimizer_pb2 as pb

from services.optimizer.dispatch import edge_schedule

SITE = "organizations/acme/sites/a"
EDGE = f"{SITE}/edges/gw"
START = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def _run() -> tuple[pb.OptimizationRun, pb.OptimizationInputs]:
    inputs = pb.OptimizationInputs(slot_count=3)
    inputs.start_time.FromDatetime(START)
    flex = inputs.flexible_loads.add(device=f"{EDGE}/devices/boiler", energy_wh=500, max_power_w=2000)
    flex.window_start_time.FromDatetime(START + timedelta(minutes=15))
    flex.window_end_time.FromDatetime(START + timedelta(minutes=45))
    run = pb.OptimizationRun(
        name="organizations/acme/optimizationRuns/00000000-0000-0000-0000-000000000001",
        schedules=[
            # Charging 5 kW by the plan, a hair beyond from the solver's tolerance, then discharging.
            pb.AssetSchedule(
                asset=f"{EDGE}/devices/bat", kind=pb.ASSET_KIND_BATTERY, power_w=[5000.0000001, 0.0, -2500.04]
            ),
            pb.AssetSchedule(asset=f"{EDGE}/devices/ev", kind=pb.ASSET_KIND_EV_CHARGER, power_w=[0, 7400, -1e-9]),
            # Curtailed in the first slot only (the third's 0.4 W is the solver's crumb, not a plan).
            pb.AssetSchedule(
                asset=f"{EDGE}/devices/pv", kind=pb.ASSET_KIND_PV, power_w=[1, 2, 3], curtailed_w=[1500, 0, 0.4]
            ),
            # Its window is the second and third slot: the first is not the plan's to pause.
            pb.AssetSchedule(
                asset=f"{EDGE}/devices/boiler", kind=pb.ASSET_KIND_FLEXIBLE_LOAD, power_w=[0, 0, 2000.00001]
            ),
            pb.AssetSchedule(asset=f"{SITE}/edges/other/devices/bat", kind=pb.ASSET_KIND_BATTERY, power_w=[1, 1, 1]),
            pb.AssetSchedule(asset=SITE, kind=pb.ASSET_KIND_GRID, power_w=[5000, 7400, -2500]),
        ],
    )
    return run, inputs


def _values(schedule: object) -> list[dict[str, float]]:
    return [{s.channel: s.value for s in i.setpoints} for i in schedule.intervals]  # type: ignore[attr-defined]


def test_the_edge_gets_its_devices_in_its_sign_convention_from_the_running_slot() -> None:
    run, inputs = _run()
    schedule = edge_schedule(run, inputs, EDGE, START + timedelta(minutes=20))
    assert schedule is not None
    assert schedule.schedule_id == run.name and schedule.source == "optimizer"
    assert schedule.expire_time.ToDatetime(UTC) == START + timedelta(minutes=45)
    # The first slot has ended; the second is running.
    assert [i.start_time.ToDatetime(UTC) for i in schedule.intervals] == [
        START + timedelta(minutes=15),
        START + timedelta(minutes=30),
    ]
    assert [i.end_time.ToDatetime(UTC) for i in schedule.intervals] == [
        START + timedelta(minutes=30),
        START + timedelta(minutes=45),
    ]
    assert _values(schedule) == [
        {"bat/SetActivePower": 0.0, "ev/SetActivePower": 7400.0, "boiler/SetActivePower": 0.0},
        {"bat/SetActivePower": 2500.0, "ev/SetActivePower": 0.0, "boiler/SetActivePower": 2000.0},
    ]
    first = edge_schedule(run, inputs, EDGE, START)
    assert first is not None
    # Charging is negative at the edge, rounded to 0.1 W so a static limit of 5000 W holds; the PV is
    # limited to what the plan uses in the slot it curtails, and only there.
    assert _values(first)[0] == {"bat/SetActivePower": -5000.0, "ev/SetActivePower": 0.0, "pv/ActivePowerLimit": 1.0}


def test_nothing_for_an_edge_without_deliverable_assets_or_after_the_horizon() -> None:
    run, inputs = _run()
    assert edge_schedule(run, inputs, f"{SITE}/edges/none", START) is None
    assert edge_schedule(run, inputs, EDGE, START + timedelta(minutes=45)) is None
    only_pv = pb.OptimizationRun(name=run.name, schedules=[s for s in run.schedules if s.kind == pb.ASSET_KIND_PV])
    del only_pv.schedules[0].curtailed_w[0]
    only_pv.schedules[0].curtailed_w.insert(0, 0.0)  # a PV the plan never curtails has nothing to follow
    assert edge_schedule(only_pv, inputs, EDGE, START) is None
    other = edge_schedule(run, inputs, f"{SITE}/edges/other", START)
    assert other is not None and _values(other)[0] == {"bat/SetActivePower": -1.0}
