"""Resource names (AIP-122): parsing and formatting in one place."""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.errors import invalid_field

_ID = r"[a-z][a-z0-9-]{0,62}"
ID_PATTERN = re.compile(rf"^{_ID}\Z")
_EDGE = re.compile(rf"^organizations/({_ID})/sites/({_ID})/edges/({_ID})\Z")
_SITE = re.compile(rf"^organizations/({_ID})/sites/({_ID})\Z")
# Device ids and channel names come from devices and configuration files: allow underscores/capitals.
_DEVICE_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
_CHANNEL_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
CHANNEL_ADDRESS = re.compile(rf"^({_DEVICE_ID})/({_CHANNEL_NAME})\Z")


def _groups(pattern: re.Pattern[str], name: str, field: str, refusal: str) -> tuple[str, ...]:
    """The pattern's groups in `name`, or INVALID_ARGUMENT on `field` saying what was expected."""
    m = pattern.match(name)
    if not m:
        raise invalid_field(field, refusal)
    return m.groups()


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
    return SiteName(*_groups(_SITE, name, field, f"{name!r} is not organizations/{{organization}}/sites/{{site}}"))


def parse_edge(name: str, field: str = "name") -> EdgeName:
    return EdgeName(
        *_groups(_EDGE, name, field, f"{name!r} is not organizations/{{organization}}/sites/{{site}}/edges/{{edge}}")
    )


def channel_resource(edge: EdgeName, address: str) -> str:
    """ "battery_1/Soc" on an edge -> .../edges/{edge}/devices/battery_1/channels/Soc."""
    device, channel = address.split("/", 1)
    return f"{edge}/devices/{device}/channels/{channel}"


_SCOPE = re.compile(rf"^organizations/({_ID})/sites/({_ID})(?:/edges/({_ID})(?:/devices/({_DEVICE_ID}))?)?\Z")
_CHANNEL = re.compile(
    rf"^organizations/({_ID})/sites/({_ID})/edges/({_ID})/devices/({_DEVICE_ID})/channels/({_CHANNEL_NAME})\Z"
)


@dataclass(frozen=True)
class Scope:
    """A site, an edge of it, or a device of that edge: the parents telemetry reads accept."""

    org: str
    site: str
    edge: str | None = None
    device: str | None = None


def parse_scope(name: str, field: str = "parent") -> Scope:
    return Scope(*_groups(_SCOPE, name, field, f"{name!r} is not a site, edge or device resource name"))


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


# Registry resources (organizations, devices, device profiles); sites and edges are above.
_ORGANIZATION = re.compile(rf"^organizations/({_ID})\Z")
_DEVICE = re.compile(rf"^organizations/({_ID})/sites/({_ID})/edges/({_ID})/devices/({_DEVICE_ID})\Z")
_DEVICE_PROFILE = re.compile(rf"^organizations/({_ID})/deviceProfiles/({_ID})\Z")
DEVICE_ID_PATTERN = re.compile(rf"^{_DEVICE_ID}\Z")


def parse_organization(name: str, field: str = "name") -> str:
    """organizations/{organization} -> the organization id."""
    m = _ORGANIZATION.match(name)
    if not m:
        raise invalid_field(field, f"{name!r} is not organizations/{{organization}}")
    return m.group(1)


@dataclass(frozen=True)
class DeviceName:
    edge: EdgeName
    device: str

    def __str__(self) -> str:
        return f"{self.edge}/devices/{self.device}"


def parse_device(name: str, field: str = "name") -> DeviceName:
    org, site, edge, device = _groups(_DEVICE, name, field, f"{name!r} is not .../edges/{{edge}}/devices/{{device}}")
    return DeviceName(EdgeName(org, site, edge), device)


@dataclass(frozen=True)
class DeviceProfileName:
    org: str
    profile: str

    def __str__(self) -> str:
        return f"organizations/{self.org}/deviceProfiles/{self.profile}"


def parse_device_profile(name: str, field: str = "name") -> DeviceProfileName:
    return DeviceProfileName(
        *_groups(
            _DEVICE_PROFILE,
            name,
            field,
            f"{name!r} is not organizations/{{organization}}/deviceProfiles/{{device_profile}}",
        )
    )


# Identity resources: users ("users/me" is the caller), sessions, memberships, edge API keys, audit entries.
_USER_ID = r"[a-z0-9]{1,64}"
_USER = re.compile(rf"^users/({_USER_ID}|me)\Z")
_SESSION = re.compile(rf"^users/({_USER_ID}|me)/sessions/({_USER_ID})\Z")
_MEMBERSHIP = re.compile(rf"^organizations/({_ID})/memberships/({_USER_ID})\Z")
# The edge part is checked by parse_edge, so a bad edge gets the edge's own message.
_EDGE_API_KEY = re.compile(r"^(organizations/[^/]+/sites/[^/]+/edges/[^/]+)/apiKeys/([a-z0-9]{1,32})\Z")
_AUDIT_ENTRY = re.compile(rf"^organizations/({_ID})/auditEntries/([0-9]{{1,18}})\Z")


def parse_user(name: str, field: str = "name", *, allow_me: bool = True) -> str:
    """users/{user} -> the user id, or "me" (the caller) where allow_me."""
    m = _USER.match(name)
    if not m or (m.group(1) == "me" and not allow_me):
        raise invalid_field(field, f"{name!r} is not users/{{user}}" + (" or users/me" if allow_me else ""))
    return m.group(1)


@dataclass(frozen=True)
class SessionName:
    user: str  # a user id or "me"
    session: str


def parse_session(name: str, field: str = "name") -> SessionName:
    return SessionName(*_groups(_SESSION, name, field, f"{name!r} is not users/{{user}}/sessions/{{session}}"))


@dataclass(frozen=True)
class MembershipName:
    org: str
    user: str

    def __str__(self) -> str:
        return f"organizations/{self.org}/memberships/{self.user}"


def parse_membership(name: str, field: str = "name") -> MembershipName:
    return MembershipName(
        *_groups(_MEMBERSHIP, name, field, f"{name!r} is not organizations/{{organization}}/memberships/{{user}}")
    )


@dataclass(frozen=True)
class EdgeApiKeyName:
    edge: EdgeName
    key_id: str

    def __str__(self) -> str:
        return f"{self.edge}/apiKeys/{self.key_id}"


def parse_edge_api_key(name: str, field: str = "name") -> EdgeApiKeyName:
    edge, key_id = _groups(_EDGE_API_KEY, name, field, f"{name!r} is not .../edges/{{edge}}/apiKeys/{{api_key}}")
    return EdgeApiKeyName(parse_edge(edge, field), key_id)


@dataclass(frozen=True)
class AuditEntryName:
    org: str
    entry_id: int


def parse_audit_entry(name: str, field: str = "name") -> AuditEntryName:
    org, entry = _groups(
        _AUDIT_ENTRY, name, field, f"{name!r} is not organizations/{{organization}}/auditEntries/{{id}}"
    )
    return AuditEntryName(org, int(entry))
