"""Simulated flexible load: a daily job (a water heater, a heat pump's buffer, a dishwasher run) that
needs a fixed amount of energy inside a window of local hours, at any power up to its rating.

Sign convention: ActivePower is positive when consuming. Without a setpoint the load runs at full power
from the start of its window until the job is done, as an unmanaged appliance does (and as the
optimizer's baseline assumes); a setpoint (0 .. rating, 0 pauses it) lets a schedule move the energy
to the cheap slots of the window. When the window closes the job ends, done or not: what is left is
reported in EnergyNeeded until then, so a plan that starves it shows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from edge_daemon.channels import ChannelStore
from edge_daemon.devices.base import ChannelAccess, ChannelSpec, Device, DynamicLimit, publish
from edge_daemon.params import ParamReader

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FlexibleLoadParams:
    max_power_w: float
    energy_wh: float
    window_start_hour: float = 0.0
    window_end_hour: float = 24.0


def parse_flexible_load(r: ParamReader) -> FlexibleLoadParams:
    p = FlexibleLoadParams(
        max_power_w=r.get_float("max_power_w", minimum=0, exclusive_min=True),
        energy_wh=r.get_float("energy_wh", minimum=0),
        window_start_hour=r.get_float("window_start_hour", 0.0, minimum=0, maximum=24),
        window_end_hour=r.get_float("window_end_hour", 24.0, minimum=0, maximum=24),
    )
    if p.window_start_hour == p.window_end_hour:
        raise r.error("window_end_hour", "must differ from window_start_hour (a window of no time)")
    return p


class SimFlexibleLoad(Device):
    type_name = "sim_flexible_load"
    site_power_sign = -1

    def __init__(self, device_id: str, params: FlexibleLoadParams, tz: ZoneInfo) -> None:
        super().__init__(device_id)
        self.params = params
        self.tz = tz
        self.energy_needed_wh = 0.0
        self.power_w = 0.0
        self.max_power_now_w = 0.0
        self._last: float | None = None
        self._in_window: bool | None = None
        self._channels = (
            ChannelSpec("ActivePower", "W", ChannelAccess.READ, "Power consumed", 0, params.max_power_w),
            ChannelSpec("EnergyNeeded", "Wh", ChannelAccess.READ, "Energy the job still needs", 0, None),
            ChannelSpec("MaxPower", "W", ChannelAccess.READ, "Power the job can take now", 0, params.max_power_w),
            ChannelSpec(
                "SetActivePower",
                "W",
                ChannelAccess.WRITE,
                "Power setpoint (0 pauses the job)",
                0,
                params.max_power_w,
                dynamic_max=DynamicLimit("MaxPower"),
            ),
        )

    @property
    def channels(self) -> tuple[ChannelSpec, ...]:
        return self._channels

    def read(self, store: ChannelStore, now: float) -> None:
        if self._last is not None and now > self._last:
            self._integrate(now - self._last)
        self._last = now
        self._follow_window(now)
        self.max_power_now_w = self.params.max_power_w if self.energy_needed_wh > 0 else 0.0
        self.power_w = min(self.power_w, self.max_power_now_w)
        publish(
            store,
            self,
            {"ActivePower": self.power_w, "EnergyNeeded": self.energy_needed_wh, "MaxPower": self.max_power_now_w},
            now,
        )

    def write(self, store: ChannelStore) -> None:
        setpoint = self.output_value(store, "SetActivePower")
        target = self.max_power_now_w if setpoint is None else setpoint
        self.power_w = min(self.max_power_now_w, max(0.0, target))

    def _integrate(self, dt: float) -> None:
        delivered = self.power_w * dt / 3600
        if delivered >= self.energy_needed_wh:
            self.energy_needed_wh = 0.0
            self.power_w = 0.0
        else:
            self.energy_needed_wh -= delivered

    def _follow_window(self, now: float) -> None:
        local = datetime.fromtimestamp(now, self.tz)
        hour = local.hour + local.minute / 60 + local.second / 3600
        a, b = self.params.window_start_hour, self.params.window_end_hour
        in_window = (a <= hour < b) if a < b else (hour >= a or hour < b)
        # Only the window's edges start or end a job, so a daemon started inside a window runs that
        # day's job too (the first reading opens it).
        if in_window != self._in_window:
            if in_window:
                self.energy_needed_wh = self.params.energy_wh
            elif self._in_window is not None:
                if self.energy_needed_wh > 0:
                    log.warning(
                        "flexible load window closed before the job was done",
                        extra={"device": self.device_id, "energy_needed_wh": round(self.energy_needed_wh, 1)},
                    )
                self.energy_needed_wh = 0.0
                self.power_w = 0.0
            self._in_window = in_window
