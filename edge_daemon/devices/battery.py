"""Simulated battery: SOC bookkeeping with round-trip losses, power limits and a BMS-style taper.

Sign convention: ActivePower and SetActivePower are positive when discharging (feeding the site) and
negative when charging, like an inverter's AC side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edge_daemon.channels import ChannelStore
from edge_daemon.devices.base import ChannelAccess, ChannelSpec, Device, DynamicLimit, publish
from edge_daemon.params import ParamReader


@dataclass(frozen=True, slots=True)
class BatteryParams:
    capacity_wh: float
    max_charge_w: float
    max_discharge_w: float
    efficiency: float = 0.9
    min_soc: float = 5.0
    max_soc: float = 95.0
    initial_soc: float = 50.0
    # Over the last `taper_s` seconds of charge or discharge headroom the BMS lowers its limits, as real
    # ones do, so a controller acting on them approaches the SOC bound instead of slamming into it.
    taper_s: float = 60.0


def parse_battery(r: ParamReader) -> BatteryParams:
    p = BatteryParams(
        capacity_wh=r.get_float("capacity_wh", minimum=0, exclusive_min=True),
        max_charge_w=r.get_float("max_charge_w", minimum=0),
        max_discharge_w=r.get_float("max_discharge_w", minimum=0),
        efficiency=r.get_float("efficiency", 0.9, minimum=0, maximum=1, exclusive_min=True),
        min_soc=r.get_float("min_soc", 5.0, minimum=0, maximum=100),
        max_soc=r.get_float("max_soc", 95.0, minimum=0, maximum=100),
        initial_soc=r.get_float("initial_soc", 50.0, minimum=0, maximum=100),
        taper_s=r.get_float("taper_s", 60.0, minimum=0, exclusive_min=True),
    )
    if p.min_soc >= p.max_soc:
        raise r.error("min_soc", f"must be below max_soc ({p.max_soc:g})")
    if not p.min_soc <= p.initial_soc <= p.max_soc:
        raise r.error("initial_soc", f"must lie within min_soc..max_soc ({p.min_soc:g}..{p.max_soc:g})")
    return p


class SimBattery(Device):
    type_name = "sim_battery"
    site_power_sign = 1

    def __init__(self, device_id: str, params: BatteryParams) -> None:
        super().__init__(device_id)
        self.params = params
        # Losses are split evenly between charging and discharging so a full cycle loses exactly
        # (1 - efficiency) of the energy put in.
        self._leg_efficiency = math.sqrt(params.efficiency)
        self._e_min = params.capacity_wh * params.min_soc / 100
        self._e_max = params.capacity_wh * params.max_soc / 100
        self.energy_wh = params.capacity_wh * params.initial_soc / 100
        self.power_w = 0.0
        self.max_charge_w = params.max_charge_w
        self.max_discharge_w = params.max_discharge_w
        self._last: float | None = None
        self._channels = (
            # The BMS keeps the charge within min_soc..max_soc, so those are the channel's static limits:
            # the cloud reads the usable window from them (the optimizer plans inside it).
            ChannelSpec("Soc", "%", ChannelAccess.READ, "State of charge", params.min_soc, params.max_soc),
            ChannelSpec(
                "ActivePower",
                "W",
                ChannelAccess.READ,
                "AC power, positive discharging",
                -params.max_charge_w,
                params.max_discharge_w,
            ),
            ChannelSpec(
                "MaxChargePower", "W", ChannelAccess.READ, "Charge power the BMS allows now", 0, params.max_charge_w
            ),
            ChannelSpec(
                "MaxDischargePower",
                "W",
                ChannelAccess.READ,
                "Discharge power the BMS allows now",
                0,
                params.max_discharge_w,
            ),
            ChannelSpec("StoredEnergy", "Wh", ChannelAccess.READ, "Energy stored", 0, params.capacity_wh),
            ChannelSpec(
                "SetActivePower",
                "W",
                ChannelAccess.WRITE,
                "Power setpoint, positive discharging",
                -params.max_charge_w,
                params.max_discharge_w,
                dynamic_min=DynamicLimit("MaxChargePower", -1.0),
                dynamic_max=DynamicLimit("MaxDischargePower", 1.0),
            ),
        )

    @property
    def channels(self) -> tuple[ChannelSpec, ...]:
        return self._channels

    @property
    def soc(self) -> float:
        return 100 * self.energy_wh / self.params.capacity_wh

    def read(self, store: ChannelStore, now: float) -> None:
        if self._last is not None and now > self._last:
            self._integrate(now - self._last)
        self._last = now
        self._update_limits()
        # The BMS cuts power the moment a limit shrinks below it; it does not wait for a new setpoint.
        self.power_w = min(self.max_discharge_w, max(-self.max_charge_w, self.power_w))
        publish(
            store,
            self,
            {
                "Soc": self.soc,
                "ActivePower": self.power_w,
                "MaxChargePower": self.max_charge_w,
                "MaxDischargePower": self.max_discharge_w,
                "StoredEnergy": self.energy_wh,
            },
            now,
        )

    def write(self, store: ChannelStore) -> None:
        setpoint = self.output_value(store, "SetActivePower")
        target = 0.0 if setpoint is None else setpoint
        self.power_w = min(self.max_discharge_w, max(-self.max_charge_w, target))

    def _integrate(self, dt: float) -> None:
        p = self.power_w
        hours = dt / 3600
        delta = -p * hours / self._leg_efficiency if p >= 0 else -p * hours * self._leg_efficiency
        energy = self.energy_wh + delta
        if energy <= self._e_min or energy >= self._e_max:
            # The cycle was longer than the taper could cover: the BMS stopped at the bound.
            energy = min(self._e_max, max(self._e_min, energy))
            self.power_w = 0.0
        self.energy_wh = energy

    def _update_limits(self) -> None:
        p = self.params
        charge_headroom = self._e_max - self.energy_wh
        discharge_headroom = self.energy_wh - self._e_min
        self.max_charge_w = min(p.max_charge_w, charge_headroom * 3600 / (self._leg_efficiency * p.taper_s))
        self.max_discharge_w = min(p.max_discharge_w, discharge_headroom * 3600 * self._leg_efficiency / p.taper_s)
        self.max_charge_w = max(0.0, self.max_charge_w)
        self.max_discharge_w = max(0.0, self.max_discharge_w)
