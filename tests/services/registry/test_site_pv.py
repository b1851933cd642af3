"""A site's PV description (Site.pv_system) through the real RegistryService on real PostgreSQL:
stored with the site, returned by Get/List, changed or cleared with the field mask, and every value
outside the contract's stated limits refused naming the field."""

from __future__ import annotations

import uuid
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
from services.names import SiteName
from services.registry import all_sites, site_profile
from tests.support.cloud import Host
from tests.support.identity import authed_channel, grant

ACME = "organizations/acme"


def _pv(**array: float) -> registry_pb2.PvSystem:
    values: dict[str, float] = {"tilt_deg": 30, "azimuth_deg": 180, "peak_power_kw": 6.5} | array
    return registry_pb2.PvSystem(
        arrays=[registry_pb2.PvArray(**values), registry_pb2.PvArray(tilt_deg=10, azimuth_deg=90, peak_power_kw=2)],
        inverter_limit_w=7000,
        altitude_m=650,
    )


def _site(pv: registry_pb2.PvSystem | None = None) -> registry_pb2.Site:
    site = registry_pb2.Site(
        display_name="Roof",
        location=types_pb2.GeoLocation(latitude_deg=40.4, longitude_deg=-3.7),
        time_zone="Europe/Madrid",
        country_code="ES",
    )
    if pv is not None:
        site.pv_system.CopyFrom(pv)
    return site


async def _error(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    info = error_info_of(status)
    return caught.value.code(), info.reason if info else "", dict(info.metadata).get("field", "") if info else ""


async def test_pv_system_is_stored_updated_and_cleared(host: Host, db: asyncpg.Connection) -> None:
    admin = await grant(db, "acme", "admin")
    async with host(["registry"]) as (server, runtime), authed_channel(server.port, admin.token) as ch:
        reg = registry_pb2_grpc.RegistryServiceStub(ch)
        pv = _pv(losses_fraction=0.1)
        created = await reg.CreateSite(registry_pb2.CreateSiteRequest(parent=ACME, site_id="roof", site=_site(pv)))
        assert created.pv_system == pv
        assert (await reg.GetSite(registry_pb2.GetSiteRequest(name=created.name))).pv_system == pv
        # An unset losses_fraction stays unset (the model's default applies), not 0 %.
        assert not created.pv_system.arrays[1].HasField("losses_fraction")

        # Only the masked field changes: a sub-field of the PV description, then the whole of it.
        patch = registry_pb2.Site(
            name=created.name, display_name="ignored", pv_system=registry_pb2.PvSystem(altitude_m=10)
        )
        updated = await reg.UpdateSite(
            registry_pb2.UpdateSiteRequest(
                site=patch, update_mask=field_mask_pb2.FieldMask(paths=["pv_system.altitude_m"])
            )
        )
        assert updated.pv_system.altitude_m == 10 and updated.pv_system.arrays == pv.arrays
        assert updated.display_name == "Roof"
        cleared = await reg.UpdateSite(
            registry_pb2.UpdateSiteRequest(
                site=registry_pb2.Site(name=created.name), update_mask=field_mask_pb2.FieldMask(paths=["pv_system"])
            )
        )
        assert not cleared.HasField("pv_system")

        # The forecast domain reads it through the registry's face.
        async with runtime.pool.acquire() as conn:
            await reg.UpdateSite(
                registry_pb2.UpdateSiteRequest(
                    site=registry_pb2.Site(name=created.name, pv_system=pv),
                    update_mask=field_mask_pb2.FieldMask(paths=["pv_system"]),
                )
            )
            profile = await site_profile(conn, SiteName("acme", "roof"))
            assert profile is not None and profile.pv_system == pv and profile.has_location
            assert profile.country_code == "ES" and profile.time_zone == "Europe/Madrid"
            assert await site_profile(conn, SiteName("acme", "nowhere")) is None
            assert SiteName("acme", "roof") in await all_sites(conn)


@pytest.mark.parametrize(
    ("pv", "field"),
    [
        (_pv(tilt_deg=91), "site.pv_system.arrays[0].tilt_deg"),
        (_pv(tilt_deg=-1), "site.pv_system.arrays[0].tilt_deg"),
        (_pv(azimuth_deg=360.5), "site.pv_system.arrays[0].azimuth_deg"),
        (_pv(peak_power_kw=0), "site.pv_system.arrays[0].peak_power_kw"),
        (_pv(peak_power_kw=float("nan")), "site.pv_system.arrays[0].peak_power_kw"),
        (_pv(peak_power_kw=100_001), "site.pv_system.arrays[0].peak_power_kw"),
        (_pv(losses_fraction=0.95), "site.pv_system.arrays[0].losses_fraction"),
        (registry_pb2.PvSystem(), "site.pv_system.arrays"),
        (
            registry_pb2.PvSystem(arrays=[registry_pb2.PvArray(tilt_deg=1, peak_power_kw=1)] * 21),
            "site.pv_system.arrays",
        ),
        (registry_pb2.PvSystem(arrays=_pv().arrays, inverter_limit_w=-1), "site.pv_system.inverter_limit_w"),
        (registry_pb2.PvSystem(arrays=_pv().arrays, altitude_m=9001), "site.pv_system.altitude_m"),
    ],
)
async def test_values_outside_the_stated_limits_are_refused(
    pv: registry_pb2.PvSystem, field: str, host: Host, db: asyncpg.Connection
) -> None:
    admin = await grant(db, "acme", "admin")
    async with host(["registry"]) as (server, _), authed_channel(server.port, admin.token) as ch:
        reg = registry_pb2_grpc.RegistryServiceStub(ch)
        assert await _error(
            reg.CreateSite(registry_pb2.CreateSiteRequest(parent=ACME, site_id="bad", site=_site(pv)))
        ) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID", field)
        site_id = f"good-{uuid.uuid4().hex[:8]}"
        site = await reg.CreateSite(registry_pb2.CreateSiteRequest(parent=ACME, site_id=site_id, site=_site()))
        bad_update = registry_pb2.UpdateSiteRequest(
            site=registry_pb2.Site(name=site.name, pv_system=pv),
            update_mask=field_mask_pb2.FieldMask(paths=["pv_system"]),
        )
        assert await _error(reg.UpdateSite(bad_update)) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID", field)
