"""Controllers: control strategies run by the cycle in priority order (last write wins)."""

from edge_daemon.controllers.base import Controller, CycleContext
from edge_daemon.controllers.manual_override import ManualOverride
from edge_daemon.controllers.peak_shaving import PeakShaving
from edge_daemon.controllers.schedule_follower import SafeMode, Schedule, ScheduleEntry, ScheduleFollower
from edge_daemon.controllers.self_consumption import SelfConsumption

__all__ = [
    "Controller",
    "CycleContext",
    "ManualOverride",
    "PeakShaving",
    "SafeMode",
    "Schedule",
    "ScheduleEntry",
    "ScheduleFollower",
    "SelfConsumption",
]
