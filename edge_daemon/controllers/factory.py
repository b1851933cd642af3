"""Controller type names (as written in the site config) -> parameter parsers and constructors."""

from __future__ import annotations

from collections.abc import Callable

from edge_daemon.controllers.base import Controller
from edge_daemon.controllers.manual_override import (
    ManualOverride,
    ManualOverrideParams,
    parse_manual_override,
)
from edge_daemon.controllers.peak_shaving import PeakShaving, PeakShavingParams, parse_peak_shaving
from edge_daemon.controllers.schedule_follower import (
    ScheduleFollower,
    ScheduleFollowerParams,
    parse_schedule_follower,
)
from edge_daemon.controllers.self_consumption import (
    SelfConsumption,
    SelfConsumptionParams,
    parse_self_consumption,
)
from edge_daemon.devices.site import SiteDevices
from edge_daemon.params import ParamReader

ControllerParams = ManualOverrideParams | SelfConsumptionParams | PeakShavingParams | ScheduleFollowerParams

PARSERS: dict[str, Callable[[ParamReader], ControllerParams]] = {
    ManualOverride.type_name: parse_manual_override,
    SelfConsumption.type_name: parse_self_consumption,
    PeakShaving.type_name: parse_peak_shaving,
    ScheduleFollower.type_name: parse_schedule_follower,
}


def references(params: ControllerParams) -> list[tuple[str, str, bool]]:
    """The channels a controller's parameters point at: (parameter, channel, must be writable)."""
    if isinstance(params, ManualOverrideParams):
        return []
    refs = [
        ("battery", f"{params.battery}/SetActivePower", True),
        ("battery", f"{params.battery}/ActivePower", False),
    ]
    meter = params.grid_meter
    if meter is not None:
        refs.append(("grid_meter", f"{meter}/ActivePower", False))
    return refs


def build_controller(params: ControllerParams, devices: SiteDevices) -> Controller:
    if isinstance(params, ManualOverrideParams):
        return ManualOverride(params)
    if isinstance(params, SelfConsumptionParams):
        return SelfConsumption(params)
    if isinstance(params, PeakShavingParams):
        return PeakShaving(params)
    return ScheduleFollower(params, devices)
