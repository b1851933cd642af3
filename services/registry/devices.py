"""Devices on an edge: mapping and the RegistryService's reads and changes.

An edge's devices are those registered through the API (`app.devices`, with a device profile) and
those the edge itself reports in its Hello (`app.edge_inventory`). Reading shows both: a device the
edge reports but nobody registered is listed with an empty `device_profile`, the kind the edge
reported and its model (or id) as display name, so `ListDevices` of a running edge is never empty.
Registering it (CreateDevice with the same id) gives it a profile; the registered entry then wins.
Update and delete act on registered devices only: what an edge reports changes with its site file.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import grpc
from emma.common.v1 import errors_pb2
from emma.registry.v1 import registry_pb2
from google.protobuf import field_mask_pb2

from services.errors import ApiError, invalid_field, not_found
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


# Registered devices, then reported ones nobody registered, as one ordered list of the same columns.
_EDGE_DEVICES = """
SELECT device_id, display_name, profile_id, kind, create_time, update_time FROM (
    SELECT d.device_id, d.display_name, d.profile_id, p.kind, d.create_time, d.update_time
    FROM app.devices d JOIN app.device_profiles p ON p.org_id = d.org_id AND p.profile_id = d.profile_id
    WHERE d.edge_pk = $1
    UNION ALL
    SELECT i.device_id, COALESCE(NULLIF(i.model, ''), i.device_id), NULL, i.kind, i.update_time, i.update_time
    FROM app.edge_inventory i
    WHERE i.edge_pk = $1
      AND NOT EXISTS (SELECT 1 FROM app.devices d WHERE d.edge_pk = i.edge_pk AND d.device_id = i.device_id)
) edge_devices
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


def edge_device_message(edge: EdgeName, r: Any) -> registry_pb2.Device:
    """A row of _EDGE_DEVICES: registered (with its profile) or only reported by the edge (without)."""
    return registry_pb2.Device(
        name=str(DeviceName(edge, r["device_id"])),
        display_name=r["display_name"],
        device_profile="" if r["profile_id"] is None else f"organizations/{edge.org}/deviceProfiles/{r['profile_id']}",
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
        raise await _not_registered(conn, device)
    return row


async def _not_registered(conn: Conn, device: DeviceName) -> ApiError:
    """NOT_FOUND for a device without a registration; for one its edge reports, saying how to register it."""
    edge = device.edge
    reported = await conn.fetchval(
        """SELECT 1 FROM app.edge_inventory i JOIN app.edges e ON e.pk = i.edge_pk
           WHERE e.org_id = $1 AND e.site_id = $2 AND e.edge_id = $3 AND i.device_id = $4""",
        edge.org,
        edge.site,
        edge.edge,
        device.device,
    )
    if not reported:
        return not_found(str(device))
    return ApiError(
        grpc.StatusCode.NOT_FOUND,
        errors_pb2.ERROR_REASON_RESOURCE_NOT_FOUND,
        f"{device} is reported by its edge but not registered; CreateDevice with a device profile registers it",
        metadata={"resource": str(device)},
    )


async def get_device(conn: Conn, device: DeviceName) -> registry_pb2.Device:
    pk = await edge_pk(conn, device.edge)
    row = None if pk is None else await conn.fetchrow(_EDGE_DEVICES + " WHERE device_id = $2", pk, device.device)
    if row is None:
        raise not_found(str(device))
    return edge_device_message(device.edge, row)


async def list_devices(conn: Conn, edge: EdgeName, page: Page) -> registry_pb2.ListDevicesResponse:
    pk = await edge_pk(conn, edge)
    if pk is None:
        raise not_found(str(edge))
    rows = await conn.fetch(_EDGE_DEVICES + " ORDER BY device_id OFFSET $2 LIMIT $3", pk, page.offset, page.limit)
    token = page.next_token(rows)
    return registry_pb2.ListDevicesResponse(
        devices=[edge_device_message(edge, r) for r in page.rows(rows)], next_page_token=token
    )


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
