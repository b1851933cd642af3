"""PV curtailment and flexible loads executed at the edge: a real optimizer run reaches a real edge daemon
(the simulators of a PV inverter and a flexible load, the control cycle and the schedule follower, the
real uplink) over the real EdgeLink stream. The plan curtails the PV where exporting costs money and
moves the flexible load's energy to the cheap slot of its window; the edge limits its inverter and
sets its load's power exactly as planned, slot by slot, and when a curtailed slot ends, or the
schedule expires (with the cloud gone by then), it lifts the limit and hands the load back to itself (a
PV limit or a pause never outlives its slots).

The plan is for the next noon at longitude 0 (the edge's clock is moved there) so the inverter has sun
to curtail whenever the test runs."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from emma.optimizer.v1 import optimizer_pb2 as pb
from emma.optimizer.v1 import optimizer_pb2_grpc

from edge_daemon.config import parse_config
from edge_daemon.daemon import EdgeDaemon
from edge_daemon.uplink import create_uplink
from services.names import EdgeName
from tests.support.cloud import Host, new_edge
from tests.support.identity import authed_channel, grant
from tests.support.uplink import site_doc, until

SLOT = timedelta(minutes=15)


class OffsetClock:
    """The wall clock plus an offset the test sets: the edge lives at the planned noon."""

    def __init__(self, offset_s: float) -> None:
        self.offset_s = offset_s

    def time(self) -> float:
        return time.time() + self.offset_s


def _next_noon(now: datetime) -> datetime:
    noon = now.replace(hour=12, minute=0, second=0, microsecond=0)
    return noon if noon > now else noon + timedelta(days=1)


def _inputs(edge: EdgeName, start: datetime) -> pb.OptimizationInputs:
    """Four slots from noon: 5 kW of PV forecast in the first two, where exporting costs 100 EUR/MWh, so
    the plan curtails the PV to the 500 W the site uses; a flexible load that must take 500 Wh in the
    last two slots, at most 4 kW, where the last is the cheap one: 2 kW in slot 3, nothing in slot 2."""
    site = str(edge.site_name)
    inputs = pb.OptimizationInputs(
        slot_count=4,
        prices=pb.PriceInputs(
            market_price_eur_per_mwh=[200, 200, 200, 20],
            feed_in_price_eur_per_mwh=[-100, -100, 10, 10],
            carbon_intensity_g_per_kwh=[300] * 4,
        ),
        sites=[pb.SiteInputs(site=site, load_w=[500] * 4, import_limit_w=50_000, export_limit_w=50_000)],
        pv_arrays=[pb.PvInputs(device=f"{edge}/devices/pv_1", forecast_w=[5000, 5000, 0, 0], curtailable=True)],
        flexible_loads=[pb.FlexibleLoadInputs(device=f"{edge}/devices/boiler_1", energy_wh=500, max_power_w=4000)],
    )
    inputs.start_time.FromDatetime(start)
    inputs.flexible_loads[0].window_start_time.FromDatetime(start + 2 * SLOT)
    inputs.flexible_loads[0].window_end_time.FromDatetime(start + 4 * SLOT)
    return inputs


async def test_the_edge_curtails_its_pv_and_shifts_its_flexible_load_as_planned(
    host: Host, db: asyncpg.Connection, tmp_path: Path
) -> None:
    operator = await grant(db, "acme", "operator")
    edge, _, key = await new_edge(db, f"exec-{uuid.uuid4().hex[:6]}")
    noon = _next_noon(datetime.now(UTC))
    # The edge's telemetry is stamped at the planned noon, up to a day ahead: the ingest accepts it.
    cloud = host(["edge", "registry", "optimizer"], heartbeat_interval_s=1.0, max_future_s=2 * 86_400)
    server, _ = await cloud.__aenter__()
    cloud_up = True
    daemon: EdgeDaemon | None = None
    runner: asyncio.Task[None] | None = None
    try:
        async with authed_channel(server.port, operator.token) as channel:
            opt = optimizer_pb2_grpc.OptimizerServiceStub(channel)
            run = await opt.RunOptimization(
                pb.RunOptimizationRequest(
                    parent="organizations/acme", sites=[str(edge.site_name)], inputs=_inputs(edge, noon)
                )
            )
        assert run.state == pb.OPTIMIZATION_RUN_STATE_SUCCEEDED
        plan = {s.asset.rsplit("/", 1)[1]: s for s in run.schedules}
        assert list(plan["pv_1"].power_w) == pytest.approx([500, 500, 0, 0], abs=1e-6)
        assert list(plan["pv_1"].curtailed_w) == pytest.approx([4500, 4500, 0, 0], abs=1e-6)
        assert list(plan["boiler_1"].power_w) == pytest.approx([0, 0, 0, 2000], abs=1e-6)

        doc = site_doc(tmp_path, endpoint=f"127.0.0.1:{server.port}", edge=str(edge), key=key)
        # At longitude 0 in UTC, so noon is the sun's; a boiler whose job (3 kWh, up to 4 kW) runs from
        # 12:30 to 13:30 local, longer than the plan's window, so what happens after the plan shows.
        doc["site"].update({"timezone": "UTC", "latitude": 0.0, "longitude": 0.0})
        doc["devices"].insert(
            -1,
            {
                "id": "boiler_1",
                "type": "sim_flexible_load",
                "max_power_w": 4000,
                "energy_wh": 3000,
                "window_start_hour": 12.5,
                "window_end_hour": 13.5,
            },
        )
        config = parse_config(doc, tmp_path / "site.toml")
        clock = OffsetClock((noon - datetime.now(UTC)).total_seconds() + 60)
        daemon = EdgeDaemon(config, clock=clock, uplink=create_uplink(config))
        runner = asyncio.create_task(daemon.run())
        store = daemon.store

        def value(channel: str) -> float | None:
            found = store.get(channel)
            return None if found is None else float(found.value)  # type: ignore[arg-type]

        def at(slot: int, minute: int = 5) -> None:
            clock.offset_s = (noon + slot * SLOT + timedelta(minutes=minute) - datetime.now(UTC)).total_seconds()

        follower = daemon.schedule_follower
        assert follower is not None
        await until(lambda: follower.schedule is not None, what="the plan reaching the edge")
        assert follower.schedule is not None and follower.schedule.schedule_id == run.name
        # Slot 0: the inverter is limited to the planned 500 W and produces exactly that (the sun
        # offers more); the boiler's window has not opened.
        await until(lambda: value("pv_1/ActivePowerLimit") == 500.0, what="the planned PV limit")
        await until(lambda: value("pv_1/ActivePower") == 500.0, what="the PV curtailed to 500 W")
        available = value("pv_1/AvailablePower")
        assert available is not None and available > 1000.0
        assert value("boiler_1/SetActivePower") is None and value("boiler_1/EnergyNeeded") == 0.0

        # Slot 2: no curtailment planned, so the limit is lifted and the inverter gives all it can; the
        # boiler's window is open and the plan pauses it (0 W) for the cheap slot after.
        at(2)
        await until(lambda: value("pv_1/ActivePowerLimit") is None, what="the PV limit lifted")
        await until(lambda: (value("pv_1/ActivePower") or 0.0) > 1000.0, what="the PV producing freely")
        await until(lambda: value("boiler_1/SetActivePower") == 0.0, what="the boiler paused as planned")
        await until(lambda: value("boiler_1/ActivePower") == 0.0, what="the boiler drawing nothing")
        assert value("boiler_1/EnergyNeeded") == 3000.0

        # Slot 3: the planned 2 kW.
        at(3)
        await until(lambda: value("boiler_1/SetActivePower") == 2000.0, what="the boiler's planned 2 kW")
        await until(lambda: value("boiler_1/ActivePower") == 2000.0, what="the boiler drawing 2 kW")

        # The cloud goes away; the edge keeps the plan and ends it on its own. After the horizon (13:05,
        # the boiler's own window still open) the setpoint is cleared and the boiler runs as it would
        # unmanaged, at full power until its job is done.
        await cloud.__aexit__(None, None, None)
        cloud_up = False
        at(4)
        await until(lambda: value("boiler_1/SetActivePower") is None, what="the boiler handed back")
        await until(lambda: value("boiler_1/ActivePower") == 4000.0, what="the boiler at full power")
        assert value("pv_1/ActivePowerLimit") is None
    finally:
        if daemon is not None:
            daemon.stop()
        if runner is not None:
            await asyncio.gather(runner, return_exceptions=True)
        if cloud_up:
            await cloud.__aexit__(None, None, None)
