"""Devices: the shared interface, simulators and the base for polling drivers."""

from edge_daemon.devices.base import Access, ChannelSpec, Device, DynamicLimit
from edge_daemon.devices.site import Limits, SiteDevices

__all__ = ["Access", "ChannelSpec", "Device", "DynamicLimit", "Limits", "SiteDevices"]
