"""Simulated EV charger: daily plug-in sessions in local time, each needing a fixed amount of energy.

Sign convention: ActivePower is positive when charging the car. Without a setpoint the charger behaves
like a plain wallbox and charges at full power; a setpoint below the minimum current pauses charging.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from edge_daemon.channels import ChannelStore
from edge_daemon.devices.base import ChannelAccess, ChannelSpec, Device, DynamicLimit, publish
from edge_daemon.params import ParamReader


@dataclass(frozen=True, slots=True)
class EvChargerParams:
    max_power_w: float = 11_000.0
    min_power_w: float = 1_380.0
    arrival_hour: float = 18.0
    departure_hour: float = 7.0
    session_energy_wh: float = 20_000.0
    daily_sessions: bool = True


def parse_ev_charger(r: ParamReader) -> EvChargerParams:
    p = EvChargerParams(
        max_power_w=r.get_float("max_power_w", 11_000.0, minimum=0, exclusive_min=True),
        min_power_w=r.get_float("min_power_w", 1_380.0, minimum=0),
        arrival_hour=r.get_float("arrival_hour", 18.0, minimum=0, maximum=24),
        departure_hour=r.get_float("departure_hour", 7.0, minimum=0, maximum=24),
        session_energy_wh=r.get_float("session_energy_wh", 20_000.0, minimum=0),
        daily_sessions=r.get_bool("daily_sessions", True),
    )
    if p.min_power_w > p.max_power_w:
        raise r.error("min_power_w", f"must not exceed max_power_w ({p.max_power_w:g})")
    return p


class SimEvCharger(Device):
    type_name = "sim_ev_charger"
    site_power_sign = -1

    def __init__(self, device_id: str, params: EvChargerParams, tz: ZoneInfo) -> None:
        super().__init__(device_id)
        self.params = params
        self.tz = tz
        self.plugged = False
        self.energy_needed_wh = 0.0
        self.power_w = 0.0
        self.max_power_now_w = 0.0
        self._last: float | None = None
        self._in_window: bool | None = None
        self._channels = (
            ChannelSpec("Plugged", "", ChannelAccess.READ, "A car is connected"),
            ChannelSpec("EnergyNeeded", "Wh", ChannelAccess.READ, "Energy the session still needs", 0, None),
            ChannelSpec("ActivePower", "W", ChannelAccess.READ, "Charging power", 0, params.max_power_w),
            ChannelSpec("MaxPower", "W", ChannelAccess.READ, "Charging power possible now", 0, params.max_power_w),
            ChannelSpec(
                "SetActivePower",
                "W",
                ChannelAccess.WRITE,
                "Charging power setpoint",
                0,
                params.max_power_w,
                dynamic_max=DynamicLimit("MaxPower"),
            ),
        )

    @property
    def channels(self) -> tuple[ChannelSpec, ...]:
        return self._channels

    def plug_in(self, energy_wh: float) -> None:
        self.plugged = True
        self.energy_needed_wh = max(0.0, energy_wh)

    def unplug(self) -> None:
        self.plugged = False
        self.energy_needed_wh = 0.0
        self.power_w = 0.0

    def read(self, store: ChannelStore, now: float) -> None:
        if self._last is not None and now > self._last:
            self._integrate(now - self._last)
        self._last = now
        if self.params.daily_sessions:
            self._follow_sessions(now)
        self.max_power_now_w = self.params.max_power_w if self.plugged and self.energy_needed_wh > 0 else 0.0
        self.power_w = min(self.power_w, self.max_power_now_w)
        publish(
            store,
            self,
            {
                "Plugged": self.plugged,
                "EnergyNeeded": self.energy_needed_wh,
                "ActivePower": self.power_w,
                "MaxPower": self.max_power_now_w,
            },
            now,
        )

    def write(self, store: ChannelStore) -> None:
        setpoint = self.output_value(store, "SetActivePower")
        target = self.max_power_now_w if setpoint is None else setpoint
        if target < self.params.min_power_w:
            target = 0.0
        self.power_w = min(self.max_power_now_w, max(0.0, target))

    def _integrate(self, dt: float) -> None:
        delivered = self.power_w * dt / 3600
        if delivered >= self.energy_needed_wh:
            self.energy_needed_wh = 0.0
            self.power_w = 0.0
        else:
            self.energy_needed_wh -= delivered

    def _follow_sessions(self, now: float) -> None:
        local = datetime.fromtimestamp(now, self.tz)
        hour = local.hour + local.minute / 60 + local.second / 3600
        a, d = self.params.arrival_hour, self.params.departure_hour
        in_window = (a <= hour < d) if a <= d else (hour >= a or hour < d)
        # Only edges change the session, so a test (or an operator) can plug or unplug in between.
        if in_window != self._in_window:
            if self._in_window is not None or in_window:
                if in_window:
                    self.plug_in(self.params.session_energy_wh)
                else:
                    self.unplug()
            self._in_window = in_window
