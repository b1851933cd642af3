"""Schedules end to end: a real optimizer run reaches a real edge daemon (simulated battery, real
uplink) over the real EdgeLink stream, the daemon follows it (its setpoint reaches the battery) and
acks it, the ack is stored; an edge that connects after the run gets the plan in force; a newer run
replaces it; a plan the edge cannot follow is refused with its reason stored; when the plan expires the
edge falls back to self-consumption."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from emma.optimizer.v1 import optimizer_pb2 as pb
from emma.optimizer.v1 import optimizer_pb2_grpc

from edge_daemon.controllers.schedule_follower import SAFE_MODE_CHANNEL
from edge_daemon.daemon import EdgeDaemon
from edge_daemon.uplink import create_uplink
from services.names import EdgeName
from services.platform.server import HostedServer
from tests.support.cloud import Host, new_edge
from tests.support.identity import authed_channel, grant
from tests.support.uplink import site_config, until

SLOT = timedelta(minutes=15)


class OffsetClock:
    """The wall clock plus an offset a test can move forward: the edge lives in the future, so a
    schedule's expiry arrives without waiting for it (the control cycle keeps its real pace)."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def time(self) -> float:
        return time.time() + self.offset_s


@dataclass
class Cloud:
    server: HostedServer
    optimizer: optimizer_pb2_grpc.OptimizerServiceStub
    edge: EdgeName
    key: str


@pytest.fixture
async def cloud(host: Host, db: asyncpg.Connection) -> AsyncIterator[Cloud]:
    operator = await grant(db, "acme", "operator")
    edge, _, key = await new_edge(db, f"sched-{uuid.uuid4().hex[:6]}")
    # The edge's clock runs up to 30 minutes ahead at the end: its telemetry stays acceptable.
    async with (
        host(["edge", "registry", "optimizer"], heartbeat_interval_s=1.0, max_future_s=3600) as (server, _),
        authed_channel(server.port, operator.token) as channel,
    ):
        yield Cloud(server, optimizer_pb2_grpc.OptimizerServiceStub(channel), edge, key)


def _slot_start(now: datetime) -> datetime:
    return now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)


def _inputs(edge: EdgeName, start: datetime, charge_w: float, device: str = "battery_1") -> pb.OptimizationInputs:
    # Two slots (the current one and the next) with a negative price: charging is paid, so the plan
    # charges the battery at its full `charge_w` in both, whichever of the two is running.
    site = str(edge.site_name)
    inputs = pb.OptimizationInputs(
        slot_count=2,
        prices=pb.PriceInputs(market_price_eur_per_mwh=[-100, -100], feed_in_price_eur_per_mwh=[0, 0]),
        sites=[pb.SiteInputs(site=site, load_w=[0, 0], import_limit_w=50_000, export_limit_w=50_000)],
        batteries=[
            pb.BatteryInputs(
                device=f"{edge}/devices/{device}",
                capacity_wh=10_000,
                soc_wh=2_000,
                max_charge_w=charge_w,
                max_discharge_w=charge_w,
                charge_efficiency=0.95,
                discharge_efficiency=0.95,
            )
        ],
    )
    inputs.start_time.FromDatetime(start)
    return inputs


async def _run(cloud: Cloud, inputs: pb.OptimizationInputs) -> pb.OptimizationRun:
    site = str(cloud.edge.site_name)
    request = pb.RunOptimizationRequest(parent="organizations/acme", sites=[site], inputs=inputs)
    run = await cloud.optimizer.RunOptimization(request)
    assert run.state == pb.OPTIMIZATION_RUN_STATE_SUCCEEDED
    return run


async def _delivery(db: asyncpg.Connection, run: pb.OptimizationRun) -> asyncpg.Record | None:
    return await db.fetchrow(
        """SELECT edge_name, schedule_id, sent_count, accepted, reason FROM optimizer.schedule_deliveries
           WHERE run_id = $1 AND ack_time IS NOT NULL""",
        uuid.UUID(run.name.rsplit("/", 1)[1]),
    )


async def _active_delivery(cloud: Cloud, run: pb.OptimizationRun) -> pb.ScheduleDelivery:
    """GetActiveSchedule's word on where `run` (the plan in force) stands with the edge."""
    active = await cloud.optimizer.GetActiveSchedule(pb.GetActiveScheduleRequest(edge=str(cloud.edge)))
    assert active.run == run.name
    return active.delivery


async def test_a_run_is_followed_by_the_edge_acked_replaced_refused_and_expires(
    cloud: Cloud, db: asyncpg.Connection, tmp_path: Path
) -> None:
    start = _slot_start(datetime.now(UTC))
    # Planned before the edge is connected: it gets the plan when its stream opens.
    first = await _run(cloud, _inputs(cloud.edge, start, 2_000))
    pending = await _active_delivery(cloud, first)
    assert (pending.edge, pending.state, pending.send_count) == (str(cloud.edge), pb.SCHEDULE_DELIVERY_STATE_PENDING, 0)
    assert not pending.HasField("first_send_time") and not pending.HasField("answer_time")
    clock = OffsetClock()
    config = site_config(tmp_path, endpoint=f"127.0.0.1:{cloud.server.port}", edge=str(cloud.edge), key=cloud.key)
    daemon = EdgeDaemon(config, clock=clock, uplink=create_uplink(config))
    runner = asyncio.create_task(daemon.run())

    def battery_w() -> float | None:
        value = daemon.store.get("battery_1/ActivePower")
        return None if value is None else float(value.value)

    try:
        await until(lambda: _delivery(db, first), what="the ack of the first schedule")
        row = await _delivery(db, first)
        assert row is not None
        assert (row["edge_name"], row["schedule_id"], row["accepted"], row["reason"]) == (
            str(cloud.edge),
            first.name,
            True,
            None,
        )
        accepted = await _active_delivery(cloud, first)
        assert (accepted.state, accepted.send_count, accepted.refusal_reason) == (
            pb.SCHEDULE_DELIVERY_STATE_ACCEPTED,
            1,
            "",
        )
        assert accepted.first_send_time.ToDatetime() <= accepted.answer_time.ToDatetime()
        stored = await cloud.optimizer.GetOptimizationRun(pb.GetOptimizationRunRequest(name=first.name))
        assert list(stored.deliveries) == [accepted]
        follower = daemon.schedule_follower
        assert follower is not None and follower.schedule is not None
        assert follower.schedule.schedule_id == first.name
        # The plan charges 2 kW (the edge counts charging negative) and the battery does.
        await until(lambda: battery_w() == -2_000.0, what="the battery charging at 2 kW as planned")
        assert follower.in_safe_mode is False

        # A newer run while the edge is connected replaces the plan at once.
        second = await _run(cloud, _inputs(cloud.edge, start, 1_000))
        await until(lambda: _delivery(db, second), what="the ack of the second schedule")
        await until(lambda: battery_w() == -1_000.0, what="the battery charging at 1 kW as replanned")

        # A plan for a device the edge does not have is refused; the reason is stored and the edge
        # keeps following the plan it had.
        third = await _run(cloud, _inputs(cloud.edge, start, 1_500, device="battery_9"))
        await until(lambda: _delivery(db, third), what="the refusal of the third schedule")
        row = await _delivery(db, third)
        assert row is not None and row["accepted"] is False
        assert "battery_9/SetActivePower is not a writable channel" in row["reason"]
        assert follower.schedule.schedule_id == second.name
        # The plan in force is the refused one, and the API says the edge refused it, and why.
        refused = await _active_delivery(cloud, third)
        assert refused.state == pb.SCHEDULE_DELIVERY_STATE_REFUSED and refused.refusal_reason == row["reason"]
        # Runs listed: deliveries in the FULL view only, each run its own.
        listing = pb.ListOptimizationRunsRequest(parent="organizations/acme", site=str(cloud.edge.site_name))
        basic = await cloud.optimizer.ListOptimizationRuns(listing)
        assert [r.name for r in basic.optimization_runs] == [third.name, second.name, first.name]
        assert all(not r.deliveries for r in basic.optimization_runs)
        listing.view = pb.OPTIMIZATION_RUN_VIEW_FULL
        full = await cloud.optimizer.ListOptimizationRuns(listing)
        states = [[(d.edge, d.state) for d in r.deliveries] for r in full.optimization_runs]
        assert states == [
            [(str(cloud.edge), pb.SCHEDULE_DELIVERY_STATE_REFUSED)],
            [(str(cloud.edge), pb.SCHEDULE_DELIVERY_STATE_ACCEPTED)],
            [(str(cloud.edge), pb.SCHEDULE_DELIVERY_STATE_ACCEPTED)],
        ]
        await asyncio.sleep(0.5)
        assert battery_w() == -1_000.0

        # The horizon ends (the edge's clock moves past it): the follower leaves the battery to
        # self-consumption, and says so on its safe-mode channel.
        clock.offset_s = (start + 2 * SLOT - datetime.now(UTC)).total_seconds() + 5
        await until(lambda: follower.in_safe_mode is True, what="the follower's fallback")
        safe = daemon.store.get(SAFE_MODE_CHANNEL)
        assert safe is not None and safe.value is True
        await until(lambda: battery_w() != -1_000.0, what="self-consumption taking the battery over")
        # Each plan went to the edge once: on connect, then on each new run.
        sent = await db.fetch(
            "SELECT sent_count FROM optimizer.schedule_deliveries WHERE edge_name = $1", str(cloud.edge)
        )
        assert [r["sent_count"] for r in sent] == [1, 1, 1]
    finally:
        daemon.stop()
        await asyncio.gather(runner, return_exceptions=True)
