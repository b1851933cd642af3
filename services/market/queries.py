"""Reading stored market data back into the normalised model, for the service.

Rows of one series identity come back grouped by their published resolution, one PriceSeries (or
FlowSeries, CapacitySeries) per resolution, so the analytics (resample, summary, interconnect) see
what was published and never a mix they would have to guess about. Each price row keeps the
document it came from (`Provenance`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import asyncpg

from services.market.model import CapacitySeries, FlowSeries, PriceSeries, Product, Slot
from services.platform.migrations import Conn


@dataclass(frozen=True, slots=True, order=True)
class Provenance:
    """The document a stored value came from, and when EMMA fetched it."""

    fetched_at: datetime
    source: str
    document_id: str
    revision: int


@dataclass(frozen=True, slots=True)
class SeriesKey:
    zone: str
    product: Product
    auction: int
    sequence: int
    geography: str


@dataclass(frozen=True, slots=True)
class StoredPrices:
    series: tuple[PriceSeries, ...]  # one per published resolution, in resolution order
    provenance: dict[tuple[datetime, int], Provenance]  # (slot start, resolution s) -> its document
    currency: str
    unit: str


_PRICE_ROWS = (
    "SELECT p.delivery_start, p.resolution_s, p.value, p.currency, p.unit, p.source, p.document_id, p.revision,"
    " d.fetched_at FROM market.prices p JOIN market.documents d"
    " ON (d.source, d.document_id, d.revision) = (p.source, p.document_id, p.revision)"
    " WHERE p.zone = $1 AND p.product = $2 AND p.auction = $3 AND p.sequence = $4 AND p.geography = $5"
)


async def load_prices(conn: Conn, key: SeriesKey, start: datetime, end: datetime) -> StoredPrices:
    """The stored prices of `key` whose slots start in [start, end)."""
    rows = await conn.fetch(
        _PRICE_ROWS + " AND p.delivery_start >= $6 AND p.delivery_start < $7 ORDER BY p.delivery_start",
        key.zone,
        key.product.value,
        key.auction,
        key.sequence,
        key.geography,
        start,
        end,
    )
    return _stored(key, rows)


async def load_latest_prices(conn: Conn, key: SeriesKey) -> StoredPrices:
    """The newest stored slot of `key` (empty when none)."""
    rows = await conn.fetch(
        _PRICE_ROWS + " ORDER BY p.delivery_start DESC, p.resolution_s LIMIT 1",
        key.zone,
        key.product.value,
        key.auction,
        key.sequence,
        key.geography,
    )
    return _stored(key, rows)


def _stored(key: SeriesKey, rows: list[asyncpg.Record]) -> StoredPrices:
    slots: dict[int, list[Slot]] = defaultdict(list)
    provenance: dict[tuple[datetime, int], Provenance] = {}
    currency, unit = "EUR", "MWH"
    for r in rows:
        start: datetime = r["delivery_start"]
        resolution_s: int = r["resolution_s"]
        currency, unit = r["currency"], r["unit"]
        slots[resolution_s].append(Slot(start, r["value"]))
        provenance[(start, resolution_s)] = Provenance(r["fetched_at"], r["source"], r["document_id"], r["revision"])
    series = tuple(
        PriceSeries(
            zone=key.zone,
            product=key.product,
            resolution=timedelta(seconds=res),
            slots=tuple(sorted(group, key=lambda s: s.start)),
            auction=key.auction,
            sequence=key.sequence,
            geography=key.geography,
            currency=currency,
            unit=unit,
        )
        for res, group in sorted(slots.items())
    )
    return StoredPrices(series, provenance, currency, unit)


async def load_border(
    conn: Conn, out_zone: str, in_zone: str, start: datetime, end: datetime
) -> tuple[tuple[FlowSeries, ...], tuple[CapacitySeries, ...]]:
    """The stored flows and capacities out_zone -> in_zone whose slots start in [start, end), one series
    per published resolution."""
    found: dict[str, dict[int, list[Slot]]] = {"flows": defaultdict(list), "capacities": defaultdict(list)}
    for table in ("flows", "capacities"):
        rows = await conn.fetch(
            f"SELECT delivery_start, resolution_s, value FROM market.{table}"
            " WHERE out_zone = $1 AND in_zone = $2 AND delivery_start >= $3 AND delivery_start < $4"
            " ORDER BY delivery_start",
            out_zone,
            in_zone,
            start,
            end,
        )
        for r in rows:
            found[table][r["resolution_s"]].append(Slot(r["delivery_start"], r["value"]))
    flows = tuple(
        FlowSeries(out_zone, in_zone, timedelta(seconds=res), tuple(group))
        for res, group in sorted(found["flows"].items())
    )
    capacities = tuple(
        CapacitySeries(out_zone, in_zone, timedelta(seconds=res), tuple(group))
        for res, group in sorted(found["capacities"].items())
    )
    return flows, capacities


@dataclass(frozen=True, slots=True)
class StoredWarning:
    key: str
    kind: str
    out_zone: str
    in_zone: str
    delivery_day: date
    message: str
    evidence_json: str


async def load_warnings(conn: Conn, zone: str, days: list[date]) -> list[StoredWarning]:
    """The stored border warnings involving `zone` on any of `days`, by key."""
    rows = await conn.fetch(
        "SELECT warning_key, kind, out_zone, in_zone, delivery_day, message, evidence::text AS evidence"
        " FROM market.warnings WHERE (out_zone = $1 OR in_zone = $1) AND delivery_day = ANY($2::date[])"
        " ORDER BY warning_key",
        zone,
        days,
    )
    return [
        StoredWarning(
            r["warning_key"],
            r["kind"],
            r["out_zone"],
            r["in_zone"],
            r["delivery_day"],
            r["message"],
            r["evidence"],
        )
        for r in rows
    ]


async def load_warnings_of(conn: Conn, source: str, document_id: str, revision: int) -> list[StoredWarning]:
    """The stored border warnings the document last raised or changed, by key."""
    rows = await conn.fetch(
        "SELECT warning_key, kind, out_zone, in_zone, delivery_day, message, evidence::text AS evidence"
        " FROM market.warnings WHERE source = $1 AND document_id = $2 AND revision = $3 ORDER BY warning_key",
        source,
        document_id,
        revision,
    )
    return [
        StoredWarning(
            r["warning_key"], r["kind"], r["out_zone"], r["in_zone"], r["delivery_day"], r["message"], r["evidence"]
        )
        for r in rows
    ]
