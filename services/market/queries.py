"""Reading stored market data back into the normalised model, for the service.

Rows of one series identity come back grouped by their published resolution, one PriceSeries (or
FlowSeries, CapacitySeries) per resolution, so the analytics (resample, summary, interconnect) see
what was published and never a mix they would have to guess about. Each price row keeps the
document it came from (`Provenance`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
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


def _stored(key: SeriesKey, rows: Sequence[asyncpg.Record]) -> StoredPrices:
    provenance: dict[tuple[datetime, int], Provenance] = {}
    # Rows of one document share one Provenance object instead of one per row.
    shared: dict[tuple[datetime, str, str, int], Provenance] = {}
    for r in rows:
        ident = (r["fetched_at"], r["source"], r["document_id"], r["revision"])
        found = shared.get(ident)
        if found is None:
            found = shared[ident] = Provenance(*ident)
        provenance[(r["delivery_start"], r["resolution_s"])] = found
    return _series(key, rows, provenance)


def _series(
    key: SeriesKey, rows: Sequence[asyncpg.Record], provenance: dict[tuple[datetime, int], Provenance]
) -> StoredPrices:
    slots: dict[int, list[Slot]] = defaultdict(list)
    currency, unit = "EUR", "MWH"
    for r in rows:
        currency, unit = r["currency"], r["unit"]
        slots[r["resolution_s"]].append(Slot(r["delivery_start"], r["value"]))
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


@dataclass(frozen=True, slots=True)
class SummaryPrices:
    """What a summary of one zone reads: the prices of its window and its newest stored slot (which
    may lie beyond the window). Without provenance: a summary names no documents."""

    window: StoredPrices
    latest: StoredPrices


_SUMMARY_COLUMNS = "p.delivery_start, p.resolution_s, p.value, p.currency, p.unit"
_SUMMARY_SERIES = "p.zone = z.zone AND p.product = $4 AND p.auction = $5 AND p.sequence = $6 AND p.geography = $7"


async def load_summary_prices(
    conn: Conn,
    windows: Sequence[tuple[str, datetime, datetime]],
    product: Product,
    auction: int,
    sequence: int,
    geography: str,
) -> dict[str, SummaryPrices]:
    """For each (zone, start, end) the stored prices of the zone's series starting in [start, end) and
    its newest slot, in one query for all zones (a summary of 40 zones is one round trip)."""
    rows = await conn.fetch(
        "WITH z AS (SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS z(zone, s, e))"
        # Each zone's window as a LATERAL subquery kept apart by OFFSET 0: flattened into a plain join,
        # the planner cannot estimate the per-zone range `delivery_start >= z.s` and hashes a
        # sequential scan of every stored price (80 ms for a year of 40 zones), where one primary key
        # range scan per zone reads a day's rows (about 1 ms; EXPLAIN in docs/market.md).
        f" SELECT z.zone, false AS latest, w.* FROM z CROSS JOIN LATERAL"
        f" (SELECT {_SUMMARY_COLUMNS} FROM market.prices p"
        f" WHERE {_SUMMARY_SERIES} AND p.delivery_start >= z.s AND p.delivery_start < z.e OFFSET 0) w"
        " UNION ALL"
        " SELECT z.zone, true, l.* FROM z CROSS JOIN LATERAL"
        f" (SELECT {_SUMMARY_COLUMNS} FROM market.prices p WHERE {_SUMMARY_SERIES}"
        " ORDER BY p.delivery_start DESC, p.resolution_s LIMIT 1) l",
        [w[0] for w in windows],
        [w[1] for w in windows],
        [w[2] for w in windows],
        product.value,
        auction,
        sequence,
        geography,
    )
    grouped: dict[tuple[str, bool], list[asyncpg.Record]] = defaultdict(list)
    for r in rows:
        grouped[(r["zone"], r["latest"])].append(r)
    out: dict[str, SummaryPrices] = {}
    for zone, _, _ in windows:
        key = SeriesKey(zone, product, auction, sequence, geography)
        out[zone] = SummaryPrices(
            _series(key, grouped.get((zone, False), []), {}), _series(key, grouped.get((zone, True), []), {})
        )
    return out


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


async def load_zone_warnings(conn: Conn, zones: Sequence[str], days: Sequence[date]) -> list[StoredWarning]:
    """The stored border warnings involving any of `zones` on any of `days`, by key (one query; the
    caller keeps each zone's own days)."""
    rows = await conn.fetch(
        "SELECT warning_key, kind, out_zone, in_zone, delivery_day, message, evidence::text AS evidence"
        " FROM market.warnings WHERE (out_zone = ANY($1::text[]) OR in_zone = ANY($1::text[]))"
        " AND delivery_day = ANY($2::date[]) ORDER BY warning_key",
        list(zones),
        list(days),
    )
    return [
        StoredWarning(
            r["warning_key"], r["kind"], r["out_zone"], r["in_zone"], r["delivery_day"], r["message"], r["evidence"]
        )
        for r in rows
    ]


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """A source's last success and last failure as the fetch scheduler recorded them."""

    source: str
    last_success_at: datetime | None
    last_error_at: datetime | None
    last_error: str

    @property
    def failing(self) -> bool:
        """Its last fetch failed: an error after the last success (or errors and no success yet)."""
        if self.last_error_at is None:
            return False
        return self.last_success_at is None or self.last_error_at > self.last_success_at


async def load_source_status(conn: Conn, sources: Sequence[str]) -> dict[str, SourceStatus]:
    """The recorded status of each of `sources` that has one."""
    rows = await conn.fetch(
        "SELECT source, last_success_at, last_error_at, last_error FROM market.source_status"
        " WHERE source = ANY($1::text[])",
        list(sources),
    )
    return {
        r["source"]: SourceStatus(r["source"], r["last_success_at"], r["last_error_at"], r["last_error"]) for r in rows
    }


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


async def load_cleared_of(conn: Conn, source: str, document_id: str, revision: int) -> list[str]:
    """The keys of the border warnings the document cleared, sorted."""
    rows = await conn.fetch(
        "SELECT warning_key FROM market.cleared_warnings WHERE source = $1 AND document_id = $2 AND revision = $3"
        " ORDER BY warning_key",
        source,
        document_id,
        revision,
    )
    return [r["warning_key"] for r in rows]
