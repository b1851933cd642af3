"""RegistryService: organizations, sites, edges, devices and device profiles (AIP standard methods),
bulk provisioning from CSV, and GDPR erasure of a site.

A thin shell: each method parses the request's names, checks the caller's access and delegates to the
resource's module (organizations, sites, edges, devices, device_profiles), which holds its SQL,
mapping and validation. Every call is scoped to the caller's organizations (services/identity): the
interceptor checks the role for the organization in the request path, and every query carries that
organization, so a resource of another tenant is simply not found.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from emma.common.v1 import errors_pb2
from emma.registry.v1 import registry_pb2, registry_pb2_grpc
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from services.errors import ApiError
from services.identity import ADMIN, Caller, auth_state_for, caller, note_audit
from services.names import (
    DEVICE_ID_PATTERN,
    DeviceName,
    DeviceProfileName,
    EdgeName,
    SiteName,
    parse_device,
    parse_device_profile,
    parse_edge,
    parse_organization,
    parse_site,
)
from services.pagination import Page
from services.platform.idempotency import run_once
from services.platform.migrations import Conn
from services.platform.rpc import Context
from services.platform.runtime import Runtime
from services.registry import bulk, device_profiles, devices, edges, erase, organizations, sites
from services.registry.fields import check_id, validate_display_name
from services.registry.ports import current_ports

M = TypeVar("M", bound=Message)
_SVC = "/emma.registry.v1.RegistryService/"


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._pool = runtime.pool
        self._ports = current_ports()
        self._auth = auth_state_for(runtime)

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
        org = parse_organization(request.name)
        caller(context).require_org(org, resource=request.name)
        async with self._pool.acquire() as conn:
            return await organizations.get_organization(conn, org)

    async def ListOrganizations(
        self, request: registry_pb2.ListOrganizationsRequest, context: Context
    ) -> registry_pb2.ListOrganizationsResponse:
        me = caller(context)
        page = Page.of("ListOrganizations", request)
        async with self._pool.acquire() as conn:
            return await organizations.list_organizations(conn, me.orgs(), page)

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
        organizations.validate_organization(request.organization)
        note_audit(f"organizations/{org}")

        async def change(conn: Conn) -> registry_pb2.Organization:
            return await organizations.create_organization(conn, org, request.organization, me.user_id)

        created = await self._once(me, "CreateOrganization", request, registry_pb2.Organization, change)
        # The creator became its administrator. This replica's cache of the caller's sessions learns it
        # now, not when its own NOTIFY arrives, so the creator's next call (CreateSite in it) may
        # already beat that NOTIFY (as identity does for the changes it makes).
        self._auth.forget_user(me.user_id)
        return created

    async def UpdateOrganization(
        self, request: registry_pb2.UpdateOrganizationRequest, context: Context
    ) -> registry_pb2.Organization:
        me = caller(context)
        org = parse_organization(request.organization.name, "organization.name")
        me.require_org(org, ADMIN, resource=request.organization.name)
        async with self._pool.acquire() as conn, conn.transaction():
            return await organizations.update_organization(conn, org, request.organization, request.update_mask)

    async def DeleteOrganization(
        self, request: registry_pb2.DeleteOrganizationRequest, context: Context
    ) -> empty_pb2.Empty:
        # Platform administrators only: the interceptor's policy checks it.
        org = parse_organization(request.name)
        async with self._pool.acquire() as conn, conn.transaction():
            await organizations.delete_organization(conn, org, request.force, self._ports)
        return empty_pb2.Empty()

    # ------------------------------------------------------------------ sites

    async def GetSite(self, request: registry_pb2.GetSiteRequest, context: Context) -> registry_pb2.Site:
        site = parse_site(request.name)
        caller(context).require_org(site.org, resource=request.name)
        async with self._pool.acquire() as conn:
            return await sites.get_site(conn, site)

    async def ListSites(
        self, request: registry_pb2.ListSitesRequest, context: Context
    ) -> registry_pb2.ListSitesResponse:
        org = parse_organization(request.parent, "parent")
        caller(context).require_org(org, resource=request.parent)
        page = Page.of("ListSites", request)
        async with self._pool.acquire() as conn:
            return await sites.list_sites(conn, org, page)

    async def CreateSite(self, request: registry_pb2.CreateSiteRequest, context: Context) -> registry_pb2.Site:
        me = caller(context)
        org = parse_organization(request.parent, "parent")
        me.require_org(org, ADMIN, resource=request.parent)
        site = SiteName(org, check_id(request.site_id, "site_id"))
        sites.validate_site(request.site)
        note_audit(f"{request.parent}/sites/{site.site}")

        async def change(conn: Conn) -> registry_pb2.Site:
            return await sites.create_site(conn, site, request.site)

        return await self._once(me, "CreateSite", request, registry_pb2.Site, change)

    async def UpdateSite(self, request: registry_pb2.UpdateSiteRequest, context: Context) -> registry_pb2.Site:
        me = caller(context)
        site = parse_site(request.site.name, "site.name")
        me.require_org(site.org, ADMIN, resource=request.site.name)
        async with self._pool.acquire() as conn, conn.transaction():
            return await sites.update_site(conn, site, request.site, request.update_mask)

    async def DeleteSite(self, request: registry_pb2.DeleteSiteRequest, context: Context) -> empty_pb2.Empty:
        me = caller(context)
        site = parse_site(request.name)
        me.require_org(site.org, ADMIN, resource=request.name)
        async with self._pool.acquire() as conn, conn.transaction():
            await sites.delete_site(conn, site, request.force, self._ports)
        return empty_pb2.Empty()

    # ------------------------------------------------------------------ edges

    async def GetEdge(self, request: registry_pb2.GetEdgeRequest, context: Context) -> registry_pb2.Edge:
        edge = parse_edge(request.name)
        caller(context).require_org(edge.org, resource=request.name)
        async with self._pool.acquire() as conn:
            return await edges.get_edge(conn, edge, self._ports)

    async def ListEdges(
        self, request: registry_pb2.ListEdgesRequest, context: Context
    ) -> registry_pb2.ListEdgesResponse:
        site = parse_site(request.parent, "parent")
        caller(context).require_org(site.org, resource=request.parent)
        page = Page.of("ListEdges", request)
        async with self._pool.acquire() as conn:
            return await edges.list_edges(conn, site, page, self._ports)

    async def CreateEdge(self, request: registry_pb2.CreateEdgeRequest, context: Context) -> registry_pb2.Edge:
        me = caller(context)
        site = parse_site(request.parent, "parent")
        me.require_org(site.org, ADMIN, resource=request.parent)
        edge = EdgeName(site.org, site.site, check_id(request.edge_id, "edge_id"))
        validate_display_name(request.edge.display_name, "edge.display_name")
        note_audit(f"{request.parent}/edges/{edge.edge}")

        async def change(conn: Conn) -> registry_pb2.Edge:
            return await edges.create_edge(conn, edge, request.edge, self._ports)

        return await self._once(me, "CreateEdge", request, registry_pb2.Edge, change)

    async def UpdateEdge(self, request: registry_pb2.UpdateEdgeRequest, context: Context) -> registry_pb2.Edge:
        me = caller(context)
        edge = parse_edge(request.edge.name, "edge.name")
        me.require_org(edge.org, ADMIN, resource=request.edge.name)
        async with self._pool.acquire() as conn, conn.transaction():
            return await edges.update_edge(conn, edge, request.edge, request.update_mask, self._ports)

    async def DeleteEdge(self, request: registry_pb2.DeleteEdgeRequest, context: Context) -> empty_pb2.Empty:
        me = caller(context)
        edge = parse_edge(request.name)
        me.require_org(edge.org, ADMIN, resource=request.name)
        async with self._pool.acquire() as conn, conn.transaction():
            await edges.delete_edge(conn, edge, request.force, self._ports)
        return empty_pb2.Empty()

    # ------------------------------------------------------------------ devices

    async def GetDevice(self, request: registry_pb2.GetDeviceRequest, context: Context) -> registry_pb2.Device:
        device = parse_device(request.name)
        caller(context).require_org(device.edge.org, resource=request.name)
        async with self._pool.acquire() as conn:
            return await devices.get_device(conn, device)

    async def ListDevices(
        self, request: registry_pb2.ListDevicesRequest, context: Context
    ) -> registry_pb2.ListDevicesResponse:
        edge = parse_edge(request.parent, "parent")
        caller(context).require_org(edge.org, resource=request.parent)
        page = Page.of("ListDevices", request)
        async with self._pool.acquire() as conn:
            return await devices.list_devices(conn, edge, page)

    async def CreateDevice(self, request: registry_pb2.CreateDeviceRequest, context: Context) -> registry_pb2.Device:
        me = caller(context)
        edge = parse_edge(request.parent, "parent")
        me.require_org(edge.org, ADMIN, resource=request.parent)
        device = DeviceName(edge, check_id(request.device_id, "device_id", DEVICE_ID_PATTERN))
        devices.validate_new_device(request.device)
        note_audit(f"{request.parent}/devices/{device.device}")

        async def change(conn: Conn) -> registry_pb2.Device:
            return await devices.create_device(conn, device, request.device)

        return await self._once(me, "CreateDevice", request, registry_pb2.Device, change)

    async def UpdateDevice(self, request: registry_pb2.UpdateDeviceRequest, context: Context) -> registry_pb2.Device:
        me = caller(context)
        device = parse_device(request.device.name, "device.name")
        me.require_org(device.edge.org, ADMIN, resource=request.device.name)
        async with self._pool.acquire() as conn, conn.transaction():
            return await devices.update_device(conn, device, request.device, request.update_mask)

    async def DeleteDevice(self, request: registry_pb2.DeleteDeviceRequest, context: Context) -> empty_pb2.Empty:
        me = caller(context)
        device = parse_device(request.name)
        me.require_org(device.edge.org, ADMIN, resource=request.name)
        async with self._pool.acquire() as conn:
            await devices.delete_device(conn, device)
        return empty_pb2.Empty()

    # ------------------------------------------------------------------ device profiles

    async def GetDeviceProfile(
        self, request: registry_pb2.GetDeviceProfileRequest, context: Context
    ) -> registry_pb2.DeviceProfile:
        profile = parse_device_profile(request.name)
        caller(context).require_org(profile.org, resource=request.name)
        async with self._pool.acquire() as conn:
            return await device_profiles.get_profile(conn, profile)

    async def ListDeviceProfiles(
        self, request: registry_pb2.ListDeviceProfilesRequest, context: Context
    ) -> registry_pb2.ListDeviceProfilesResponse:
        org = parse_organization(request.parent, "parent")
        caller(context).require_org(org, resource=request.parent)
        page = Page.of("ListDeviceProfiles", request)
        async with self._pool.acquire() as conn:
            return await device_profiles.list_profiles(conn, org, page)

    async def CreateDeviceProfile(
        self, request: registry_pb2.CreateDeviceProfileRequest, context: Context
    ) -> registry_pb2.DeviceProfile:
        me = caller(context)
        org = parse_organization(request.parent, "parent")
        me.require_org(org, ADMIN, resource=request.parent)
        profile = DeviceProfileName(org, check_id(request.device_profile_id, "device_profile_id"))
        device_profiles.validate_profile(request.device_profile)
        note_audit(f"{request.parent}/deviceProfiles/{profile.profile}")

        async def change(conn: Conn) -> registry_pb2.DeviceProfile:
            return await device_profiles.create_profile(conn, profile, request.device_profile)

        return await self._once(me, "CreateDeviceProfile", request, registry_pb2.DeviceProfile, change)

    async def UpdateDeviceProfile(
        self, request: registry_pb2.UpdateDeviceProfileRequest, context: Context
    ) -> registry_pb2.DeviceProfile:
        me = caller(context)
        profile = parse_device_profile(request.device_profile.name, "device_profile.name")
        me.require_org(profile.org, ADMIN, resource=request.device_profile.name)
        async with self._pool.acquire() as conn, conn.transaction():
            return await device_profiles.update_profile(conn, profile, request.device_profile, request.update_mask)

    async def DeleteDeviceProfile(
        self, request: registry_pb2.DeleteDeviceProfileRequest, context: Context
    ) -> empty_pb2.Empty:
        me = caller(context)
        profile = parse_device_profile(request.name)
        me.require_org(profile.org, ADMIN, resource=request.name)
        async with self._pool.acquire() as conn, conn.transaction():
            await device_profiles.delete_profile(conn, profile, request.force)
        return empty_pb2.Empty()

    # ------------------------------------------------------------------ bulk and erasure

    async def BulkProvision(
        self, request: registry_pb2.BulkProvisionRequest, context: Context
    ) -> registry_pb2.BulkProvisionResponse:
        me = caller(context)
        site = parse_site(request.site, "site")
        me.require_org(site.org, ADMIN, resource=request.site)

        async def change(conn: Conn) -> registry_pb2.BulkProvisionResponse:
            return await bulk.provision(conn, site.org, site.site, request.csv_content, request.validate_only)

        if request.validate_only:
            async with self._pool.acquire() as conn, conn.transaction(readonly=True):
                return await change(conn)
        return await self._once(me, "BulkProvision", request, registry_pb2.BulkProvisionResponse, change)

    async def EraseSite(
        self, request: registry_pb2.EraseSiteRequest, context: Context
    ) -> registry_pb2.EraseSiteResponse:
        me = caller(context)
        site = parse_site(request.name)
        me.require_org(site.org, ADMIN, resource=request.name)

        async def change(conn: Conn) -> registry_pb2.EraseSiteResponse:
            return await erase.erase_site(conn, site.org, site.site, request, self._ports)

        response = await self._once(me, "EraseSite", request, registry_pb2.EraseSiteResponse, change)
        note_audit(request.name, written=True)
        return response
