"""Sites: mapping, validation, the RegistryService's reads and changes, and the lookups other domains
make (through the package face)."""

from __future__ import annotations

import math
import re
import zoneinfo
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
from emma.common.v1 import errors_pb2, types_pb2
from emma.registry.v1 import registry_pb2
from google.protobuf import field_mask_pb2

from services.errors import ApiError, invalid_field, not_found
from services.names import SiteName
from services.pagination import Page
from services.platform.migrations import Conn
from services.platform.rpc import timestamp
from services.registry import erase
from services.registry.errors import already_exists, has_children
from services.registry.fields import require_display_name
from services.registry.masks import apply_mask, masked_fields
from services.registry.ports import RegistryPorts
from services.registry.pv import pv_from_json, pv_to_json, validate_pv_system

COUNTRY = re.compile(r"^[A-Z]{2}$")
BIDDING_ZONE = re.compile(r"^[A-Z0-9-]{0,16}$")
ZONES = zoneinfo.available_timezones()
UPDATABLE = {
    "display_name",
    "location",
    "time_zone",
    "country_code",
    "bidding_zone",
    "grid_import_limit_w",
    "grid_export_limit_w",
    "pv_system",
}


def site_message(r: Any) -> registry_pb2.Site:
    site = registry_pb2.Site(
        name=f"organizations/{r['org_id']}/sites/{r['site_id']}",
        display_name=r["display_name"],
        location=types_pb2.GeoLocation(latitude_deg=r["latitude_deg"], longitude_deg=r["longitude_deg"]),
        time_zone=r["time_zone"],
        country_code=r["country_code"],
        bidding_zone=r["bidding_zone"],
        grid_import_limit_w=r["grid_import_limit_w"],
        grid_export_limit_w=r["grid_export_limit_w"],
        create_time=timestamp(r["create_time"]),
        update_time=timestamp(r["update_time"]),
    )
    pv = pv_from_json(r["pv_system"])
    if pv is not None:
        site.pv_system.CopyFrom(pv)
    return site


def validate_site(s: registry_pb2.Site, prefix: str = "site", fields: set[str] | None = None) -> None:
    """FIELD_INVALID (TIME_ZONE_INVALID) for the first bad field; `fields`: only these (an update)."""

    def checks(name: str) -> bool:
        return fields is None or name in fields

    if checks("display_name"):
        require_display_name(s.display_name, f"{prefix}.display_name")
    if checks("location"):
        _check_location(s, prefix)
    if checks("time_zone"):
        _check_time_zone(s, prefix)
    if checks("country_code") and not COUNTRY.match(s.country_code):
        raise invalid_field(f"{prefix}.country_code", "must be an ISO 3166-1 alpha-2 code such as ES")
    if checks("bidding_zone") and not BIDDING_ZONE.match(s.bidding_zone):
        raise invalid_field(f"{prefix}.bidding_zone", "must be a bidding zone code such as ES or DE-LU")
    for f in ("grid_import_limit_w", "grid_export_limit_w"):
        v = getattr(s, f)
        if checks(f) and not (math.isfinite(v) and v >= 0):
            raise invalid_field(f"{prefix}.{f}", "must be a finite number of watts, at least 0")
    if checks("pv_system") and s.HasField("pv_system"):
        validate_pv_system(s.pv_system, f"{prefix}.pv_system")


def _check_location(s: registry_pb2.Site, prefix: str) -> None:
    lat, lon = s.location.latitude_deg, s.location.longitude_deg
    if not (math.isfinite(lat) and -90 <= lat <= 90):
        raise invalid_field(f"{prefix}.location.latitude_deg", "must be between -90 and 90")
    if not (math.isfinite(lon) and -180 <= lon <= 180):
        raise invalid_field(f"{prefix}.location.longitude_deg", "must be between -180 and 180")


def _check_time_zone(s: registry_pb2.Site, prefix: str) -> None:
    if s.time_zone not in ZONES:
        raise ApiError(
            grpc.StatusCode.INVALID_ARGUMENT,
            errors_pb2.ERROR_REASON_TIME_ZONE_INVALID,
            f"{prefix}.time_zone: {s.time_zone!r} is not an IANA time zone (for example Europe/Madrid)",
            metadata={"field": f"{prefix}.time_zone"},
            field_violations=[(f"{prefix}.time_zone", "not an IANA time zone")],
        )


async def site_exists(conn: Conn, site: SiteName) -> bool:
    return (
        await conn.fetchval("SELECT 1 FROM app.sites WHERE org_id = $1 AND site_id = $2", site.org, site.site)
        is not None
    )


async def get_site(conn: Conn, site: SiteName) -> registry_pb2.Site:
    row = await conn.fetchrow("SELECT * FROM app.sites WHERE org_id = $1 AND site_id = $2", site.org, site.site)
    if row is None:
        raise not_found(str(site))
    return site_message(row)


async def list_sites(conn: Conn, org: str, page: Page) -> registry_pb2.ListSitesResponse:
    rows = await conn.fetch(
        "SELECT * FROM app.sites WHERE org_id = $1 ORDER BY site_id OFFSET $2 LIMIT $3",
        org,
        page.offset,
        page.limit,
    )
    token = page.next_token(rows)
    return registry_pb2.ListSitesResponse(sites=[site_message(r) for r in page.rows(rows)], next_page_token=token)


async def create_site(conn: Conn, site: SiteName, s: registry_pb2.Site) -> registry_pb2.Site:
    try:
        row = await conn.fetchrow(
            """INSERT INTO app.sites (org_id, site_id, display_name, latitude_deg, longitude_deg, time_zone,
                   country_code, bidding_zone, grid_import_limit_w, grid_export_limit_w, pv_system)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb) RETURNING *""",
            site.org,
            site.site,
            s.display_name,
            s.location.latitude_deg,
            s.location.longitude_deg,
            s.time_zone,
            s.country_code,
            s.bidding_zone,
            s.grid_import_limit_w,
            s.grid_export_limit_w,
            pv_to_json(s),
        )
    except asyncpg.UniqueViolationError:
        raise already_exists(str(site)) from None
    except asyncpg.ForeignKeyViolationError:
        raise not_found(f"organizations/{site.org}") from None
    return site_message(row)


async def update_site(
    conn: Conn, site: SiteName, patch: registry_pb2.Site, mask: field_mask_pb2.FieldMask
) -> registry_pb2.Site:
    """In the caller's transaction (the row is locked while the mask is applied)."""
    row = await conn.fetchrow(
        "SELECT * FROM app.sites WHERE org_id = $1 AND site_id = $2 FOR UPDATE", site.org, site.site
    )
    if row is None:
        raise not_found(str(site))
    s = apply_mask(site_message(row), patch, mask, UPDATABLE, "Site")
    validate_site(s, fields=masked_fields(mask))
    row = await conn.fetchrow(
        """UPDATE app.sites SET display_name = $3, latitude_deg = $4, longitude_deg = $5, time_zone = $6,
               country_code = $7, bidding_zone = $8, grid_import_limit_w = $9, grid_export_limit_w = $10,
               pv_system = $11::jsonb, update_time = now()
           WHERE org_id = $1 AND site_id = $2 RETURNING *""",
        site.org,
        site.site,
        s.display_name,
        s.location.latitude_deg,
        s.location.longitude_deg,
        s.time_zone,
        s.country_code,
        s.bidding_zone,
        s.grid_import_limit_w,
        s.grid_export_limit_w,
        pv_to_json(s),
    )
    return site_message(row)


async def delete_site(conn: Conn, site: SiteName, force: bool, ports: RegistryPorts) -> None:
    """In the caller's transaction; with `force`, its edges (and everything on them) go too."""
    row = await conn.fetchrow(
        "SELECT 1 FROM app.sites WHERE org_id = $1 AND site_id = $2 FOR UPDATE", site.org, site.site
    )
    if row is None:
        raise not_found(str(site))
    edges = await conn.fetchval(
        "SELECT count(*) FROM app.edges WHERE org_id = $1 AND site_id = $2", site.org, site.site
    )
    if edges and not force:
        raise has_children(str(site), "edges")
    await erase.delete_site_data(conn, site.org, site.site, ports)


async def site_time_zone(conn: Conn, site: SiteName) -> str | None:
    """The site's IANA time zone, or None when there is no such site."""
    tz = await conn.fetchval("SELECT time_zone FROM app.sites WHERE org_id = $1 AND site_id = $2", site.org, site.site)
    return None if tz is None else str(tz)


async def site_location(conn: Conn, site: SiteName) -> tuple[float, float] | None:
    """The site's (latitude_deg, longitude_deg), or None when there is no such site."""
    row = await conn.fetchrow(
        "SELECT latitude_deg, longitude_deg FROM app.sites WHERE org_id = $1 AND site_id = $2", site.org, site.site
    )
    return None if row is None else (row["latitude_deg"], row["longitude_deg"])


@dataclass(frozen=True)
class SiteProfile:
    """What the forecast needs of a site: where it is, its calendar and its PV plant (None: none
    described). A location of exactly (0, 0) is the unset default, not a site in the Gulf of Guinea."""

    site: SiteName
    latitude_deg: float
    longitude_deg: float
    time_zone: str
    country_code: str
    pv_system: registry_pb2.PvSystem | None
    # The market bidding zone ("" when the site states none) and the grid connection's limits in
    # watts (0: unknown), for the optimizer.
    bidding_zone: str = ""
    grid_import_limit_w: float = 0.0
    grid_export_limit_w: float = 0.0

    @property
    def has_location(self) -> bool:
        return (self.latitude_deg, self.longitude_deg) != (0.0, 0.0)


async def site_profile(conn: Conn, site: SiteName) -> SiteProfile | None:
    """The site's profile, or None when there is no such site."""
    row = await conn.fetchrow(
        """SELECT latitude_deg, longitude_deg, time_zone, country_code, pv_system, bidding_zone,
                  grid_import_limit_w, grid_export_limit_w
           FROM app.sites WHERE org_id = $1 AND site_id = $2""",
        site.org,
        site.site,
    )
    if row is None:
        return None
    return SiteProfile(
        site,
        row["latitude_deg"],
        row["longitude_deg"],
        row["time_zone"],
        row["country_code"],
        pv_from_json(row["pv_system"]),
        row["bidding_zone"] or "",
        float(row["grid_import_limit_w"] or 0.0),
        float(row["grid_export_limit_w"] or 0.0),
    )


async def all_sites(conn: Conn) -> list[SiteName]:
    """Every site of every organization, in name order (the forecast scheduler's round)."""
    rows = await conn.fetch("SELECT org_id, site_id FROM app.sites ORDER BY org_id, site_id")
    return [SiteName(r["org_id"], r["site_id"]) for r in rows]
