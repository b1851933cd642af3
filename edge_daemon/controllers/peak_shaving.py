"""Peak shaving: keep grid import at or below a threshold by discharging the battery.

It refines, rather than replaces, what lower-priority controllers decided this cycle: the setpoint is
raised only as far as needed to keep predicted import under the threshold (predicted grid power for a
setpoint s is g + b - s). With nothing decided below it, it optionally recharges from the grid with the
headroom left under the threshold, so the battery is full for the next peak.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_daemon.controllers.base import Controller, CycleContext
from edge_daemon.controllers.self_consumption import safe_write, setpoint_for_grid
from edge_daemon.params import ParamReader


@dataclass(frozen=True, slots=True)
class PeakShavingParams:
    battery: str
    grid_meter: str
    max_import_w: float
    recharge: bool = True


def parse_peak_shaving(r: ParamReader) -> PeakShavingParams:
    return PeakShavingParams(
        battery=r.get_str("battery"),
        grid_meter=r.get_str("grid_meter"),
        max_import_w=r.get_float("max_import_w", minimum=0),
        recharge=r.get_bool("recharge", True),
    )


class PeakShaving(Controller):
    type_name = "peak_shaving"

    def __init__(self, params: PeakShavingParams) -> None:
        self.params = params
        self.setpoint_channel = f"{params.battery}/SetActivePower"

    def step(self, ctx: CycleContext) -> None:
        p = self.params
        at_threshold = setpoint_for_grid(ctx, p.battery, p.grid_meter, p.max_import_w)
        if at_threshold is None:
            safe_write(ctx, self.setpoint_channel, None)
            return
        below = ctx.written(self.setpoint_channel)
        fallback = at_threshold if p.recharge else 0.0
        base = fallback if below is None else below
        safe_write(ctx, self.setpoint_channel, max(base, at_threshold))
