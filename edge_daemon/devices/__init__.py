"""Devices: the shared interface, simulators and the base for polling drivers."""

from edge_daemon.devices.base import ChannelAccess, ChannelSpec, Device, DynamicLimit
from edge_daemon.devices.site import Limits, SiteDevices

__all__ = ["ChannelAccess", "ChannelSpec", "Device", "DynamicLimit", "Limits", "SiteDevices"]
