"""Every device type a site config may name -> its parameter parser and constructor.

Simulators (`edge_daemon.devices`) and real-device drivers (`edge_daemon.drivers`) meet here, above
both, so drivers can build on the device base without the device package knowing the drivers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from edge_daemon.devices.base import Device
from edge_daemon.devices.battery import BatteryParams, SimBattery, parse_battery
from edge_daemon.devices.ev_charger import EvChargerParams, SimEvCharger, parse_ev_charger
from edge_daemon.devices.flexible_load import FlexibleLoadParams, SimFlexibleLoad, parse_flexible_load
from edge_daemon.devices.grid_meter import GridMeterParams, SimGridMeter, parse_grid_meter
from edge_daemon.devices.load import LoadParams, SimLoad, parse_load
from edge_daemon.devices.pv import PvParams, SimPvInverter, parse_pv
from edge_daemon.drivers import factory as drivers
from edge_daemon.params import ParamReader

SimParams = BatteryParams | PvParams | LoadParams | EvChargerParams | FlexibleLoadParams | GridMeterParams
DeviceParams = SimParams | drivers.DriverParams

PARSERS: dict[str, Callable[[ParamReader], DeviceParams]] = {
    SimBattery.type_name: parse_battery,
    SimPvInverter.type_name: parse_pv,
    SimLoad.type_name: parse_load,
    SimEvCharger.type_name: parse_ev_charger,
    SimFlexibleLoad.type_name: parse_flexible_load,
    SimGridMeter.type_name: parse_grid_meter,
    **drivers.PARSERS,
}


@dataclass(frozen=True, slots=True)
class SiteContext:
    """What devices may need to know about the site they are in."""

    latitude: float
    longitude: float
    timezone: ZoneInfo


def build_device(device_id: str, params: SimParams, site: SiteContext) -> Device:
    if isinstance(params, BatteryParams):
        return SimBattery(device_id, params)
    if isinstance(params, PvParams):
        return SimPvInverter(device_id, params, site.latitude, site.longitude)
    if isinstance(params, LoadParams):
        return SimLoad(device_id, params, site.timezone)
    if isinstance(params, EvChargerParams):
        return SimEvCharger(device_id, params, site.timezone)
    if isinstance(params, FlexibleLoadParams):
        return SimFlexibleLoad(device_id, params, site.timezone)
    return SimGridMeter(device_id, params)


def build_devices(specs: Sequence[tuple[str, DeviceParams]], site: SiteContext) -> list[Device]:
    # Drivers are built together: devices on one serial line share its connection.
    driver_specs = [(i, p) for i, p in specs if isinstance(p, drivers.DriverParams)]
    built = iter(drivers.build_drivers(driver_specs))
    devices = [
        next(built) if isinstance(params, drivers.DriverParams) else build_device(device_id, params, site)
        for device_id, params in specs
    ]
    for device in devices:
        if isinstance(device, SimGridMeter):
            device.bind(devices)
    return devices
