"""Resource names (AIP-122): parsing and formatting in one place."""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.errors import invalid_field

_ID = r"[a-z][a-z0-9-]{0,62}"
ID_PATTERN = re.compile(rf"^{_ID}$")
_EDGE = re.compile(rf"^organizations/({_ID})/sites/({_ID})/edges/({_ID})$")
_SITE = re.compile(rf"^organizations/({_ID})/sites/({_ID})$")
# Device ids and channel names come from devices and configuration files: allow underscores/capitals.
_DEVICE_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
_CHANNEL_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
CHANNEL_ADDRESS = re.compile(rf"^({_DEVICE_ID})/({_CHANNEL_NAME})$")


@dataclass(frozen=True)
class SiteName:
    org: str
    site: str

    def __str__(self) -> str:
        return f"organizations/{self.org}/sites/{self.site}"


@dataclass(frozen=True)
class EdgeName:
    org: str
    site: str
    edge: str

    @property
    def site_name(self) -> SiteName:
        return SiteName(self.org, self.site)

    def __str__(self) -> str:
        return f"organizations/{self.org}/sites/{self.site}/edges/{self.edge}"


def parse_site(name: str, field: str = "name") -> SiteName:
    m = _SITE.match(name)
    if not m:
        raise invalid_field(field, f"{name!r} is not organizations/{{organization}}/sites/{{site}}")
    return SiteName(*m.groups())


def parse_edge(name: str, field: str = "name") -> EdgeName:
    m = _EDGE.match(name)
    if not m:
        raise invalid_field(field, f"{name!r} is not organizations/{{organization}}/sites/{{site}}/edges/{{edge}}")
    return EdgeName(*m.groups())


def channel_resource(edge: EdgeName, address: str) -> str:
    """ "battery_1/Soc" on an edge -> .../edges/{edge}/devices/battery_1/channels/Soc."""
    device, channel = address.split("/", 1)
    return f"{edge}/devices/{device}/channels/{channel}"


_SCOPE = re.compile(rf"^organizations/({_ID})/sites/({_ID})(?:/edges/({_ID})(?:/devices/({_DEVICE_ID}))?)?$")
_CHANNEL = re.compile(
    rf"^organizations/({_ID})/sites/({_ID})/edges/({_ID})/devices/({_DEVICE_ID})/channels/({_CHANNEL_NAME})$"
)


@dataclass(frozen=True)
class Scope:
    """A site, an edge of it, or a device of that edge: the parents telemetry reads accept."""

    org: str
    site: str
    edge: str | None = None
    device: str | None = None


def parse_scope(name: str, field: str = "parent") -> Scope:
    m = _SCOPE.match(name)
    if not m:
        raise invalid_field(field, f"{name!r} is not a site, edge or device resource name")
    return Scope(*m.groups())


@dataclass(frozen=True)
class ChannelName:
    edge: EdgeName
    device: str
    channel: str

    @property
    def address(self) -> str:
        return f"{self.device}/{self.channel}"


def parse_channel(name: str, field: str = "channels") -> ChannelName:
    m = _CHANNEL.match(name)
    if not m:
        raise invalid_field(field, f"{name!r} is not .../edges/{{edge}}/devices/{{device}}/channels/{{channel}}")
    org, site, edge, device, channel = m.groups()
    return ChannelName(EdgeName(org, site, edge), device, channel)
