"""RegistryService: organizations, sites, edges, devices and device profiles (AIP standard methods),
bulk provisioning from CSV, and GDPR erasure of a site.

Every call is scoped to the caller's organizations (services/auth): the interceptor checks the role
for the organization in the request path, and every query here carries that organization, so a
resource of another tenant is simply not found.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import zoneinfo
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import grpc
from emma.common.v1 import errors_pb2, types_pb2
from emma.registry.v1 import registry_pb2, registry_pb2_grpc
from google.protobuf import empty_pb2, field_mask_pb2, timestamp_pb2
from google.protobuf.message import Message

from services.errors import ApiError, invalid_field, not_found
from services.identity import ADMIN, Caller, caller, note_audit
from services.names import ID_PATTERN
from services.pagination import Page
from services.platform.idempotency import run_once
from services.platform.migrations import Conn
from services.platform.runtime import Runtime
from services.registry import bulk, erase, profiles
from services.registry.profiles import DEVICE_ID

Context = grpc.aio.ServicerContext[Any, Any]
M = TypeVar("M", bound=Message)
_SVC = "/emma.registry.v1.RegistryService/"

_ID = r"[a-z][a-z0-9-]{0,62}"
_DEV = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
ORG_NAME = re.compile(rf"^organizations/({_ID})$")
SITE_NAME = re.compile(rf"^organizations/({_ID})/sites/({_ID})$")
EDGE_NAME = re.compile(rf"^organizations/({_ID})/sites/({_ID})/edges/({_ID})$")
DEVICE_NAME = re.compile(rf"^organizations/({_ID})/sites/({_ID})/edges/({_ID})/devices/({_DEV})$")
PROFILE_NAME = re.compile(rf"^organizations/({_ID})/deviceProfiles/({_ID})$")
COUNTRY = re.compile(r"^[A-Z]{2}$")
BIDDING_ZONE = re.compile(r"^[A-Z0-9-]{0,16}$")
ZONES = zoneinfo.available_timezones()


def _parse(pattern: re.Pattern[str], name: str, field: str, shape: str) -> tuple[str, ...]:
    m = pattern.match(name)
    if not m:
        raise invalid_field(field, f"{name!r} is not {shape}")
    return m.groups()


def parse_org(name: str, field: str = "name") -> str:
    return _parse(ORG_NAME, name, field, "organizations/{organization}")[0]


def parse_site(name: str, field: str = "name") -> tuple[str, str]:
    org, site = _parse(SITE_NAME, name, field, "organizations/{organization}/sites/{site}")
    return org, site


def parse_edge(name: str, field: str = "name") -> tuple[str, str, str]:
    org, site, edge = _parse(EDGE_NAME, name, field, "organizations/{organization}/sites/{site}/edges/{edge}")
    return org, site, edge


def parse_device(name: str, field: str = "name") -> tuple[str, str, str, str]:
    org, site, edge, device = _parse(DEVICE_NAME, name, field, ".../edges/{edge}/devices/{device}")
    return org, site, edge, device


def parse_profile(name: str, field: str = "name") -> tuple[str, str]:
    org, profile = _parse(PROFILE_NAME, name, field, "organizations/{organization}/deviceProfiles/{device_profile}")
    return org, profile


def check_id(value: str, field: str, pattern: re.Pattern[str] = ID_PATTERN) -> str:
    if not pattern.match(value):
        raise invalid_field(
            field,
            f"{value!r} must be 1-63 characters: lowercase letters, digits, hyphens, starting with a letter"
            if pattern is ID_PATTERN
            else f"{value!r} must be 1-63 characters: letters, digits, _ . -, starting with a letter or digit",
        )
    return value


def _ts(t: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if t is None:
        return None
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(t)
    return out


def _exists(name: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.ALREADY_EXISTS,
        errors_pb2.ERROR_REASON_RESOURCE_EXISTS,
        f"{name} exists already",
        metadata={"resource": name},
    )


def has_children(name: str, what: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        errors_pb2.ERROR_REASON_HAS_CHILDREN,
        f"{name} still has {what}; delete them first or set force",
        metadata={"resource": name},
    )


def apply_mask(current: M, patch: M, mask: field_mask_pb2.FieldMask, updatable: set[str], field: str) -> M:
    """`current` with the masked fields taken from `patch` (AIP-134); empty or "*" means all updatable.

    Output-only fields in the mask are ignored; anything else that is not updatable is refused.
    """
    paths = list(mask.paths)
    if not paths or paths == ["*"]:
        paths = sorted(updatable)
    chosen = []
    for path in paths:
        top = path.split(".", 1)[0]
        if top in updatable:
            chosen.append(path)
        elif top in (
            "name",
            "create_time",
            "update_time",
            "kind",
            "connection_state",
            "last_seen_time",
            "agent_version",
            "clock_offset_ms",
        ):
            continue
        else:
            raise invalid_field("update_mask", f"{path!r} cannot be updated")
    fm = field_mask_pb2.FieldMask(paths=chosen)
    if not fm.IsValidForDescriptor(current.DESCRIPTOR):  # type: ignore[arg-type]
        raise invalid_field("update_mask", f"{', '.join(chosen)} does not name fields of {field}")
    merged = type(current)()
    merged.CopyFrom(current)
    fm.MergeMessage(patch, merged, replace_message_field=True, replace_repeated_field=True)
    return merged


# ---------------------------------------------------------------------------------- row -> message


def org_message(r: Any) -> registry_pb2.Organization:
    return registry_pb2.Organization(
        name=f"organizations/{r['org_id']}",
        display_name=r["display_name"],
        create_time=_ts(r["create_time"]),
        update_time=_ts(r["update_time"]),
    )


def site_message(r: Any) -> registry_pb2.Site:
    return registry_pb2.Site(
        name=f"organizations/{r['org_id']}/sites/{r['site_id']}",
        display_name=r["display_name"],
        location=types_pb2.GeoLocation(latitude_deg=r["latitude_deg"], longitude_deg=r["longitude_deg"]),
        time_zone=r["time_zone"],
        country_code=r["country_code"],
        bidding_zone=r["bidding_zone"],
        grid_import_limit_w=r["grid_import_limit_w"],
        grid_export_limit_w=r["grid_export_limit_w"],
        create_time=_ts(r["create_time"]),
        update_time=_ts(r["update_time"]),
    )


_EDGE_SELECT = """
SELECT e.*, s.online, s.last_seen_time, s.agent_version, s.clock_offset_ms, s.edge_pk AS session_pk
FROM app.edges e LEFT JOIN app.edge_sessions s ON s.edge_pk = e.pk
"""


def edge_message(r: Any) -> registry_pb2.Edge:
    if r["session_pk"] is None:
        state = registry_pb2.EDGE_CONNECTION_STATE_NEVER_CONNECTED
    elif r["online"]:
        state = registry_pb2.EDGE_CONNECTION_STATE_ONLINE
    else:
        state = registry_pb2.EDGE_CONNECTION_STATE_OFFLINE
    return registry_pb2.Edge(
        name=f"organizations/{r['org_id']}/sites/{r['site_id']}/edges/{r['edge_id']}",
        display_name=r["display_name"],
        connection_state=state,
        last_seen_time=_ts(r["last_seen_time"]),
        agent_version=r["agent_version"] or "",
        clock_offset_ms=r["clock_offset_ms"] or 0.0,
        create_time=_ts(r["create_time"]),
        update_time=_ts(r["update_time"]),
    )


_DEVICE_SELECT = """
SELECT d.*, e.site_id, e.edge_id, p.kind
FROM app.devices d JOIN app.edges e ON e.pk = d.edge_pk
JOIN app.device_profiles p ON p.org_id = d.org_id AND p.profile_id = d.profile_id
"""


def device_message(r: Any) -> registry_pb2.Device:
    return registry_pb2.Device(
        name=f"organizations/{r['org_id']}/sites/{r['site_id']}/edges/{r['edge_id']}/devices/{r['device_id']}",
        display_name=r["display_name"],
        device_profile=f"organizations/{r['org_id']}/deviceProfiles/{r['profile_id']}",
        kind=r["kind"],
        create_time=_ts(r["create_time"]),
        update_time=_ts(r["update_time"]),
    )


def profile_message(r: Any, channels: list[types_pb2.ChannelSpec]) -> registry_pb2.DeviceProfile:
    return registry_pb2.DeviceProfile(
        name=f"organizations/{r['org_id']}/deviceProfiles/{r['profile_id']}",
        display_name=r["display_name"],
        kind=r["kind"],
        manufacturer=r["manufacturer"],
        model=r["model"],
        channels=channels,
        create_time=_ts(r["create_time"]),
        update_time=_ts(r["update_time"]),
    )


# ---------------------------------------------------------------------------------- validation


def validate_org(o: registry_pb2.Organization, prefix: str = "organization") -> None:
    if not o.display_name.strip():
        raise invalid_field(f"{prefix}.display_name", "is required")
    if len(o.display_name) > 200:
        raise invalid_field(f"{prefix}.display_name", "at most 200 characters")


def validate_site(s: registry_pb2.Site, prefix: str = "site", fields: set[str] | None = None) -> None:
    """FIELD_INVALID (TIME_ZONE_INVALID) for the first bad field; `fields`: only these (an update)."""

    def checks(name: str) -> bool:
        return fields is None or name in fields

    if checks("display_name"):
        _site_display_name(s, prefix)
    if checks("location"):
        _site_location(s, prefix)
    if checks("time_zone"):
        _site_time_zone(s, prefix)
    if checks("country_code") and not COUNTRY.match(s.country_code):
        raise invalid_field(f"{prefix}.country_code", "must be an ISO 3166-1 alpha-2 code such as ES")
    if checks("bidding_zone") and not BIDDING_ZONE.match(s.bidding_zone):
        raise invalid_field(f"{prefix}.bidding_zone", "must be a bidding zone code such as ES or DE-LU")
    for f in ("grid_import_limit_w", "grid_export_limit_w"):
        v = getattr(s, f)
        if checks(f) and not (math.isfinite(v) and v >= 0):
            raise invalid_field(f"{prefix}.{f}", "must be a finite number of watts, at least 0")


def _site_display_name(s: registry_pb2.Site, prefix: str) -> None:
    if not s.display_name.strip():
        raise invalid_field(f"{prefix}.display_name", "is required")
    if len(s.display_name) > 200:
        raise invalid_field(f"{prefix}.display_name", "at most 200 characters")


def _site_location(s: registry_pb2.Site, prefix: str) -> None:
    lat, lon = s.location.latitude_deg, s.location.longitude_deg
    if not (math.isfinite(lat) and -90 <= lat <= 90):
        raise invalid_field(f"{prefix}.location.latitude_deg", "must be between -90 and 90")
    if not (math.isfinite(lon) and -180 <= lon <= 180):
        raise invalid_field(f"{prefix}.location.longitude_deg", "must be between -180 and 180")


def _site_time_zone(s: registry_pb2.Site, prefix: str) -> None:
    if s.time_zone not in ZONES:
        raise ApiError(
            grpc.StatusCode.INVALID_ARGUMENT,
            errors_pb2.ERROR_REASON_TIME_ZONE_INVALID,
            f"{prefix}.time_zone: {s.time_zone!r} is not an IANA time zone (for example Europe/Madrid)",
            metadata={"field": f"{prefix}.time_zone"},
            field_violations=[(f"{prefix}.time_zone", "not an IANA time zone")],
        )


def validate_display_name(value: str, field: str) -> None:
    if len(value) > 200:
        raise invalid_field(field, "at most 200 characters")


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._pool = runtime.pool
        self._runtime = runtime

    async def _once(
        self,
        me: Caller,
        method: str,
        request: Any,
        response_type: type[M],
        change: Callable[[Conn], Awaitable[M]],
    ) -> M:
        async with self._pool.acquire() as conn:
            return await run_once(
                conn,
                actor=me.actor,
                method=_SVC + method,
                request=request,
                request_id=request.request_id,
                response_type=response_type,
                change=change,
            )

    # ------------------------------------------------------------------ organizations

    async def GetOrganization(
        self, request: registry_pb2.GetOrganizationRequest, context: Context
    ) -> registry_pb2.Organization:
        org = parse_org(request.name)
        caller(context).require_org(org, resource=request.name)
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow("SELECT * FROM app.organizations WHERE org_id = $1", org)
        if row is None:
            raise not_found(request.name)
        return org_message(row)

    async def ListOrganizations(
        self, request: registry_pb2.ListOrganizationsRequest, context: Context
    ) -> registry_pb2.ListOrganizationsResponse:
        me = caller(context)
        page = Page.of("ListOrganizations", request)
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT * FROM app.organizations WHERE org_id = ANY($1::text[]) ORDER BY org_id OFFSET $2 LIMIT $3",
                me.orgs(),
                page.offset,
                page.limit,
            )
        token = page.next_token(rows)
        return registry_pb2.ListOrganizationsResponse(
            organizations=[org_message(r) for r in page.rows(rows)], next_page_token=token
        )

    async def CreateOrganization(
        self, request: registry_pb2.CreateOrganizationRequest, context: Context
    ) -> registry_pb2.Organization:
        me = caller(context)
        if not me.platform_admin:
            raise ApiError(
                grpc.StatusCode.PERMISSION_DENIED,
                errors_pb2.ERROR_REASON_ROLE_INSUFFICIENT,
                "only platform administrators may create organizations",
            )
        org = check_id(request.organization_id, "organization_id")
        validate_org(request.organization)
        name = f"organizations/{org}"
        note_audit(name)

        async def change(conn: Conn) -> registry_pb2.Organization:
            row = await conn.fetchrow(
                """INSERT INTO app.organizations (org_id, display_name) VALUES ($1, $2)
                   ON CONFLICT DO NOTHING RETURNING *""",
                org,
                request.organization.display_name,
            )
            if row is None:
                raise _exists(name)
            # The creator administers the new organization (and can then invite its people).
            await conn.execute(
                "INSERT INTO identity.memberships (org_id, user_id, role) VALUES ($1, $2, 3)", org, me.user_id
            )
            return org_message(row)

        return await self._once(me, "CreateOrganization", request, registry_pb2.Organization, change)

    async def UpdateOrganization(
        self, request: registry_pb2.UpdateOrganizationRequest, context: Context
    ) -> registry_pb2.Organization:
        me = caller(context)
        org = parse_org(request.organization.name, "organization.name")
        me.require_org(org, ADMIN, resource=request.organization.name)
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("SELECT * FROM app.organizations WHERE org_id = $1 FOR UPDATE", org)
            if row is None:
                raise not_found(request.organization.name)
            merged = apply_mask(
                org_message(row), request.organization, request.update_mask, {"display_name"}, "Organization"
            )
            validate_org(merged)
            row = await conn.fetchrow(
                "UPDATE app.organizations SET display_name = $2, update_time = now() WHERE org_id = $1 RETURNING *",
                org,
                merged.display_name,
            )
        return org_message(row)

    async def DeleteOrganization(
        self, request: registry_pb2.DeleteOrganizationRequest, context: Context
    ) -> empty_pb2.Empty:
        org = parse_org(request.name)
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("SELECT 1 FROM app.organizations WHERE org_id = $1 FOR UPDATE", org)
            if row is None:
                raise not_found(request.name)
            sites = await conn.fetch("SELECT site_id FROM app.sites WHERE org_id = $1", org)
            profiles_n = await conn.fetchval("SELECT count(*) FROM app.device_profiles WHERE org_id = $1", org)
            if (sites or profiles_n) and not request.force:
                raise has_children(request.name, "sites or device profiles")
            for s in sites:
                await erase.delete_site_data(conn, org, s["site_id"])
            await conn.execute("DELETE FROM app.organizations WHERE org_id = $1", org)
        return empty_pb2.Empty()

    # ------------------------------------------------------------------ sites

    async def GetSite(self, request: registry_pb2.GetSiteRequest, context: Context) -> registry_pb2.Site:
        org, site = parse_site(request.name)
        caller(context).require_org(org, resource=request.name)
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow("SELECT * FROM app.sites WHERE org_id = $1 AND site_id = $2", org, site)
        if row is None:
            raise not_found(request.name)
        return site_message(row)

    async def ListSites(
        self, request: registry_pb2.ListSitesRequest, context: Context
    ) -> registry_pb2.ListSitesResponse:
        org = parse_org(request.parent, "parent")
        caller(context).require_org(org, resource=request.parent)
        page = Page.of("ListSites", request)
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT * FROM app.sites WHERE org_id = $1 ORDER BY site_id OFFSET $2 LIMIT $3",
                org,
                page.offset,
                page.limit,
            )
        token = page.next_token(rows)
        return registry_pb2.ListSitesResponse(sites=[site_message(r) for r in page.rows(rows)], next_page_token=token)

    async def CreateSite(self, request: registry_pb2.CreateSiteRequest, context: Context) -> registry_pb2.Site:
        me = caller(context)
        org = parse_org(request.parent, "parent")
        me.require_org(org, ADMIN, resource=request.parent)
        site_id = check_id(request.site_id, "site_id")
        validate_site(request.site)
        name = f"{request.parent}/sites/{site_id}"
        note_audit(name)
        s = request.site

        async def change(conn: Conn) -> registry_pb2.Site:
            try:
                row = await conn.fetchrow(
                    """INSERT INTO app.sites (org_id, site_id, display_name, latitude_deg, longitude_deg, time_zone,
                           country_code, bidding_zone, grid_import_limit_w, grid_export_limit_w)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING *""",
                    org,
                    site_id,
                    s.display_name,
                    s.location.latitude_deg,
                    s.location.longitude_deg,
                    s.time_zone,
                    s.country_code,
                    s.bidding_zone,
                    s.grid_import_limit_w,
                    s.grid_export_limit_w,
                )
            except asyncpg.UniqueViolationError:
                raise _exists(name) from None
            except asyncpg.ForeignKeyViolationError:
                raise not_found(request.parent) from None
            return site_message(row)

        return await self._once(me, "CreateSite", request, registry_pb2.Site, change)

    async def UpdateSite(self, request: registry_pb2.UpdateSiteRequest, context: Context) -> registry_pb2.Site:
        me = caller(context)
        org, site = parse_site(request.site.name, "site.name")
        me.require_org(org, ADMIN, resource=request.site.name)
        updatable = {
            "display_name",
            "location",
            "time_zone",
            "country_code",
            "bidding_zone",
            "grid_import_limit_w",
            "grid_export_limit_w",
        }
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT * FROM app.sites WHERE org_id = $1 AND site_id = $2 FOR UPDATE", org, site
            )
            if row is None:
                raise not_found(request.site.name)
            s = apply_mask(site_message(row), request.site, request.update_mask, updatable, "Site")
            paths = list(request.update_mask.paths)
            validate_site(s, fields=None if not paths or paths == ["*"] else {p.split(".")[0] for p in paths})
            row = await conn.fetchrow(
                """UPDATE app.sites SET display_name = $3, latitude_deg = $4, longitude_deg = $5, time_zone = $6,
                       country_code = $7, bidding_zone = $8, grid_import_limit_w = $9, grid_export_limit_w = $10,
                       update_time = now()
                   WHERE org_id = $1 AND site_id = $2 RETURNING *""",
                org,
                site,
                s.display_name,
                s.location.latitude_deg,
                s.location.longitude_deg,
                s.time_zone,
                s.country_code,
                s.bidding_zone,
                s.grid_import_limit_w,
                s.grid_export_limit_w,
            )
        return site_message(row)

    async def DeleteSite(self, request: registry_pb2.DeleteSiteRequest, context: Context) -> empty_pb2.Empty:
        me = caller(context)
        org, site = parse_site(request.name)
        me.require_org(org, ADMIN, resource=request.name)
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT 1 FROM app.sites WHERE org_id = $1 AND site_id = $2 FOR UPDATE", org, site
            )
            if row is None:
                raise not_found(request.name)
            edges = await conn.fetchval("SELECT count(*) FROM app.edges WHERE org_id = $1 AND site_id = $2", org, site)
            if edges and not request.force:
                raise has_children(request.name, "edges")
            await erase.delete_site_data(conn, org, site)
        return empty_pb2.Empty()

    # ------------------------------------------------------------------ edges

    async def _edge_row(self, conn: Conn, name: str, field: str = "name", lock: bool = False) -> Any:
        org, site, edge = parse_edge(name, field)
        row = await conn.fetchrow(
            _EDGE_SELECT
            + " WHERE e.org_id = $1 AND e.site_id = $2 AND e.edge_id = $3"
            + (" FOR UPDATE OF e" if lock else ""),
            org,
            site,
            edge,
        )
        if row is None:
            raise not_found(name)
        return row

    async def GetEdge(self, request: registry_pb2.GetEdgeRequest, context: Context) -> registry_pb2.Edge:
        org, _, _ = parse_edge(request.name)
        caller(context).require_org(org, resource=request.name)
        async with self._pool.acquire() as conn:
            return edge_message(await self._edge_row(conn, request.name))

    async def ListEdges(
        self, request: registry_pb2.ListEdgesRequest, context: Context
    ) -> registry_pb2.ListEdgesResponse:
        org, site = parse_site(request.parent, "parent")
        caller(context).require_org(org, resource=request.parent)
        page = Page.of("ListEdges", request)
        async with self._pool.acquire() as conn:
            if await conn.fetchval("SELECT 1 FROM app.sites WHERE org_id = $1 AND site_id = $2", org, site) is None:
                raise not_found(request.parent)
            rows = await conn.fetch(
                _EDGE_SELECT + " WHERE e.org_id = $1 AND e.site_id = $2 ORDER BY e.edge_id OFFSET $3 LIMIT $4",
                org,
                site,
                page.offset,
                page.limit,
            )
        token = page.next_token(rows)
        return registry_pb2.ListEdgesResponse(edges=[edge_message(r) for r in page.rows(rows)], next_page_token=token)

    async def CreateEdge(self, request: registry_pb2.CreateEdgeRequest, context: Context) -> registry_pb2.Edge:
        me = caller(context)
        org, site = parse_site(request.parent, "parent")
        me.require_org(org, ADMIN, resource=request.parent)
        edge_id = check_id(request.edge_id, "edge_id")
        validate_display_name(request.edge.display_name, "edge.display_name")
        name = f"{request.parent}/edges/{edge_id}"
        note_audit(name)

        async def change(conn: Conn) -> registry_pb2.Edge:
            try:
                await conn.execute(
                    "INSERT INTO app.edges (org_id, site_id, edge_id, display_name) VALUES ($1, $2, $3, $4)",
                    org,
                    site,
                    edge_id,
                    request.edge.display_name,
                )
            except asyncpg.UniqueViolationError:
                raise _exists(name) from None
            except asyncpg.ForeignKeyViolationError:
                raise not_found(request.parent) from None
            return edge_message(await self._edge_row(conn, name))

        return await self._once(me, "CreateEdge", request, registry_pb2.Edge, change)

    async def UpdateEdge(self, request: registry_pb2.UpdateEdgeRequest, context: Context) -> registry_pb2.Edge:
        me = caller(context)
        org, _, _ = parse_edge(request.edge.name, "edge.name")
        me.require_org(org, ADMIN, resource=request.edge.name)
        async with self._pool.acquire() as conn, conn.transaction():
            row = await self._edge_row(conn, request.edge.name, "edge.name", lock=True)
            merged = apply_mask(edge_message(row), request.edge, request.update_mask, {"display_name"}, "Edge")
            validate_display_name(merged.display_name, "edge.display_name")
            await conn.execute(
                "UPDATE app.edges SET display_name = $2, update_time = now() WHERE pk = $1",
                row["pk"],
                merged.display_name,
            )
            return edge_message(await self._edge_row(conn, request.edge.name, "edge.name"))

    async def DeleteEdge(self, request: registry_pb2.DeleteEdgeRequest, context: Context) -> empty_pb2.Empty:
        me = caller(context)
        org, _, _ = parse_edge(request.name)
        me.require_org(org, ADMIN, resource=request.name)
        async with self._pool.acquire() as conn, conn.transaction():
            row = await self._edge_row(conn, request.name, lock=True)
            devices = await conn.fetchval("SELECT count(*) FROM app.devices WHERE edge_pk = $1", row["pk"])
            if devices and not request.force:
                raise has_children(request.name, "devices")
            await erase.delete_edges(conn, [row["pk"]])
        return empty_pb2.Empty()

    # ------------------------------------------------------------------ devices

    async def _device_row(self, conn: Conn, name: str, field: str = "name") -> Any:
        org, site, edge, device = parse_device(name, field)
        row = await conn.fetchrow(
            _DEVICE_SELECT + " WHERE e.org_id = $1 AND e.site_id = $2 AND e.edge_id = $3 AND d.device_id = $4",
            org,
            site,
            edge,
            device,
        )
        if row is None:
            raise not_found(name)
        return row

    async def _profile_in_org(self, conn: Conn, org: str, profile_name: str, field: str) -> str:
        p_org, profile = parse_profile(profile_name, field)
        if p_org != org:
            # A profile of another organization: as good as missing (and its name must not leak).
            raise not_found(profile_name)
        if (
            await conn.fetchval("SELECT 1 FROM app.device_profiles WHERE org_id = $1 AND profile_id = $2", org, profile)
            is None
        ):
            raise not_found(profile_name)
        return profile

    async def GetDevice(self, request: registry_pb2.GetDeviceRequest, context: Context) -> registry_pb2.Device:
        org, *_ = parse_device(request.name)
        caller(context).require_org(org, resource=request.name)
        async with self._pool.acquire() as conn:
            return device_message(await self._device_row(conn, request.name))

    async def ListDevices(
        self, request: registry_pb2.ListDevicesRequest, context: Context
    ) -> registry_pb2.ListDevicesResponse:
        org, site, edge = parse_edge(request.parent, "parent")
        caller(context).require_org(org, resource=request.parent)
        page = Page.of("ListDevices", request)
        async with self._pool.acquire() as conn:
            pk = await conn.fetchval(
                "SELECT pk FROM app.edges WHERE org_id = $1 AND site_id = $2 AND edge_id = $3", org, site, edge
            )
            if pk is None:
                raise not_found(request.parent)
            rows = await conn.fetch(
                _DEVICE_SELECT + " WHERE d.edge_pk = $1 ORDER BY d.device_id OFFSET $2 LIMIT $3",
                pk,
                page.offset,
                page.limit,
            )
        token = page.next_token(rows)
        return registry_pb2.ListDevicesResponse(
            devices=[device_message(r) for r in page.rows(rows)], next_page_token=token
        )

    async def CreateDevice(self, request: registry_pb2.CreateDeviceRequest, context: Context) -> registry_pb2.Device:
        me = caller(context)
        org, site, edge = parse_edge(request.parent, "parent")
        me.require_org(org, ADMIN, resource=request.parent)
        device_id = check_id(request.device_id, "device_id", DEVICE_ID)
        validate_display_name(request.device.display_name, "device.display_name")
        if not request.device.device_profile:
            raise invalid_field("device.device_profile", "name the device profile")
        name = f"{request.parent}/devices/{device_id}"
        note_audit(name)

        async def change(conn: Conn) -> registry_pb2.Device:
            pk = await conn.fetchval(
                "SELECT pk FROM app.edges WHERE org_id = $1 AND site_id = $2 AND edge_id = $3", org, site, edge
            )
            if pk is None:
                raise not_found(request.parent)
            profile = await self._profile_in_org(conn, org, request.device.device_profile, "device.device_profile")
            try:
                await conn.execute(
                    """INSERT INTO app.devices (edge_pk, device_id, org_id, profile_id, display_name)
                       VALUES ($1, $2, $3, $4, $5)""",
                    pk,
                    device_id,
                    org,
                    profile,
                    request.device.display_name,
                )
            except asyncpg.UniqueViolationError:
                raise _exists(name) from None
            return device_message(await self._device_row(conn, name))

        return await self._once(me, "CreateDevice", request, registry_pb2.Device, change)

    async def UpdateDevice(self, request: registry_pb2.UpdateDeviceRequest, context: Context) -> registry_pb2.Device:
        me = caller(context)
        org, *_ = parse_device(request.device.name, "device.name")
        me.require_org(org, ADMIN, resource=request.device.name)
        async with self._pool.acquire() as conn, conn.transaction():
            row = await self._device_row(conn, request.device.name, "device.name")
            merged = apply_mask(
                device_message(row), request.device, request.update_mask, {"display_name", "device_profile"}, "Device"
            )
            validate_display_name(merged.display_name, "device.display_name")
            profile = await self._profile_in_org(conn, org, merged.device_profile, "device.device_profile")
            await conn.execute(
                """UPDATE app.devices SET display_name = $3, profile_id = $4, update_time = now()
                   WHERE edge_pk = $1 AND device_id = $2""",
                row["edge_pk"],
                row["device_id"],
                merged.display_name,
                profile,
            )
            return device_message(await self._device_row(conn, request.device.name, "device.name"))

    async def DeleteDevice(self, request: registry_pb2.DeleteDeviceRequest, context: Context) -> empty_pb2.Empty:
        me = caller(context)
        org, *_ = parse_device(request.name)
        me.require_org(org, ADMIN, resource=request.name)
        async with self._pool.acquire() as conn:
            row = await self._device_row(conn, request.name)
            await conn.execute(
                "DELETE FROM app.devices WHERE edge_pk = $1 AND device_id = $2", row["edge_pk"], row["device_id"]
            )
        return empty_pb2.Empty()

    # ------------------------------------------------------------------ device profiles

    async def _profile(
        self, conn: Conn, name: str, field: str = "name", lock: bool = False
    ) -> registry_pb2.DeviceProfile:
        org, profile = parse_profile(name, field)
        row = await conn.fetchrow(
            "SELECT * FROM app.device_profiles WHERE org_id = $1 AND profile_id = $2" + (" FOR UPDATE" if lock else ""),
            org,
            profile,
        )
        if row is None:
            raise not_found(name)
        return profile_message(row, await profiles.load_channels(conn, org, profile))

    async def GetDeviceProfile(
        self, request: registry_pb2.GetDeviceProfileRequest, context: Context
    ) -> registry_pb2.DeviceProfile:
        org, _ = parse_profile(request.name)
        caller(context).require_org(org, resource=request.name)
        async with self._pool.acquire() as conn:
            return await self._profile(conn, request.name)

    async def ListDeviceProfiles(
        self, request: registry_pb2.ListDeviceProfilesRequest, context: Context
    ) -> registry_pb2.ListDeviceProfilesResponse:
        org = parse_org(request.parent, "parent")
        caller(context).require_org(org, resource=request.parent)
        page = Page.of("ListDeviceProfiles", request)
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT * FROM app.device_profiles WHERE org_id = $1 ORDER BY profile_id OFFSET $2 LIMIT $3",
                org,
                page.offset,
                page.limit,
            )
            items = [
                profile_message(r, await profiles.load_channels(conn, org, r["profile_id"])) for r in page.rows(rows)
            ]
        token = page.next_token(rows)
        return registry_pb2.ListDeviceProfilesResponse(device_profiles=items, next_page_token=token)

    async def CreateDeviceProfile(
        self, request: registry_pb2.CreateDeviceProfileRequest, context: Context
    ) -> registry_pb2.DeviceProfile:
        me = caller(context)
        org = parse_org(request.parent, "parent")
        me.require_org(org, ADMIN, resource=request.parent)
        profile_id = check_id(request.device_profile_id, "device_profile_id")
        p = request.device_profile
        profiles.validate_profile(p)
        name = f"{request.parent}/deviceProfiles/{profile_id}"
        note_audit(name)

        async def change(conn: Conn) -> registry_pb2.DeviceProfile:
            try:
                await conn.execute(
                    """INSERT INTO app.device_profiles (org_id, profile_id, display_name, kind, manufacturer, model)
                       VALUES ($1, $2, $3, $4, $5, $6)""",
                    org,
                    profile_id,
                    p.display_name,
                    p.kind,
                    p.manufacturer,
                    p.model,
                )
            except asyncpg.UniqueViolationError:
                raise _exists(name) from None
            except asyncpg.ForeignKeyViolationError:
                raise not_found(request.parent) from None
            await profiles.store_channels(conn, org, profile_id, p.channels)
            return await self._profile(conn, name)

        return await self._once(me, "CreateDeviceProfile", request, registry_pb2.DeviceProfile, change)

    async def UpdateDeviceProfile(
        self, request: registry_pb2.UpdateDeviceProfileRequest, context: Context
    ) -> registry_pb2.DeviceProfile:
        me = caller(context)
        org, profile_id = parse_profile(request.device_profile.name, "device_profile.name")
        me.require_org(org, ADMIN, resource=request.device_profile.name)
        updatable = {"display_name", "kind", "manufacturer", "model", "channels"}
        async with self._pool.acquire() as conn, conn.transaction():
            current = await self._profile(conn, request.device_profile.name, "device_profile.name", lock=True)
            merged = apply_mask(current, request.device_profile, request.update_mask, updatable, "DeviceProfile")
            profiles.validate_profile(merged)
            await conn.execute(
                """UPDATE app.device_profiles SET display_name = $3, kind = $4, manufacturer = $5, model = $6,
                       update_time = now() WHERE org_id = $1 AND profile_id = $2""",
                org,
                profile_id,
                merged.display_name,
                merged.kind,
                merged.manufacturer,
                merged.model,
            )
            await profiles.store_channels(conn, org, profile_id, merged.channels)
            return await self._profile(conn, request.device_profile.name, "device_profile.name")

    async def DeleteDeviceProfile(
        self, request: registry_pb2.DeleteDeviceProfileRequest, context: Context
    ) -> empty_pb2.Empty:
        me = caller(context)
        org, profile_id = parse_profile(request.name)
        me.require_org(org, ADMIN, resource=request.name)
        async with self._pool.acquire() as conn, conn.transaction():
            await self._profile(conn, request.name, lock=True)
            used = await conn.fetchval(
                "SELECT count(*) FROM app.devices WHERE org_id = $1 AND profile_id = $2", org, profile_id
            )
            if used and not request.force:
                raise has_children(request.name, f"{used} device(s) using it")
            await conn.execute("DELETE FROM app.devices WHERE org_id = $1 AND profile_id = $2", org, profile_id)
            await conn.execute("DELETE FROM app.device_profiles WHERE org_id = $1 AND profile_id = $2", org, profile_id)
        return empty_pb2.Empty()

    # ------------------------------------------------------------------ bulk and erasure

    async def BulkProvision(
        self, request: registry_pb2.BulkProvisionRequest, context: Context
    ) -> registry_pb2.BulkProvisionResponse:
        me = caller(context)
        org, site = parse_site(request.site, "site")
        me.require_org(org, ADMIN, resource=request.site)

        async def change(conn: Conn) -> registry_pb2.BulkProvisionResponse:
            return await bulk.provision(conn, org, site, request.csv_content, request.validate_only)

        if request.validate_only:
            async with self._pool.acquire() as conn, conn.transaction(readonly=True):
                return await change(conn)
        return await self._once(me, "BulkProvision", request, registry_pb2.BulkProvisionResponse, change)

    async def EraseSite(
        self, request: registry_pb2.EraseSiteRequest, context: Context
    ) -> registry_pb2.EraseSiteResponse:
        me = caller(context)
        org, site = parse_site(request.name)
        me.require_org(org, ADMIN, resource=request.name)

        async def change(conn: Conn) -> registry_pb2.EraseSiteResponse:
            return await erase.erase_site(conn, org, site, request)

        response = await self._once(me, "EraseSite", request, registry_pb2.EraseSiteResponse, change)
        note_audit(request.name, written=True)
        return response
