"""Storing market documents: `save_document` writes one parsed document in one transaction.

What a save does, in order, under a transaction-scoped advisory lock on the document's
(source, document_id), so two replicas saving the same document take turns:

1. The same (source, document_id, revision) stored before: UNCHANGED, nothing written.
   A higher revision of the document stored before: OUTDATED, nothing written (a late answer never
   rolls the values back).
2. Otherwise a row in market.documents (the revision record: every revision ever stored keeps its
   row), then per series the values it covers are **replaced**: the rows of the same series identity
   (zone, product, auction, sequence, geography for prices; the border and direction for flows and
   capacities) inside the document's delivery interval are deleted, and so are the values of an
   earlier revision of the same document, and the document's slots are written.
   So a re-published day replaces its values whatever the publisher calls the new document (ENTSO-E
   answers carry a fresh mRID per query; REE keeps the day's id and raises the revision), and a slot
   the new revision no longer gives disappears instead of surviving from the old one.
3. The outcome compares what was deleted with what was written: equal values are UNCHANGED (the
   fetch is still recorded), values written where there were none STORED, anything else REVISED.
4. A STORED or REVISED flows, capacities or day-ahead price document has the borders it affects
   assessed again in the same transaction (services/market/assessment.py): their warnings are
   upserted, and those raised or changed name this document as their origin.
5. A STORED or REVISED document is announced with NOTIFY on `emma_market` (delivered on commit, to
   every replica: WatchPublications listens there); the payload counts the warnings it raised or
   changed, which the service reads back by origin (a payload must stay under 8000 bytes).

Any error (a bad series, the database) rolls the whole document back: nothing is half-stored.
Values are written with one `INSERT ... SELECT FROM unnest(...)` per series: one round trip for a
series of any length.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from services.market.assessment import Assessed, WarningPolicy, assess_stored, upsert_warnings
from services.market.interconnect import BorderWarning
from services.market.model import (
    CapacitySeries,
    DocumentKind,
    FlowSeries,
    MarketDocument,
    MarketError,
    PriceSeries,
    Slot,
)
from services.market.resample import AnalyticsError

Conn = asyncpg.Connection | PoolConnectionProxy

# The channel every replica listens on for new publications (payload: `Publication.to_json`).
NOTIFY_CHANNEL: Final = "emma_market"
# pg_notify refuses payloads of 8000 bytes or more; a document naming more zones lists the first ones.
_MAX_NOTIFIED_ZONES: Final = 40


class StoreError(MarketError):
    """A document the store refuses (a naive time, a value that is not finite, a slot length not above
    zero); the whole document is rolled back."""


class SaveOutcome(enum.Enum):
    STORED = "stored"  # values where there were none (or a no-data answer recorded)
    REVISED = "revised"  # values replaced earlier, different ones
    UNCHANGED = "unchanged"  # stored before, or the same values under another document id or revision
    OUTDATED = "outdated"  # an older revision than the one held: nothing written


@dataclass(frozen=True, slots=True)
class SaveResult:
    outcome: SaveOutcome
    source: str
    document_id: str
    revision: int
    kind: str
    fetched_at: datetime
    zones: tuple[str, ...]  # every zone the document's series name, sorted
    interval: tuple[datetime, datetime] | None
    written: int  # value rows written (0 for UNCHANGED and OUTDATED)
    replaced: int  # value rows deleted because the document covers them
    warnings: tuple[str, ...] = ()  # keys of the border warnings this save raised or changed
    cleared: tuple[str, ...] = ()  # keys of the border warnings this save cleared


@dataclass(frozen=True, slots=True)
class Publication:
    """What NOTIFY carries about a stored document."""

    source: str
    document_id: str
    revision: int
    kind: str
    outcome: SaveOutcome
    fetched_at: datetime
    zones: tuple[str, ...]
    interval: tuple[datetime, datetime] | None
    warnings: int = 0  # border warnings raised or changed; read back by this document (market.warnings)
    cleared: int = 0  # border warnings cleared; read back by this document (market.cleared_warnings)

    def to_json(self) -> str:
        return json.dumps(
            {
                "source": self.source,
                "document_id": self.document_id,
                "revision": self.revision,
                "kind": self.kind,
                "outcome": self.outcome.value,
                "fetched_at": self.fetched_at.isoformat(),
                "zones": list(self.zones[:_MAX_NOTIFIED_ZONES]),
                "interval": [t.isoformat() for t in self.interval] if self.interval else None,
                "warnings": self.warnings,
                "cleared": self.cleared,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, payload: str) -> Publication:
        data = json.loads(payload)
        interval = data.get("interval")
        return cls(
            source=str(data["source"]),
            document_id=str(data["document_id"]),
            revision=int(data["revision"]),
            kind=str(data["kind"]),
            outcome=SaveOutcome(data["outcome"]),
            fetched_at=datetime.fromisoformat(data["fetched_at"]),
            zones=tuple(str(z) for z in data["zones"]),
            interval=(datetime.fromisoformat(interval[0]), datetime.fromisoformat(interval[1])) if interval else None,
            warnings=int(data.get("warnings", 0)),
            cleared=int(data.get("cleared", 0)),
        )


def _aware(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise StoreError(f"{what} {value.isoformat()} has no time zone")
    return value.astimezone(UTC)


def _resolution_s(resolution: timedelta, what: str) -> int:
    seconds = resolution.total_seconds()
    if seconds <= 0 or seconds != int(seconds):
        raise StoreError(f"{what}: resolution {resolution} is not a whole number of seconds above 0")
    return int(seconds)


def _columns(slots: Sequence[Slot], what: str) -> tuple[list[datetime], list[float]]:
    starts: list[datetime] = []
    values: list[float] = []
    for i, slot in enumerate(slots):
        if not math.isfinite(slot.value):
            raise StoreError(f"{what}: slot {i} ({slot.start.isoformat()}) has the value {slot.value}")
        starts.append(_aware(slot.start, f"{what}: slot {i}"))
        values.append(slot.value)
    return starts, values


def _zones(doc: MarketDocument) -> tuple[str, ...]:
    zones = {s.zone for s in doc.prices}
    borders: tuple[FlowSeries | CapacitySeries, ...] = (*doc.flows, *doc.capacities)
    for border in borders:
        zones.update((border.out_zone, border.in_zone))
    return tuple(sorted(zones))


def _span(doc: MarketDocument) -> tuple[datetime, datetime] | None:
    """The delivery interval whose values the document replaces: its own, or its slots' union."""
    if doc.interval is not None:
        return _aware(doc.interval[0], "interval start"), _aware(doc.interval[1], "interval end")
    every: tuple[PriceSeries | FlowSeries | CapacitySeries, ...] = (*doc.prices, *doc.flows, *doc.capacities)
    bounds = [
        (_aware(slot.start, "slot"), _aware(slot.start, "slot") + s.resolution) for s in every for slot in s.slots
    ]
    if not bounds:
        return None
    return min(b[0] for b in bounds), max(b[1] for b in bounds)


# (table, series identity, delivery start, resolution in seconds, value): what a save compares.
_Row = tuple[str, tuple[object, ...], datetime, int, float]


async def save_document(
    conn: Conn, doc: MarketDocument, fetched_at: datetime, warnings: WarningPolicy | None = None
) -> SaveResult:
    """Store `doc`, fetched at `fetched_at` (timezone-aware), in one transaction; see the module's
    docstring for the rules. `warnings` gives the thresholds and configured borders the affected borders
    are assessed with (defaults otherwise). Raises StoreError for a document the store refuses, asyncpg
    errors for a database that fails; either way nothing of the document stays stored."""
    fetched = _aware(fetched_at, "fetched_at")
    source = doc.source.value
    zones = _zones(doc)
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"market:{source}:{doc.document_id}"
        )
        held = await conn.fetchval(
            "SELECT max(revision) FROM market.documents WHERE source = $1 AND document_id = $2",
            source,
            doc.document_id,
        )
        span = _span(doc)

        def result(
            outcome: SaveOutcome, written: int = 0, replaced: int = 0, assessed: Assessed | None = None
        ) -> SaveResult:
            return SaveResult(
                outcome,
                source,
                doc.document_id,
                doc.revision,
                doc.kind.value,
                fetched,
                zones,
                span,
                written,
                replaced,
                assessed.changed if assessed else (),
                assessed.cleared if assessed else (),
            )

        if held is not None and held == doc.revision:
            return result(SaveOutcome.UNCHANGED)
        if held is not None and held > doc.revision:
            return result(SaveOutcome.OUTDATED)
        created = _aware(doc.created_at, "created_at") if doc.created_at is not None else None
        old: set[_Row] = set()
        new: set[_Row] = set()
        if held is not None:
            # An earlier revision of this document: its values go, also those of a series the new
            # revision no longer has at all.
            await _delete_document(conn, source, doc.document_id, old)
        if span is not None:
            await _replace(conn, doc, span, old, new)
        await conn.execute(
            "INSERT INTO market.documents (source, document_id, revision, kind, fetched_at, created_at,"
            " interval_start, interval_end, no_data_reason, zones, value_count)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            source,
            doc.document_id,
            doc.revision,
            doc.kind.value,
            fetched,
            created,
            span[0] if span else None,
            span[1] if span else None,
            doc.no_data_reason,
            list(zones),
            len(new),
        )
        if doc.kind is DocumentKind.NO_DATA or (not new and not old):
            return result(SaveOutcome.STORED if doc.kind is DocumentKind.NO_DATA else SaveOutcome.UNCHANGED)
        if old == new:
            return result(SaveOutcome.UNCHANGED, len(new), len(old))
        outcome = SaveOutcome.REVISED if old else SaveOutcome.STORED
        assessed = Assessed()
        if span is not None:
            origin = (source, doc.document_id, doc.revision)
            try:
                assessed = await assess_stored(conn, doc, span, warnings or WarningPolicy(), origin)
            except AnalyticsError as exc:  # the document goes back with its warnings: nothing half-stored
                raise StoreError(f"{doc.document_id}: assessing its borders: {exc}") from None
        publication = Publication(
            source,
            doc.document_id,
            doc.revision,
            doc.kind.value,
            outcome,
            fetched,
            zones,
            span,
            len(assessed.changed),
            len(assessed.cleared),
        )
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, publication.to_json())
        return result(outcome, len(new), len(old), assessed)


async def _delete_document(conn: Conn, source: str, document_id: str, old: set[_Row]) -> None:
    rows = await conn.fetch(
        "DELETE FROM market.prices WHERE source = $1 AND document_id = $2"
        " RETURNING zone, product, auction, sequence, geography, delivery_start, resolution_s, value",
        source,
        document_id,
    )
    old.update(("prices", (r[0], r[1], r[2], r[3], r[4]), r[5], r[6], r[7]) for r in rows)
    for table in ("flows", "capacities"):
        rows = await conn.fetch(
            f"DELETE FROM market.{table} WHERE source = $1 AND document_id = $2"
            " RETURNING out_zone, in_zone, delivery_start, resolution_s, value",
            source,
            document_id,
        )
        old.update((table, (r[0], r[1]), r[2], r[3], r[4]) for r in rows)


async def _replace(
    conn: Conn, doc: MarketDocument, span: tuple[datetime, datetime], old: set[_Row], new: set[_Row]
) -> None:
    """Delete the values of the document's series identities inside `span` (into `old`) and write the
    document's slots (into `new`)."""
    start, end = span
    source, document_id, revision = doc.source.value, doc.document_id, doc.revision
    price_ids = {(s.zone, s.product.value, s.auction, s.sequence, s.geography) for s in doc.prices}
    for ident in sorted(price_ids):
        zone, product, auction, sequence, geography = ident
        rows = await conn.fetch(
            "DELETE FROM market.prices WHERE zone = $1 AND product = $2 AND auction = $3 AND sequence = $4"
            " AND geography = $5 AND delivery_start >= $6 AND delivery_start < $7"
            " RETURNING delivery_start, resolution_s, value",
            zone,
            product,
            auction,
            sequence,
            geography,
            start,
            end,
        )
        old.update(("prices", ident, r[0], r[1], r[2]) for r in rows)
    for i, p in enumerate(doc.prices):
        what = f"{document_id}: prices[{i}]"
        res = _resolution_s(p.resolution, what)
        starts, values = _columns(p.slots, what)
        await _insert_prices(conn, p, res, starts, values, source, document_id, revision)
        ident = (p.zone, p.product.value, p.auction, p.sequence, p.geography)
        new.update(("prices", ident, s, res, v) for s, v in zip(starts, values, strict=True))
    borders_by_table: tuple[tuple[str, tuple[FlowSeries | CapacitySeries, ...]], ...] = (
        ("flows", doc.flows),
        ("capacities", doc.capacities),
    )
    for table, series in borders_by_table:
        borders = {(s.out_zone, s.in_zone) for s in series}
        for out_zone, in_zone in sorted(borders):
            rows = await conn.fetch(
                f"DELETE FROM market.{table} WHERE out_zone = $1 AND in_zone = $2"
                " AND delivery_start >= $3 AND delivery_start < $4 RETURNING delivery_start, resolution_s, value",
                out_zone,
                in_zone,
                start,
                end,
            )
            old.update((table, (out_zone, in_zone), r[0], r[1], r[2]) for r in rows)
        for i, b in enumerate(series):
            what = f"{document_id}: {table}[{i}]"
            res = _resolution_s(b.resolution, what)
            starts, values = _columns(b.slots, what)
            await _insert_border(conn, table, b, res, starts, values, source, document_id, revision)
            new.update((table, (b.out_zone, b.in_zone), s, res, v) for s, v in zip(starts, values, strict=True))


async def _insert_prices(
    conn: Conn,
    p: PriceSeries,
    resolution_s: int,
    starts: list[datetime],
    values: list[float],
    source: str,
    document_id: str,
    revision: int,
) -> None:
    await conn.execute(
        "INSERT INTO market.prices (zone, product, auction, sequence, geography, delivery_start, resolution_s,"
        " value, currency, unit, source, document_id, revision)"
        " SELECT $1, $2, $3, $4, $5, t.s, $6, t.v, $7, $8, $9, $10, $11"
        " FROM unnest($12::timestamptz[], $13::float8[]) AS t(s, v)"
        " ON CONFLICT (zone, product, auction, sequence, geography, delivery_start, resolution_s) DO UPDATE SET"
        " value = EXCLUDED.value, currency = EXCLUDED.currency, unit = EXCLUDED.unit, source = EXCLUDED.source,"
        " document_id = EXCLUDED.document_id, revision = EXCLUDED.revision",
        p.zone,
        p.product.value,
        p.auction,
        p.sequence,
        p.geography,
        resolution_s,
        p.currency,
        p.unit,
        source,
        document_id,
        revision,
        starts,
        values,
    )


async def _insert_border(
    conn: Conn,
    table: str,
    b: FlowSeries | CapacitySeries,
    resolution_s: int,
    starts: list[datetime],
    values: list[float],
    source: str,
    document_id: str,
    revision: int,
) -> None:
    await conn.execute(
        f"INSERT INTO market.{table} (out_zone, in_zone, delivery_start, resolution_s, value, source,"
        " document_id, revision)"
        " SELECT $1, $2, t.s, $3, t.v, $4, $5, $6 FROM unnest($7::timestamptz[], $8::float8[]) AS t(s, v)"
        " ON CONFLICT (out_zone, in_zone, delivery_start, resolution_s) DO UPDATE SET value = EXCLUDED.value,"
        " source = EXCLUDED.source, document_id = EXCLUDED.document_id, revision = EXCLUDED.revision",
        b.out_zone,
        b.in_zone,
        resolution_s,
        source,
        document_id,
        revision,
        starts,
        values,
    )


async def save_warnings(conn: Conn, warnings: Sequence[BorderWarning]) -> int:
    """Upsert border warnings by their stable key, with their evidence as jsonb and no origin
    document; the number given."""
    await upsert_warnings(conn, warnings, None)
    return len(warnings)
