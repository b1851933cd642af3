"""Simulated grid meter: measures what the other devices leave unbalanced.

Sign convention: ActivePower is positive when importing from the grid and negative when exporting.
With every device's ActivePower mapped onto the site bus by its `site_power_sign`,
grid = consumption - generation, so PV + import + discharge = load + EV + charge + export holds by
construction for the values of one cycle.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from edge_daemon.channels import ChannelStore
from edge_daemon.devices.base import ChannelAccess, ChannelSpec, Device, publish
from edge_daemon.params import ParamReader


@dataclass(frozen=True, slots=True)
class GridMeterParams:
    """No parameters yet; the members are every other device that takes part in the power balance."""


def parse_grid_meter(r: ParamReader) -> GridMeterParams:
    return GridMeterParams()


class SimGridMeter(Device):
    type_name = "sim_grid_meter"
    read_phase = 1  # after the devices whose fresh readings it balances

    def __init__(self, device_id: str, params: GridMeterParams) -> None:
        super().__init__(device_id)
        self.params = params
        self.power_w = 0.0
        self._members: tuple[tuple[str, int], ...] = ()
        self._channels = (
            ChannelSpec("ActivePower", "W", ChannelAccess.READ, "Grid power, positive importing"),
            ChannelSpec("ImportPower", "W", ChannelAccess.READ, "Power imported", 0, None),
            ChannelSpec("ExportPower", "W", ChannelAccess.READ, "Power exported", 0, None),
        )

    @property
    def channels(self) -> tuple[ChannelSpec, ...]:
        return self._channels

    def bind(self, devices: Iterable[Device]) -> None:
        self._members = tuple(
            (d.address("ActivePower"), d.site_power_sign) for d in devices if d is not self and d.site_power_sign != 0
        )

    @property
    def members(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self._members)

    def read(self, store: ChannelStore, now: float) -> None:
        fed_in = 0.0
        for name, sign in self._members:
            cv = store.get(name)
            if cv is not None and isinstance(cv.value, int | float):
                fed_in += sign * float(cv.value)
        self.power_w = -fed_in
        publish(
            store,
            self,
            {
                "ActivePower": self.power_w,
                "ImportPower": max(0.0, self.power_w),
                "ExportPower": max(0.0, -self.power_w),
            },
            now,
        )

    def write(self, store: ChannelStore) -> None:
        """A meter has nothing to control."""
