"""Devices on an edge: mapping and the RegistryService's reads and changes."""

from __future__ import annotations

from typing import Any

import asyncpg
from emma.registry.v1 import registry_pb2
from google.protobuf import field_mask_pb2

from services.errors import invalid_field, not_found
from services.names import DeviceName, EdgeName
from services.pagination import Page
from services.platform.migrations import Conn
from services.platform.rpc import timestamp
from services.registry.device_profiles import profile_in_organization
from services.registry.edges import edge_pk
from services.registry.errors import already_exists
from services.registry.fields import validate_display_name
from services.registry.masks import apply_mask

UPDATABLE = {"display_name", "device_profile"}

_DEVICE_SELECT = """
SELECT d.*, e.site_id, e.edge_id, p.kind
FROM app.devices d JOIN app.edges e ON e.pk = d.edge_pk
JOIN app.device_profiles p ON p.org_id = d.org_id AND p.profile_id = d.profile_id
"""


def validate_new_device(d: registry_pb2.Device) -> None:
    validate_display_name(d.display_name, "device.display_name")
    if not d.device_profile:
        raise invalid_field("device.device_profile", "name the device profile")


def device_message(r: Any) -> registry_pb2.Device:
    return registry_pb2.Device(
        name=f"organizations/{r['org_id']}/sites/{r['site_id']}/edges/{r['edge_id']}/devices/{r['device_id']}",
        display_name=r["display_name"],
        device_profile=f"organizations/{r['org_id']}/deviceProfiles/{r['profile_id']}",
        kind=r["kind"],
        create_time=timestamp(r["create_time"]),
        update_time=timestamp(r["update_time"]),
    )


async def _device_row(conn: Conn, device: DeviceName) -> Any:
    edge = device.edge
    row = await conn.fetchrow(
        _DEVICE_SELECT + " WHERE e.org_id = $1 AND e.site_id = $2 AND e.edge_id = $3 AND d.device_id = $4",
        edge.org,
        edge.site,
        edge.edge,
        device.device,
    )
    if row is None:
        raise not_found(str(device))
    return row


async def get_device(conn: Conn, device: DeviceName) -> registry_pb2.Device:
    return device_message(await _device_row(conn, device))


async def list_devices(conn: Conn, edge: EdgeName, page: Page) -> registry_pb2.ListDevicesResponse:
    pk = await edge_pk(conn, edge)
    if pk is None:
        raise not_found(str(edge))
    rows = await conn.fetch(
        _DEVICE_SELECT + " WHERE d.edge_pk = $1 ORDER BY d.device_id OFFSET $2 LIMIT $3",
        pk,
        page.offset,
        page.limit,
    )
    token = page.next_token(rows)
    return registry_pb2.ListDevicesResponse(devices=[device_message(r) for r in page.rows(rows)], next_page_token=token)


async def create_device(conn: Conn, device: DeviceName, d: registry_pb2.Device) -> registry_pb2.Device:
    edge = device.edge
    pk = await edge_pk(conn, edge)
    if pk is None:
        raise not_found(str(edge))
    profile = await profile_in_organization(conn, edge.org, d.device_profile, "device.device_profile")
    try:
        await conn.execute(
            """INSERT INTO app.devices (edge_pk, device_id, org_id, profile_id, display_name)
               VALUES ($1, $2, $3, $4, $5)""",
            pk,
            device.device,
            edge.org,
            profile,
            d.display_name,
        )
    except asyncpg.UniqueViolationError:
        raise already_exists(str(device)) from None
    return device_message(await _device_row(conn, device))


async def update_device(
    conn: Conn, device: DeviceName, patch: registry_pb2.Device, mask: field_mask_pb2.FieldMask
) -> registry_pb2.Device:
    row = await _device_row(conn, device)
    merged = apply_mask(device_message(row), patch, mask, UPDATABLE, "Device")
    validate_display_name(merged.display_name, "device.display_name")
    profile = await profile_in_organization(conn, device.edge.org, merged.device_profile, "device.device_profile")
    await conn.execute(
        """UPDATE app.devices SET display_name = $3, profile_id = $4, update_time = now()
           WHERE edge_pk = $1 AND device_id = $2""",
        row["edge_pk"],
        row["device_id"],
        merged.display_name,
        profile,
    )
    return device_message(await _device_row(conn, device))


async def delete_device(conn: Conn, device: DeviceName) -> None:
    row = await _device_row(conn, device)
    await conn.execute(
        "DELETE FROM app.devices WHERE edge_pk = $1 AND device_id = $2", row["edge_pk"], row["device_id"]
    )
