"""Organizations as the RegistryService shows them: mapping and validation; identity owns their rows
(app.organizations) and memberships, so reads and changes go through its package face."""

from __future__ import annotations

from typing import Any

from emma.registry.v1 import registry_pb2
from google.protobuf import field_mask_pb2

from services import identity
from services.errors import not_found
from services.pagination import Page
from services.platform.migrations import Conn
from services.platform.rpc import timestamp
from services.registry import erase
from services.registry.errors import already_exists, has_children
from services.registry.fields import require_display_name
from services.registry.masks import apply_mask
from services.registry.ports import RegistryPorts

UPDATABLE = {"display_name"}


def organization_message(r: Any) -> registry_pb2.Organization:
    return registry_pb2.Organization(
        name=f"organizations/{r['org_id']}",
        display_name=r["display_name"],
        create_time=timestamp(r["create_time"]),
        update_time=timestamp(r["update_time"]),
    )


def validate_organization(o: registry_pb2.Organization, prefix: str = "organization") -> None:
    require_display_name(o.display_name, f"{prefix}.display_name")


async def get_organization(conn: Conn, org: str) -> registry_pb2.Organization:
    row = await identity.organization(conn, org)
    if row is None:
        raise not_found(f"organizations/{org}")
    return organization_message(row)


async def list_organizations(conn: Conn, orgs: list[str], page: Page) -> registry_pb2.ListOrganizationsResponse:
    rows = await identity.organizations(conn, orgs, page.offset, page.limit)
    token = page.next_token(rows)
    return registry_pb2.ListOrganizationsResponse(
        organizations=[organization_message(r) for r in page.rows(rows)], next_page_token=token
    )


async def create_organization(
    conn: Conn, org: str, o: registry_pb2.Organization, creator_user_id: str
) -> registry_pb2.Organization:
    """Create it with its creator as administrator (who can then invite its people)."""
    row = await identity.create_organization(conn, org, o.display_name, creator_user_id)
    if row is None:
        raise already_exists(f"organizations/{org}")
    return organization_message(row)


async def update_organization(
    conn: Conn, org: str, patch: registry_pb2.Organization, mask: field_mask_pb2.FieldMask
) -> registry_pb2.Organization:
    """In the caller's transaction (the row is locked while the mask is applied)."""
    row = await identity.organization(conn, org, for_update=True)
    if row is None:
        raise not_found(f"organizations/{org}")
    merged = apply_mask(organization_message(row), patch, mask, UPDATABLE, "Organization")
    validate_organization(merged)
    return organization_message(await identity.rename_organization(conn, org, merged.display_name))


async def delete_organization(conn: Conn, org: str, force: bool, ports: RegistryPorts) -> None:
    """In the caller's transaction; with `force`, its sites (and everything on them) go too."""
    if await identity.organization(conn, org, for_update=True) is None:
        raise not_found(f"organizations/{org}")
    sites = await conn.fetch("SELECT site_id FROM app.sites WHERE org_id = $1", org)
    profiles_n = await conn.fetchval("SELECT count(*) FROM app.device_profiles WHERE org_id = $1", org)
    if (sites or profiles_n) and not force:
        raise has_children(f"organizations/{org}", "sites or device profiles")
    for s in sites:
        await erase.delete_site_data(conn, org, s["site_id"], ports)
    await identity.delete_organization(conn, org)
