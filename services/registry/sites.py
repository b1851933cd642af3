"""Sites: the lookups other domains make (through the package face)."""

from __future__ import annotations

from services.names import SiteName
from services.platform.migrations import Conn


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
