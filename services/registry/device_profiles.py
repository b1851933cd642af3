"""Device profiles: mapping, validation, storage, the RegistryService's reads and changes, and the
lookup the command service validates commands with.

from services.registry import channel_spec
spec = await channel_spec(conn, edge_pk, "battery_1", "SetActivePower")
# -> emma.common.v1.types_pb2.ChannelSpec (unit, category, access, value_type, min/max, enums,
#    dynamic limit channels), or None when the edge has no such registered device, the device's
#    profile has no such channel, or the device is not in the registry.
"""

from __future__ import annotations

import math
import re
from typing import Any

import asyncpg
from emma.common.v1 import types_pb2
from emma.registry.v1 import registry_pb2
from google.protobuf import field_mask_pb2

from services.errors import invalid_field, not_found
from services.names import DeviceProfileName, parse_device_profile
from services.pagination import Page
from services.platform.migrations import Conn
from services.platform.rpc import timestamp
from services.registry.errors import already_exists, has_children
from services.registry.masks import apply_mask

CHANNEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
UPDATABLE = {"display_name", "kind", "manufacturer", "model", "channels"}
WRITABLE = (types_pb2.CHANNEL_ACCESS_READ_WRITE, types_pb2.CHANNEL_ACCESS_WRITE_ONLY)
MAX_CHANNELS = 1000


async def channel_spec(conn: Conn, edge_pk: int, device_id: str, channel: str) -> types_pb2.ChannelSpec | None:
    """The ChannelSpec of `device_id/channel` on the edge from the device's registered profile."""
    blob = await conn.fetchval(
        """SELECT c.spec FROM app.devices d
           JOIN app.device_profile_channels c ON c.org_id = d.org_id AND c.profile_id = d.profile_id
           WHERE d.edge_pk = $1 AND d.device_id = $2 AND c.name = $3""",
        edge_pk,
        device_id,
        channel,
    )
    return None if blob is None else types_pb2.ChannelSpec.FromString(bytes(blob))


def validate_profile(profile: registry_pb2.DeviceProfile, prefix: str = "device_profile") -> None:
    """FIELD_INVALID naming the first bad field of a profile."""
    if profile.kind == types_pb2.DEVICE_KIND_UNSPECIFIED or profile.kind not in types_pb2.DeviceKind.values():
        raise invalid_field(f"{prefix}.kind", "set the device kind")
    for f in ("display_name", "manufacturer", "model"):
        if len(getattr(profile, f)) > 200:
            raise invalid_field(f"{prefix}.{f}", "at most 200 characters")
    if not profile.channels:
        raise invalid_field(f"{prefix}.channels", "declare at least one channel")
    if len(profile.channels) > MAX_CHANNELS:
        raise invalid_field(f"{prefix}.channels", f"at most {MAX_CHANNELS} channels")
    names = [c.name for c in profile.channels]
    seen: set[str] = set()
    for i, c in enumerate(profile.channels):
        where = f"{prefix}.channels[{i}]"
        if not CHANNEL_NAME.match(c.name):
            raise invalid_field(f"{where}.name", f"{c.name!r} is not a channel name (letters, digits, _ . -)")
        if c.name in seen:
            raise invalid_field(f"{where}.name", f"{c.name!r} is declared twice")
        seen.add(c.name)
        if len(c.unit) > 32:
            raise invalid_field(f"{where}.unit", "at most 32 characters")
        for bound in ("min_value", "max_value"):
            if c.HasField(bound) and not math.isfinite(getattr(c, bound)):
                raise invalid_field(f"{where}.{bound}", "must be finite")
        if c.HasField("min_value") and c.HasField("max_value") and c.min_value > c.max_value:
            raise invalid_field(f"{where}.min_value", "is larger than max_value")
        if c.value_type == types_pb2.VALUE_TYPE_ENUM:
            if not c.enum_values:
                raise invalid_field(f"{where}.enum_values", "an enum channel lists its values")
            numbers = [e.number for e in c.enum_values]
            if len(set(numbers)) != len(numbers):
                raise invalid_field(f"{where}.enum_values", "numbers must be unique")
        elif c.enum_values:
            raise invalid_field(f"{where}.enum_values", "only enum channels list values")
        for dyn in ("dynamic_max_channel", "dynamic_min_channel"):
            ref = getattr(c, dyn)
            if ref and ref not in names:
                raise invalid_field(f"{where}.{dyn}", f"{ref!r} is not a channel of this profile")
            if ref and c.access not in WRITABLE:
                raise invalid_field(f"{where}.{dyn}", "only writable channels have dynamic limits")


async def store_channels(conn: Conn, org: str, profile_id: str, channels: Any) -> None:
    await conn.execute("DELETE FROM app.device_profile_channels WHERE org_id = $1 AND profile_id = $2", org, profile_id)
    await conn.executemany(
        """INSERT INTO app.device_profile_channels (org_id, profile_id, position, name, unit, writable, spec)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        [
            (org, profile_id, i, c.name, c.unit, c.access in WRITABLE, c.SerializeToString(deterministic=True))
            for i, c in enumerate(channels)
        ],
    )


async def load_channels(conn: Conn, org: str, profile_id: str) -> list[types_pb2.ChannelSpec]:
    rows = await conn.fetch(
        "SELECT spec FROM app.device_profile_channels WHERE org_id = $1 AND profile_id = $2 ORDER BY position",
        org,
        profile_id,
    )
    return [types_pb2.ChannelSpec.FromString(bytes(r["spec"])) for r in rows]


def profile_message(r: Any, channels: list[types_pb2.ChannelSpec]) -> registry_pb2.DeviceProfile:
    return registry_pb2.DeviceProfile(
        name=f"organizations/{r['org_id']}/deviceProfiles/{r['profile_id']}",
        display_name=r["display_name"],
        kind=r["kind"],
        manufacturer=r["manufacturer"],
        model=r["model"],
        channels=channels,
        create_time=timestamp(r["create_time"]),
        update_time=timestamp(r["update_time"]),
    )


async def profile_in_organization(conn: Conn, org: str, profile_name: str, field: str) -> str:
    """The id of the named profile, which must be one of the organization's; NOT_FOUND otherwise."""
    profile = parse_device_profile(profile_name, field)
    if profile.org != org:
        # A profile of another organization: as good as missing (and its name must not leak).
        raise not_found(profile_name)
    if (
        await conn.fetchval(
            "SELECT 1 FROM app.device_profiles WHERE org_id = $1 AND profile_id = $2", org, profile.profile
        )
        is None
    ):
        raise not_found(profile_name)
    return profile.profile


async def get_profile(conn: Conn, profile: DeviceProfileName, lock: bool = False) -> registry_pb2.DeviceProfile:
    row = await conn.fetchrow(
        "SELECT * FROM app.device_profiles WHERE org_id = $1 AND profile_id = $2" + (" FOR UPDATE" if lock else ""),
        profile.org,
        profile.profile,
    )
    if row is None:
        raise not_found(str(profile))
    return profile_message(row, await load_channels(conn, profile.org, profile.profile))


async def list_profiles(conn: Conn, org: str, page: Page) -> registry_pb2.ListDeviceProfilesResponse:
    rows = await conn.fetch(
        "SELECT * FROM app.device_profiles WHERE org_id = $1 ORDER BY profile_id OFFSET $2 LIMIT $3",
        org,
        page.offset,
        page.limit,
    )
    items = [profile_message(r, await load_channels(conn, org, r["profile_id"])) for r in page.rows(rows)]
    token = page.next_token(rows)
    return registry_pb2.ListDeviceProfilesResponse(device_profiles=items, next_page_token=token)


async def create_profile(
    conn: Conn, profile: DeviceProfileName, p: registry_pb2.DeviceProfile
) -> registry_pb2.DeviceProfile:
    try:
        await conn.execute(
            """INSERT INTO app.device_profiles (org_id, profile_id, display_name, kind, manufacturer, model)
               VALUES ($1, $2, $3, $4, $5, $6)""",
            profile.org,
            profile.profile,
            p.display_name,
            p.kind,
            p.manufacturer,
            p.model,
        )
    except asyncpg.UniqueViolationError:
        raise already_exists(str(profile)) from None
    except asyncpg.ForeignKeyViolationError:
        raise not_found(f"organizations/{profile.org}") from None
    await store_channels(conn, profile.org, profile.profile, p.channels)
    return await get_profile(conn, profile)


async def update_profile(
    conn: Conn, profile: DeviceProfileName, patch: registry_pb2.DeviceProfile, mask: field_mask_pb2.FieldMask
) -> registry_pb2.DeviceProfile:
    """In the caller's transaction (the row is locked while the mask is applied)."""
    current = await get_profile(conn, profile, lock=True)
    merged = apply_mask(current, patch, mask, UPDATABLE, "DeviceProfile")
    validate_profile(merged)
    await conn.execute(
        """UPDATE app.device_profiles SET display_name = $3, kind = $4, manufacturer = $5, model = $6,
               update_time = now() WHERE org_id = $1 AND profile_id = $2""",
        profile.org,
        profile.profile,
        merged.display_name,
        merged.kind,
        merged.manufacturer,
        merged.model,
    )
    await store_channels(conn, profile.org, profile.profile, merged.channels)
    return await get_profile(conn, profile)


async def delete_profile(conn: Conn, profile: DeviceProfileName, force: bool) -> None:
    """In the caller's transaction; with `force`, the devices using it go too."""
    await get_profile(conn, profile, lock=True)
    org, profile_id = profile.org, profile.profile
    used = await conn.fetchval(
        "SELECT count(*) FROM app.devices WHERE org_id = $1 AND profile_id = $2", org, profile_id
    )
    if used and not force:
        raise has_children(str(profile), f"{used} device(s) using it")
    await conn.execute("DELETE FROM app.devices WHERE org_id = $1 AND profile_id = $2", org, profile_id)
    await conn.execute("DELETE FROM app.device_profiles WHERE org_id = $1 AND profile_id = $2", org, profile_id)
