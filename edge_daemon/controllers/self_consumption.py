"""Self-consumption: use the battery to drive grid power to a target (zero by default).

With the battery's ActivePower b (positive discharging) and grid power g (positive importing), a new
setpoint s changes grid power to g + b - s, so s = b + g - target. Measured, not modelled, values feed
the formula, so it converges even when the battery does not deliver exactly what it was asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_daemon.controllers.base import Controller, CycleContext
from edge_daemon.errors import LimitError
from edge_daemon.params import ParamReader


@dataclass(frozen=True, slots=True)
class SelfConsumptionParams:
    battery: str
    grid_meter: str
    target_grid_w: float = 0.0


def parse_self_consumption(r: ParamReader) -> SelfConsumptionParams:
    return SelfConsumptionParams(
        battery=r.get_str("battery"),
        grid_meter=r.get_str("grid_meter"),
        target_grid_w=r.get_float("target_grid_w", 0.0),
    )


def setpoint_for_grid(ctx: CycleContext, battery: str, grid_meter: str, target_grid_w: float) -> float | None:
    """The battery setpoint that brings grid power to `target_grid_w`, unclamped; None without data."""
    grid = ctx.value(f"{grid_meter}/ActivePower")
    power = ctx.value(f"{battery}/ActivePower")
    if grid is None or power is None:
        return None
    return power + grid - target_grid_w


def safe_write(ctx: CycleContext, channel: str, value: float | None) -> None:
    """Write `value` clamped to the channel's effective limits; 0 W when data or limits are missing,
    because an idle battery is the one state that is safe without knowing anything."""
    try:
        limits = ctx.limits(channel)
    except LimitError:
        ctx.write(channel, 0.0)
        return
    ctx.write(channel, limits.clamp(0.0 if value is None else value))


class SelfConsumption(Controller):
    type_name = "self_consumption"

    def __init__(self, params: SelfConsumptionParams) -> None:
        self.params = params
        self.setpoint_channel = f"{params.battery}/SetActivePower"

    def step(self, ctx: CycleContext) -> None:
        p = self.params
        safe_write(ctx, self.setpoint_channel, setpoint_for_grid(ctx, p.battery, p.grid_meter, p.target_grid_w))
