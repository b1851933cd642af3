"""A run's plan as the Schedule (emma.edge.v1) one edge follows: pure, no I/O.

Each 15-minute slot that has not ended becomes one ScheduleInterval with a setpoint per planned
device of that edge; the schedule expires where the run's horizon ends, after which the edge's
schedule follower falls back to its safe mode (self-consumption on the demo site).

What is sent, per asset kind (the edge's sign conventions, edge_daemon/devices/):
- battery: `<device>/SetActivePower` = minus the planned power (the plan counts charging positive,
  the edge counts discharging positive), every slot;
- EV charger: `<device>/SetActivePower` = the planned charging power, every slot;
- PV inverter: `<device>/ActivePowerLimit` = the planned production, only in slots the plan curtails
  (elsewhere the inverter produces all it can: a limit at the forecast would cut a sunnier slot);
- flexible load: `<device>/SetActivePower` = the planned power, only in the slots of its window (before
  and after it the load is not the plan's to pause).
A channel's entries may have gaps; the edge's follower clears a PV limit or a setpoint whose entries
have ended, so no curtailment or pause outlives its slots or the schedule.
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
# Below this a PV slot counts as not curtailed: the solver's tolerance leaves crumbs that would otherwise
# limit the inverter at its forecast.
_CURTAILED_W = 1.0


def _setpoints(
    schedule: pb.AssetSchedule, device: str, windows: dict[str, tuple[int, int]]
) -> tuple[str, list[float | None]] | None:
    """The channel a planned asset is steered by and its value per slot (None: no entry in that slot)."""
    values: list[float | None]
    if schedule.kind == pb.ASSET_KIND_BATTERY:
        values = [0.0 - round(p, _DECIMALS) for p in schedule.power_w]
        return f"{device}/SetActivePower", values
    if schedule.kind == pb.ASSET_KIND_EV_CHARGER:
        values = [max(0.0, round(p, _DECIMALS)) for p in schedule.power_w]
        return f"{device}/SetActivePower", values
    if schedule.kind == pb.ASSET_KIND_PV:
        values = [
            max(0.0, round(p, _DECIMALS)) if c >= _CURTAILED_W else None
            for p, c in zip(schedule.power_w, schedule.curtailed_w, strict=True)
        ]
        return f"{device}/ActivePowerLimit", values
    if schedule.kind == pb.ASSET_KIND_FLEXIBLE_LOAD:
        first, end = windows.get(schedule.asset, (0, len(schedule.power_w)))
        values = [max(0.0, round(p, _DECIMALS)) if first <= t < end else None for t, p in enumerate(schedule.power_w)]
        return f"{device}/SetActivePower", values
    return None


def _windows(inputs: pb.OptimizationInputs) -> dict[str, tuple[int, int]]:
    """Each flexible load's window as slot indexes [first, end) of the run."""
    start = inputs.start_time.ToDatetime()
    return {
        f.device: (
            int((f.window_start_time.ToDatetime() - start) / SLOT),
            int((f.window_end_time.ToDatetime() - start) / SLOT),
        )
        for f in inputs.flexible_loads
    }


def edge_schedule(
    run: pb.OptimizationRun, inputs: pb.OptimizationInputs, edge: str, now: datetime
) -> edge_link_pb2.Schedule | None:
    """The part of `run` that `edge` (organizations/o/sites/s/edges/e) executes, from the slot running
    at `now` on; None when the edge has nothing to do in it or the horizon has ended."""
    prefix = f"{edge}/devices/"
    channels: list[tuple[str, list[float | None]]] = []
    windows = _windows(inputs)
    for s in run.schedules:
        if not s.asset.startswith(prefix):
            continue
        found = _setpoints(s, s.asset[len(prefix) :], windows)
        if found is not None and any(v is not None for v in found[1]):
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
                setpoints=[
                    edge_link_pb2.ScheduleSetpoint(channel=c, value=value)
                    for c, v in channels
                    if (value := v[t]) is not None
                ],
            )
        )
    return out
