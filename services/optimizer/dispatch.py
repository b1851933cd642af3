"""A run's plan as the Schedule (emma.edge.v1) one edge follows: pure, no I/O.

Each 15-minute slot that has not ended becomes one ScheduleInterval with a setpoint per planned
device of that edge; the schedule expires where the run's horizon ends, after which the edge's
schedule follower falls back to its safe mode (self-consumption on the demo site).

What is sent, per asset kind (the edge's sign conventions, edge_daemon/devices/):
- battery: `<device>/SetActivePower` = minus the planned power (the plan counts charging positive,
  the edge counts discharging positive);
- EV charger: `<device>/SetActivePower` = the planned charging power.
PV curtailment and flexible loads are not sent: the edge has no schedule-able channel for a flexible
load, and a PV limit written by a schedule would stay in force after the schedule ends (the follower
only writes while an entry is valid), so a curtailed plan would keep curtailing once it expired.
"""

from __future__ import annotations

from datetime import datetime

from emma.edge.v1 import edge_link_pb2
from emma.optimizer.v1 import optimizer_pb2 as pb

from services.optimizer.inputs import SLOT
from services.platform.rpc import timestamp

SOURCE = "optimizer"
# Setpoints are rounded to this many decimals of a watt: the solver's tolerance may put a value a
# hair beyond a device's static limit (5000.0000001 W), which would make the edge refuse the whole
# schedule; a tenth of a watt is far below any device's resolution.
_DECIMALS = 1


def _setpoints(schedule: pb.AssetSchedule, device: str) -> tuple[str, list[float]] | None:
    if schedule.kind == pb.ASSET_KIND_BATTERY:
        return f"{device}/SetActivePower", [0.0 - round(p, _DECIMALS) for p in schedule.power_w]
    if schedule.kind == pb.ASSET_KIND_EV_CHARGER:
        return f"{device}/SetActivePower", [max(0.0, round(p, _DECIMALS)) for p in schedule.power_w]
    return None


def edge_schedule(
    run: pb.OptimizationRun, inputs: pb.OptimizationInputs, edge: str, now: datetime
) -> edge_link_pb2.Schedule | None:
    """The part of `run` that `edge` (organizations/o/sites/s/edges/e) executes, from the slot running
    at `now` on; None when the edge has nothing to do in it or the horizon has ended."""
    prefix = f"{edge}/devices/"
    channels: list[tuple[str, list[float]]] = []
    for s in run.schedules:
        if not s.asset.startswith(prefix):
            continue
        found = _setpoints(s, s.asset[len(prefix) :])
        if found is not None:
            channels.append(found)
    start = inputs.start_time.ToDatetime().replace(tzinfo=now.tzinfo)
    end = start + SLOT * inputs.slot_count
    if not channels or end <= now:
        return None
    out = edge_link_pb2.Schedule(schedule_id=run.name, expire_time=timestamp(end), source=SOURCE)
    for t in range(inputs.slot_count):
        slot_start, slot_end = start + SLOT * t, start + SLOT * (t + 1)
        if slot_end <= now:
            continue
        out.intervals.append(
            edge_link_pb2.ScheduleInterval(
                start_time=timestamp(slot_start),
                end_time=timestamp(slot_end),
                setpoints=[edge_link_pb2.ScheduleSetpoint(channel=c, value=v[t]) for c, v in channels],
            )
        )
    return out
