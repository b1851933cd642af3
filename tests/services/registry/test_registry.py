"""RegistryService against real PostgreSQL: standard methods with field masks and pages, profiles and
the command service's channel lookup, bulk CSV all or nothing, and tenant isolation."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import asyncpg
import grpc
import pytest
from emma.common.v1 import types_pb2
from emma.registry.v1 import registry_pb2, registry_pb2_grpc
from google.protobuf import field_mask_pb2
from grpc_status import rpc_status

from services.errors import error_info_of
from services.registry import channel_spec
from tests.support.cloud import Host
from tests.support.identity import authed_channel, grant, notifications_held

ACME = "organizations/acme"


async def _error(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    info = error_info_of(status)
    return caught.value.code(), info.reason if info else "", caught.value.details() or ""


def _site(name: str = "Plant", tz: str = "Europe/Madrid") -> registry_pb2.Site:
    return registry_pb2.Site(
        display_name=name,
        location=types_pb2.GeoLocation(latitude_deg=40.4168, longitude_deg=-3.7038),
        time_zone=tz,
        country_code="ES",
        bidding_zone="ES",
        grid_import_limit_w=100_000,
    )


BATTERY = registry_pb2.DeviceProfile(
    display_name="Battery 10 kWh",
    kind=types_pb2.DEVICE_KIND_BATTERY,
    manufacturer="Acme",
    model="B10",
    channels=[
        types_pb2.ChannelSpec(
            name="Soc",
            unit="%",
            category=types_pb2.CHANNEL_CATEGORY_INPUT,
            access=types_pb2.CHANNEL_ACCESS_READ_ONLY,
            min_value=0,
            max_value=100,
        ),
        types_pb2.ChannelSpec(name="MaxChargePower", unit="W", access=types_pb2.CHANNEL_ACCESS_READ_ONLY),
        types_pb2.ChannelSpec(
            name="SetActivePower",
            unit="W",
            category=types_pb2.CHANNEL_CATEGORY_OUTPUT,
            access=types_pb2.CHANNEL_ACCESS_READ_WRITE,
            min_value=-5000,
            max_value=5000,
            dynamic_max_channel="MaxChargePower",
        ),
        types_pb2.ChannelSpec(
            name="Mode",
            access=types_pb2.CHANNEL_ACCESS_READ_WRITE,
            value_type=types_pb2.VALUE_TYPE_ENUM,
            enum_values=[types_pb2.EnumValue(number=0, label="STANDBY"), types_pb2.EnumValue(number=1, label="AUTO")],
        ),
    ],
)


async def test_crud_field_masks_pagination_and_profiles(host: Host, db: asyncpg.Connection) -> None:
    admin = await grant(db, "acme", "admin")
    async with host(["registry"]) as (server, _), authed_channel(server.port, admin.token) as ch:
        reg = registry_pb2_grpc.RegistryServiceStub(ch)
        site = await reg.CreateSite(registry_pb2.CreateSiteRequest(parent=ACME, site_id="plant", site=_site()))
        assert site.name == f"{ACME}/sites/plant" and site.time_zone == "Europe/Madrid" and site.HasField("create_time")
        assert (
            await _error(reg.CreateSite(registry_pb2.CreateSiteRequest(parent=ACME, site_id="plant", site=_site())))
        )[:2] == (grpc.StatusCode.ALREADY_EXISTS, "RESOURCE_EXISTS")
        # Validation: IANA zone, coordinates, country, ids.
        for bad, reason in (
            (_site(tz="Europe/Atlantis"), "TIME_ZONE_INVALID"),
            (registry_pb2.Site(display_name="x", time_zone="UTC", country_code="spain"), "FIELD_INVALID"),
            (
                registry_pb2.Site(
                    display_name="x",
                    time_zone="UTC",
                    country_code="ES",
                    location=types_pb2.GeoLocation(latitude_deg=91),
                ),
                "FIELD_INVALID",
            ),
        ):
            code, got, _ = await _error(
                reg.CreateSite(registry_pb2.CreateSiteRequest(parent=ACME, site_id="x", site=bad))
            )
            assert (code, got) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
        assert (
            await _error(reg.CreateSite(registry_pb2.CreateSiteRequest(parent=ACME, site_id="Bad_Id", site=_site())))
        )[1] == "FIELD_INVALID"

        # Idempotency: the same request_id returns the first result; other content is refused.
        req = registry_pb2.CreateSiteRequest(parent=ACME, site_id="depot", site=_site("Depot"), request_id="r-1")
        first = await reg.CreateSite(req)
        assert await reg.CreateSite(req) == first
        req.site.display_name = "Other"
        assert (await _error(reg.CreateSite(req)))[1] == "REQUEST_ID_REUSED"

        # Field masks: only masked fields change; sub-fields work; output-only paths are ignored.
        patch = registry_pb2.Site(
            name=site.name,
            display_name="Renamed",
            time_zone="UTC",
            location=types_pb2.GeoLocation(latitude_deg=41.0, longitude_deg=9.0),
        )
        updated = await reg.UpdateSite(
            registry_pb2.UpdateSiteRequest(
                site=patch,
                update_mask=field_mask_pb2.FieldMask(paths=["display_name", "location.latitude_deg", "create_time"]),
            )
        )
        assert (updated.display_name, updated.time_zone) == ("Renamed", "Europe/Madrid")
        assert (updated.location.latitude_deg, updated.location.longitude_deg) == (41.0, -3.7038)
        assert updated.create_time == site.create_time and updated.update_time != site.update_time
        assert (
            await _error(
                reg.UpdateSite(
                    registry_pb2.UpdateSiteRequest(site=patch, update_mask=field_mask_pb2.FieldMask(paths=["nonsense"]))
                )
            )
        )[1] == "FIELD_INVALID"
        assert (
            await _error(
                reg.UpdateSite(
                    registry_pb2.UpdateSiteRequest(
                        site=registry_pb2.Site(name=site.name, time_zone="Nowhere/City"),
                        update_mask=field_mask_pb2.FieldMask(paths=["time_zone"]),
                    )
                )
            )
        )[1] == "TIME_ZONE_INVALID"

        # Pagination over sites ordered by name.
        for i in range(5):
            await reg.CreateSite(registry_pb2.CreateSiteRequest(parent=ACME, site_id=f"s{i}", site=_site(f"S{i}")))
        names, token = [], ""
        while True:
            page = await reg.ListSites(registry_pb2.ListSitesRequest(parent=ACME, page_size=3, page_token=token))
            assert len(page.sites) <= 3
            names += [s.name.rsplit("/", 1)[1] for s in page.sites]
            token = page.next_page_token
            if not token:
                break
        assert names == ["depot", "plant", "s0", "s1", "s2", "s3", "s4"]
        assert (await _error(reg.ListSites(registry_pb2.ListSitesRequest(parent=ACME, page_token="x"))))[1] == (
            "PAGE_TOKEN_INVALID"
        )

        # Edges, profiles, devices.
        edge = await reg.CreateEdge(
            registry_pb2.CreateEdgeRequest(
                parent=site.name, edge_id="gw-1", edge=registry_pb2.Edge(display_name="Gateway")
            )
        )
        assert edge.connection_state == registry_pb2.EDGE_CONNECTION_STATE_NEVER_CONNECTED
        edge = await reg.UpdateEdge(
            registry_pb2.UpdateEdgeRequest(
                edge=registry_pb2.Edge(name=edge.name, display_name="GW"),
                update_mask=field_mask_pb2.FieldMask(paths=["*"]),
            )
        )
        assert edge.display_name == "GW"
        profile = await reg.CreateDeviceProfile(
            registry_pb2.CreateDeviceProfileRequest(parent=ACME, device_profile_id="battery-10", device_profile=BATTERY)
        )
        assert [c.name for c in profile.channels] == ["Soc", "MaxChargePower", "SetActivePower", "Mode"]
        assert profile.channels[2].max_value == 5000 and profile.channels[2].HasField("min_value")
        assert not profile.channels[1].HasField("min_value")
        broken = registry_pb2.DeviceProfile()
        broken.CopyFrom(BATTERY)
        broken.channels[2].dynamic_max_channel = "Nope"
        assert (
            await _error(
                reg.CreateDeviceProfile(
                    registry_pb2.CreateDeviceProfileRequest(
                        parent=ACME, device_profile_id="broken", device_profile=broken
                    )
                )
            )
        )[1] == "FIELD_INVALID"
        device = await reg.CreateDevice(
            registry_pb2.CreateDeviceRequest(
                parent=edge.name,
                device_id="battery_1",
                device=registry_pb2.Device(display_name="Battery", device_profile=profile.name),
            )
        )
        assert device.kind == types_pb2.DEVICE_KIND_BATTERY and device.name == f"{edge.name}/devices/battery_1"
        assert [d.name for d in (await reg.ListDevices(registry_pb2.ListDevicesRequest(parent=edge.name))).devices] == [
            device.name
        ]

        # The lookup the command service validates against.
        pk = await db.fetchval("SELECT pk FROM app.edges WHERE org_id = 'acme' AND edge_id = 'gw-1'")
        spec = await channel_spec(db, pk, "battery_1", "SetActivePower")
        assert spec is not None and (spec.unit, spec.min_value, spec.max_value) == ("W", -5000, 5000)
        assert spec.access == types_pb2.CHANNEL_ACCESS_READ_WRITE and spec.dynamic_max_channel == "MaxChargePower"
        assert await channel_spec(db, pk, "battery_1", "Nope") is None
        assert await channel_spec(db, pk, "nobody", "Soc") is None

        # Updating the profile's channels changes what the lookup answers.
        changed = registry_pb2.DeviceProfile(name=profile.name)
        changed.channels.extend(BATTERY.channels)
        changed.channels[2].max_value = 3000
        await reg.UpdateDeviceProfile(
            registry_pb2.UpdateDeviceProfileRequest(
                device_profile=changed, update_mask=field_mask_pb2.FieldMask(paths=["channels"])
            )
        )
        spec = await channel_spec(db, pk, "battery_1", "SetActivePower")
        assert spec is not None and spec.max_value == 3000

        # Deletes refuse children unless forced.
        assert (await _error(reg.DeleteDeviceProfile(registry_pb2.DeleteDeviceProfileRequest(name=profile.name))))[
            1
        ] == "HAS_CHILDREN"
        assert (await _error(reg.DeleteSite(registry_pb2.DeleteSiteRequest(name=site.name))))[1] == "HAS_CHILDREN"
        await reg.DeleteDevice(registry_pb2.DeleteDeviceRequest(name=device.name))
        await reg.DeleteDeviceProfile(registry_pb2.DeleteDeviceProfileRequest(name=profile.name))
        await reg.DeleteSite(registry_pb2.DeleteSiteRequest(name=site.name, force=True))
        assert (await _error(reg.GetEdge(registry_pb2.GetEdgeRequest(name=edge.name))))[1] == "RESOURCE_NOT_FOUND"
        assert (await _error(reg.GetSite(registry_pb2.GetSiteRequest(name=site.name))))[1] == "RESOURCE_NOT_FOUND"


async def test_bulk_provisioning_is_all_or_nothing_with_a_report_per_row(host: Host, db: asyncpg.Connection) -> None:
    admin = await grant(db, "bulk", "admin")
    org = "organizations/bulk"
    async with host(["registry"]) as (server, _), authed_channel(server.port, admin.token) as ch:
        reg = registry_pb2_grpc.RegistryServiceStub(ch)
        site = await reg.CreateSite(registry_pb2.CreateSiteRequest(parent=org, site_id="farm", site=_site()))
        await reg.CreateDeviceProfile(
            registry_pb2.CreateDeviceProfileRequest(parent=org, device_profile_id="battery", device_profile=BATTERY)
        )
        good = (
            "kind,edge_id,device_id,display_name,device_profile\n"
            "edge,gw-1,,Gateway 1,\n"
            "device,gw-1,battery_1,Battery,battery\n"
            "edge,gw-2,,Gateway 2,\n"
            "device,gw-2,battery_1,Battery,battery\n"
        )
        bad = good + "device,gw-3,meter,Meter,battery\ndevice,gw-1,battery_2,B,no-such-profile\nrobot,gw-9,,,\n"
        before = await db.fetchval("SELECT count(*) FROM app.edges WHERE org_id = 'bulk'")

        report = await reg.BulkProvision(
            registry_pb2.BulkProvisionRequest(site=site.name, csv_content=bad, validate_only=True)
        )
        assert [(r.line_number, r.ok, r.reason) for r in report.rows] == [
            (2, True, ""),
            (3, True, ""),
            (4, True, ""),
            (5, True, ""),
            (6, False, "RESOURCE_NOT_FOUND"),
            (7, False, "RESOURCE_NOT_FOUND"),
            (8, False, "FIELD_INVALID"),
        ]
        assert report.rows[4].resource_name == f"{site.name}/edges/gw-3/devices/meter"
        assert "gw-3" in report.rows[4].message and report.created_count == 0

        code, reason, details = await _error(
            reg.BulkProvision(registry_pb2.BulkProvisionRequest(site=site.name, csv_content=bad))
        )
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "CSV_ROWS_INVALID")
        assert "3 of 7 rows" in details
        assert await db.fetchval("SELECT count(*) FROM app.edges WHERE org_id = 'bulk'") == before  # nothing

        done = await reg.BulkProvision(registry_pb2.BulkProvisionRequest(site=site.name, csv_content=good))
        assert done.created_count == 4 and all(r.ok for r in done.rows)
        devices = await reg.ListDevices(registry_pb2.ListDevicesRequest(parent=f"{site.name}/edges/gw-2"))
        assert [d.name.rsplit("/", 1)[1] for d in devices.devices] == ["battery_1"]
        # A second run fails on every row (all exist) and again creates nothing.
        again = await reg.BulkProvision(
            registry_pb2.BulkProvisionRequest(site=site.name, csv_content=good, validate_only=True)
        )
        assert [r.reason for r in again.rows] == ["RESOURCE_EXISTS"] * 4
        assert (
            await _error(reg.BulkProvision(registry_pb2.BulkProvisionRequest(site=site.name, csv_content="a,b\n")))
        )[1] == "FIELD_INVALID"


async def test_tenants_see_only_their_own_organizations(host: Host, db: asyncpg.Connection) -> None:
    a = await grant(db, "tenant-a", "admin")
    b = await grant(db, "tenant-b", "admin")
    both = await grant(db, "tenant-a", "viewer")
    await db.execute(
        "INSERT INTO identity.memberships (org_id, user_id, role) VALUES ('tenant-b', $1, 1)", both.user_id
    )
    async with (
        host(["registry", "telemetry"]) as (server, _),
        authed_channel(server.port, a.token) as ch_a,
        authed_channel(server.port, b.token) as ch_b,
        authed_channel(server.port, both.token) as ch_both,
    ):
        reg_a, reg_b = registry_pb2_grpc.RegistryServiceStub(ch_a), registry_pb2_grpc.RegistryServiceStub(ch_b)
        secret = await reg_a.CreateSite(
            registry_pb2.CreateSiteRequest(
                parent="organizations/tenant-a", site_id="secret", site=_site("Secret plant")
            )
        )
        profile = await reg_a.CreateDeviceProfile(
            registry_pb2.CreateDeviceProfileRequest(
                parent="organizations/tenant-a", device_profile_id="p", device_profile=BATTERY
            )
        )
        # B cannot see, list, change or erase A's things: not found, exactly like a missing site.
        missing = await _error(reg_b.GetSite(registry_pb2.GetSiteRequest(name="organizations/tenant-a/sites/nope")))
        foreign = await _error(reg_b.GetSite(registry_pb2.GetSiteRequest(name=secret.name)))
        assert foreign[:2] == missing[:2] == (grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")
        for call in (
            reg_b.ListSites(registry_pb2.ListSitesRequest(parent="organizations/tenant-a")),
            reg_b.UpdateSite(
                registry_pb2.UpdateSiteRequest(site=registry_pb2.Site(name=secret.name, display_name="x"))
            ),
            reg_b.EraseSite(registry_pb2.EraseSiteRequest(name=secret.name)),
            reg_b.GetOrganization(registry_pb2.GetOrganizationRequest(name="organizations/tenant-a")),
        ):
            assert (await _error(call))[:2] == (grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")
        # B cannot use A's device profile for its own device either.
        site_b = await reg_b.CreateSite(
            registry_pb2.CreateSiteRequest(parent="organizations/tenant-b", site_id="mine", site=_site())
        )
        edge_b = await reg_b.CreateEdge(registry_pb2.CreateEdgeRequest(parent=site_b.name, edge_id="gw"))
        assert (
            await _error(
                reg_b.CreateDevice(
                    registry_pb2.CreateDeviceRequest(
                        parent=edge_b.name, device_id="d", device=registry_pb2.Device(device_profile=profile.name)
                    )
                )
            )
        )[1] == ("RESOURCE_NOT_FOUND")
        orgs_b = await reg_b.ListOrganizations(registry_pb2.ListOrganizationsRequest())
        assert [o.name for o in orgs_b.organizations] == ["organizations/tenant-b"]
        orgs_both = await registry_pb2_grpc.RegistryServiceStub(ch_both).ListOrganizations(
            registry_pb2.ListOrganizationsRequest()
        )
        assert [o.name for o in orgs_both.organizations] == ["organizations/tenant-a", "organizations/tenant-b"]
        # Creating organizations takes a platform admin.
        assert (
            await _error(
                reg_a.CreateOrganization(
                    registry_pb2.CreateOrganizationRequest(
                        organization_id="new", organization=registry_pb2.Organization(display_name="New")
                    )
                )
            )
        )[:2] == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_INSUFFICIENT")
        root = await grant(db, "ops", "viewer", platform_admin=True)
        async with authed_channel(server.port, root.token) as ch_root:
            reg_root = registry_pb2_grpc.RegistryServiceStub(ch_root)
            created = await reg_root.CreateOrganization(
                registry_pb2.CreateOrganizationRequest(
                    organization_id="newco", organization=registry_pb2.Organization(display_name="NewCo")
                )
            )
            assert created.name == "organizations/newco"
            # ... who administers it (a fresh token: roles are read per session from the database).
            await reg_root.CreateSite(registry_pb2.CreateSiteRequest(parent=created.name, site_id="s", site=_site()))


async def test_the_creator_of_an_organization_administers_it_on_the_next_call_to_the_same_replica(
    host: Host, db: asyncpg.Connection
) -> None:
    # The membership's NOTIFY is held back, so only the replica's own update of its cache can let the
    # creator's next call in (before, that call raced the NOTIFY and could get NOT_FOUND).
    root = await grant(db, "ops-c", "viewer", platform_admin=True)
    async with host(["registry"]) as (server, _), authed_channel(server.port, root.token) as ch:
        reg = registry_pb2_grpc.RegistryServiceStub(ch)
        await reg.ListOrganizations(registry_pb2.ListOrganizationsRequest())  # the session is now cached
        async with notifications_held(db):
            created = await reg.CreateOrganization(
                registry_pb2.CreateOrganizationRequest(
                    organization_id="fresh", organization=registry_pb2.Organization(display_name="Fresh")
                )
            )
            site = await reg.CreateSite(registry_pb2.CreateSiteRequest(parent=created.name, site_id="s", site=_site()))
        assert site.name == "organizations/fresh/sites/s"
