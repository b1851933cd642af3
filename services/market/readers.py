"""Stored prices for other domains (the optimizer): a zone's day-ahead curve on the 15-minute grid;
and the stored border warnings of zones (the alarm engine's MARKET_WARNING rules).

The rules are the analytics' own (services/market/resample.py): an hourly slot repeats into its four
quarter hours, a quarter hour not fully covered by a published slot is a gap (absent, never zero).
Where the zone published several resolutions of one series (DE-LU's PT60M next to PT15M), the finest
one that covers a quarter hour gives its value. Only sequence 1 is read: ENTSO-E's classification
sequences are separate auctions (for DE-LU the SDAC coupling is 1) and are never mixed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime

from services.market.model import Product
from services.market.queries import SeriesKey, StoredWarning, load_prices, load_zone_warnings
from services.market.resample import QUARTER_HOUR, resample_slots
from services.market.zones import BIDDING_ZONES, is_eic
from services.platform.migrations import Conn

_BY_SHORT_NAME = {short: eic for eic, (short, _) in BIDDING_ZONES.items()}


def zone_eic(code: str) -> str | None:
    """The EIC of a bidding zone given as its EIC or its short name ("DE-LU", "ES"); None if unknown."""
    if code in BIDDING_ZONES:
        return code
    if code in _BY_SHORT_NAME:
        return _BY_SHORT_NAME[code]
    return code if is_eic(code) else None


async def zone_prices(conn: Conn, zone_eic: str, start: datetime, end: datetime) -> list[tuple[datetime, float]]:
    """The zone's stored day-ahead prices, EUR/MWh, as (quarter-hour start, price) for every quarter
    hour starting in [start, end) that a published slot covers, in time order; a quarter hour without
    a price is left out. Prices published in another currency or unit than EUR/MWh are left out too
    (none of the zones EMMA reads publishes one)."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("zone_prices: start and end need a time zone")
    # A published hour that began before `start` still covers its quarter hours after it.
    stored = await load_prices(conn, SeriesKey(zone_eic, Product.DAY_AHEAD, 0, 1, ""), start - QUARTER_HOUR * 4, end)
    if (stored.currency, stored.unit) != ("EUR", "MWH"):
        return []
    out: dict[datetime, float] = {}
    # Coarsest first, so a finer resolution overwrites what a coarser one repeated.
    for series in sorted(stored.series, key=lambda s: s.resolution, reverse=True):
        for slot in resample_slots(series.slots, series.resolution, QUARTER_HOUR):
            if start <= slot.start < end:
                out[slot.start.astimezone(UTC)] = slot.value
    return sorted(out.items())


async def zone_warnings(conn: Conn, zone_eics: Sequence[str], days: Sequence[date]) -> list[StoredWarning]:
    """Read-only: the stored border warnings (saturation, price spread, decoupling) with either end of
    the border in one of the zones (EICs), for the delivery days (CET) given, by key. A warning that a
    later publication cleared is no longer stored, so it is not among them."""
    return await load_zone_warnings(conn, zone_eics, days)
