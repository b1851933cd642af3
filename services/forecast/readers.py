"""Stored forecasts for other domains (the optimizer): a site's p50 per 15-minute slot, each slot from
the newest forecast that covers it, so a run issued an hour ago still fills the slots a newer but
shorter one does not reach."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime, timedelta

from services.names import SiteName
from services.platform.migrations import Conn

SLOT = timedelta(minutes=15)
KINDS = frozenset({"pv_power", "site_load", "net_load"})


async def latest_forecast_values(
    conn: Conn,
    site: SiteName,
    kinds: Collection[str],
    start: datetime,
    slots: int,
    *,
    as_of: datetime | None = None,
) -> dict[str, list[float | None]]:
    """For each kind (pv_power, site_load, net_load), the p50 in watts of each of `slots` 15-minute
    slots from `start`: the value of the newest forecast issued at or before `as_of` (default: any
    time) that covers the slot, or None where none does. Raises ValueError for an unknown kind, a naive
    or off-grid `start`, or `slots` outside 1..288."""
    unknown = set(kinds) - KINDS
    if unknown:
        raise ValueError(f"unknown forecast kinds {sorted(unknown)}; known: {sorted(KINDS)}")
    if start.tzinfo is None or start.second or start.microsecond or start.minute % 15:
        raise ValueError(f"start {start.isoformat()} must be an aware time on a 15-minute boundary")
    if not 1 <= slots <= 288:
        raise ValueError(f"slots {slots} must be 1..288")
    end = start + SLOT * slots
    rows = await conn.fetch(
        """SELECT DISTINCT ON (f.kind, v.slot_start) f.kind, v.slot_start, v.p50_w
           FROM forecast.forecasts f JOIN forecast.forecast_values v ON v.forecast_id = f.forecast_id
           WHERE f.org_id = $1 AND f.site_id = $2 AND f.kind = ANY($3::text[])
             AND ($6::timestamptz IS NULL OR f.issue_time <= $6)
             AND f.start_time < $5 AND f.start_time + f.slot_count * interval '15 minutes' > $4
             AND v.slot_start >= $4 AND v.slot_start < $5
           ORDER BY f.kind, v.slot_start, f.issue_time DESC, f.forecast_id""",
        site.org,
        site.site,
        sorted(set(kinds)),
        start,
        end,
        as_of,
    )
    out: dict[str, list[float | None]] = {k: [None] * slots for k in kinds}
    for r in rows:
        index, rest = divmod(r["slot_start"].astimezone(UTC) - start, SLOT)
        if not rest:  # forecasts are on the 15-minute grid; anything else is not a slot of ours
            out[r["kind"]][int(index)] = float(r["p50_w"])
    return out
