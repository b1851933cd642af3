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
import functools
import json
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from services.market.assessment import Assessed, WarningPolicy, assess_stored, day_ahead, upsert_warnings
from services.market.binary_copy import CopyRows, int2, int4, int8, text, text_array, timestamptz
from services.market.interconnect import BorderWarning
from services.market.model import (
    CapacitySeries,
    DocumentKind,
    FlowSeries,
    MarketDocument,
    MarketError,
    PriceSeries,
    Slot,
    SlotColumns,
    epoch_us,
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
        # What json.dumps(..., separators=(",", ":")) gives for these fields, written out: a backfill
        # announces every document, and the general encoder was a tenth of saving one.
        string, iso = _json_string, _isoformat
        interval = f"[{string(iso(self.interval[0]))},{string(iso(self.interval[1]))}]" if self.interval else "null"
        return (
            f'{{"source":{string(self.source)},"document_id":{string(self.document_id)},'
            f'"revision":{int(self.revision)},"kind":{string(self.kind)},"outcome":{string(self.outcome.value)},'
            f'"fetched_at":{string(iso(self.fetched_at))},'
            f'"zones":[{",".join(map(string, self.zones[:_MAX_NOTIFIED_ZONES]))}],"interval":{interval},'
            f'"warnings":{int(self.warnings)},"cleared":{int(self.cleared)}}}'
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


_json_string: Final[Callable[[str], str]] = json.encoder.encode_basestring_ascii


def _isoformat(t: datetime) -> str:
    # A batch announces every document with the same fetch time, and the documents of one delivery
    # day (one per zone) share their interval: each is formatted once. Only UTC times are cached:
    # equal times in another zone may be written differently (an offset, a repeated hour's fold).
    return _utc_isoformat(t) if t.tzinfo is UTC else t.isoformat()


@functools.lru_cache(maxsize=1024)
def _utc_isoformat(t: datetime) -> str:
    return t.isoformat()


def _aware(value: datetime, what: str) -> datetime:
    if value.tzinfo is UTC:  # what every parser gives: nothing to convert
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise StoreError(f"{what} {value.isoformat()} has no time zone")
    return value.astimezone(UTC)


def _resolution_s(resolution: timedelta, what: str) -> int:
    seconds = resolution.total_seconds()
    if seconds <= 0 or seconds != int(seconds):
        raise StoreError(f"{what}: resolution {resolution} is not a whole number of seconds above 0")
    return int(seconds)


def _columns(slots: Sequence[Slot], what: str) -> tuple[Sequence[int], Sequence[float]]:
    """Starts (microseconds since the Unix epoch) and values of `slots`, every value finite and every
    start timezone-aware, else a StoreError naming the slot."""
    # type() first: SlotColumns is a Sequence, so isinstance() goes through the ABC machinery.
    if (type(slots) is SlotColumns or isinstance(slots, SlotColumns)) and all(map(math.isfinite, slots.values)):
        return slots.starts_us, slots.values  # what the ENTSO-E parser gives: nothing per slot
    starts: list[int] = []
    values: list[float] = []
    for i, slot in enumerate(slots):
        if not math.isfinite(slot.value):
            raise StoreError(f"{what}: slot {i} ({slot.start.isoformat()}) has the value {slot.value}")
        starts.append(epoch_us(_aware(slot.start, f"{what}: slot {i}")))
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


# (table, series identity, delivery start in microseconds since the Unix epoch, resolution in seconds,
# value): what a save compares.
_Row = tuple[str, tuple[object, ...], int, int, float]
PriceIdent = tuple[str, int, int, int, str]  # zone, product, auction, sequence, geography


@dataclass(slots=True)
class _Prepared:
    """One document checked and turned into columns before anything is written."""

    index: int  # its position in the call
    doc: MarketDocument
    source: str
    zones: tuple[str, ...]
    span: tuple[datetime, datetime] | None
    created: datetime | None
    # identity, resolution s, starts (us since the epoch), values, currency, unit
    prices: list[tuple[PriceIdent, int, Sequence[int], Sequence[float], str, str]]
    # table, (out zone, in zone), resolution s, starts (us since the epoch), values
    borders: list[tuple[str, tuple[str, str], int, Sequence[int], Sequence[float]]]
    rows: int  # value rows it writes
    old: set[_Row] = field(default_factory=set)

    @property
    def lock(self) -> str:
        return f"market:{self.source}:{self.doc.document_id}"

    def new(self) -> set[_Row]:
        out: set[_Row] = set()
        for ident, res, starts, values, _, _ in self.prices:
            out.update(("prices", ident, s, res, v) for s, v in zip(starts, values, strict=True))
        for table, border, res, starts, values in self.borders:
            out.update((table, border, s, res, v) for s, v in zip(starts, values, strict=True))
        return out

    def replaced(self) -> set[tuple[object, ...]]:
        """What the document's values replace: its price identities and its borders per table."""
        return {("prices", *p[0]) for p in self.prices} | {(b[0], *b[1]) for b in self.borders}


def _prepare(index: int, doc: MarketDocument) -> _Prepared:
    """Check everything the store refuses (StoreError) before a single row is written."""
    prices = []
    for i, p in enumerate(doc.prices):
        what = f"{doc.document_id}: prices[{i}]"
        res = _resolution_s(p.resolution, what)
        starts, values = _columns(p.slots, what)
        prices.append(
            ((p.zone, p.product.value, p.auction, p.sequence, p.geography), res, starts, values, p.currency, p.unit)
        )
    borders = []
    by_table: tuple[tuple[str, tuple[FlowSeries | CapacitySeries, ...]], ...] = (
        ("flows", doc.flows),
        ("capacities", doc.capacities),
    )
    for table, series in by_table:
        for i, b in enumerate(series):
            what = f"{doc.document_id}: {table}[{i}]"
            res = _resolution_s(b.resolution, what)
            starts, values = _columns(b.slots, what)
            borders.append((table, (b.out_zone, b.in_zone), res, starts, values))
    created = _aware(doc.created_at, "created_at") if doc.created_at is not None else None
    span = _span(doc)
    given: list[tuple[str, tuple[object, ...], int, Sequence[int]]] = [
        ("prices", ident, res, starts) for ident, res, starts, *_ in prices
    ]
    given += [(table, border, res, starts) for table, border, res, starts, _ in borders]
    seen: set[tuple[str, tuple[object, ...], int]] = set()
    first, last = (epoch_us(span[0]), epoch_us(span[1])) if span is not None else (0, 0)
    for i, (table, ident, res, starts) in enumerate(given):
        # What lets the values be written without an upsert: a document replaces exactly its span.
        if (table, ident, res) in seen:
            raise StoreError(f"{doc.document_id}: two {table} series of {ident} at {res} s; a series is given once")
        seen.add((table, ident, res))
        if len(starts) and span is not None and (_lowest(starts) < first or _highest(starts) + res * 1_000_000 > last):
            raise StoreError(
                f"{doc.document_id}: {table} series {i} has slots outside the document's interval"
                f" {span[0].isoformat()}..{span[1].isoformat()}"
            )
    rows = sum(len(p[2]) for p in prices) + sum(len(b[3]) for b in borders)
    return _Prepared(index, doc, doc.source.value, _zones(doc), span, created, prices, borders, rows)


def _lowest(starts: Sequence[int]) -> int:
    # A range (the parser's contiguous slots) knows its ends; min() would walk it.
    return starts[0] if type(starts) is range and starts.step > 0 else min(starts)


def _highest(starts: Sequence[int]) -> int:
    return starts[-1] if type(starts) is range and starts.step > 0 else max(starts)


def _waves(prepared: Sequence[_Prepared]) -> list[list[_Prepared]]:
    """Consecutive groups whose documents touch nothing another of the group touches (the same
    document id, or the same series identity over overlapping spans), so a group can be written with
    one statement per step and give what saving its documents one after another gives."""
    waves: list[list[_Prepared]] = []
    ids: set[tuple[str, str]] = set()
    spans: dict[tuple[object, ...], list[tuple[datetime, datetime]]] = {}
    for p in prepared:
        ident = (p.source, p.doc.document_id)
        replaced = p.replaced()
        clash = ident in ids or any(
            p.span is not None and any(a < p.span[1] and p.span[0] < b for a, b in spans.get(k, ())) for k in replaced
        )
        if clash or not waves:
            waves.append([])
            ids.clear()
            spans.clear()
        waves[-1].append(p)
        ids.add(ident)
        if p.span is not None:
            for k in replaced:
                spans.setdefault(k, []).append(p.span)
    return waves


async def save_document(
    conn: Conn, doc: MarketDocument, fetched_at: datetime, warnings: WarningPolicy | None = None
) -> SaveResult:
    """Store `doc`, fetched at `fetched_at` (timezone-aware), in one transaction; see the module's
    docstring for the rules. `warnings` gives the thresholds and configured borders the affected borders
    are assessed with (defaults otherwise). Raises StoreError for a document the store refuses, asyncpg
    errors for a database that fails; either way nothing of the document stays stored."""
    return (await save_documents(conn, [doc], fetched_at, warnings))[0]


async def save_documents(
    conn: Conn, docs: Sequence[MarketDocument], fetched_at: datetime, warnings: WarningPolicy | None = None
) -> list[SaveResult]:
    """Store `docs` in one transaction, each by the rules of `save_document`, with a few statements
    for all of them instead of several per document; the results in the order given. Every document
    is checked before anything is written: a StoreError for any of them writes none, and a database
    error rolls all of them back, so no document is ever half-stored (a caller that wants the others
    stored anyway saves them again without the one named)."""
    fetched = _aware(fetched_at, "fetched_at")
    prepared = [_prepare(i, doc) for i, doc in enumerate(docs)]
    results: list[SaveResult | None] = [None] * len(prepared)
    policy = warnings or WarningPolicy()
    async with conn.transaction():
        for wave in _waves(prepared):
            for p, result in await _save_wave(conn, wave, fetched, policy):
                results[p.index] = result
    return [r for r in results if r is not None]


def _result(
    p: _Prepared,
    fetched: datetime,
    outcome: SaveOutcome,
    written: int = 0,
    replaced: int = 0,
    assessed: Assessed | None = None,
) -> SaveResult:
    return SaveResult(
        outcome,
        p.source,
        p.doc.document_id,
        p.doc.revision,
        p.doc.kind.value,
        fetched,
        p.zones,
        p.span,
        written,
        replaced,
        assessed.changed if assessed else (),
        assessed.cleared if assessed else (),
    )


async def _save_wave(
    conn: Conn, wave: list[_Prepared], fetched: datetime, policy: WarningPolicy
) -> list[tuple[_Prepared, SaveResult]]:
    # Locks in one order whoever takes them, so two savers of overlapping batches never deadlock.
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM unnest($1::text[]) AS k",
        sorted({p.lock for p in wave}),
    )
    # A subquery per document: always a primary key lookup. As a join the planner hashed a scan of
    # every document ever stored once the table grew.
    rows = await conn.fetch(
        "SELECT k.s, k.i, (SELECT max(d.revision) FROM market.documents d WHERE d.source = k.s"
        " AND d.document_id = k.i) AS held FROM unnest($1::text[], $2::text[]) AS k(s, i)",
        [p.source for p in wave],
        [p.doc.document_id for p in wave],
    )
    held = {(r["s"], r["i"]): r["held"] for r in rows if r["held"] is not None}
    done: list[tuple[_Prepared, SaveResult]] = []
    live: list[_Prepared] = []
    earlier: list[_Prepared] = []
    for p in wave:
        revision = held.get((p.source, p.doc.document_id))
        if revision is not None and revision == p.doc.revision:
            done.append((p, _result(p, fetched, SaveOutcome.UNCHANGED)))
        elif revision is not None and revision > p.doc.revision:
            done.append((p, _result(p, fetched, SaveOutcome.OUTDATED)))
        else:
            live.append(p)
            if revision is not None:
                earlier.append(p)
    if not live:
        return done
    if earlier:
        # An earlier revision of these documents: its values go, also those of a series the new
        # revision no longer has at all.
        await _delete_documents(conn, earlier)
    await _replace(conn, [p for p in live if p.span is not None])
    await _insert(conn, live)
    await _copy(conn, "documents", _DOCUMENT_COLUMNS, _document_rows(live, fetched))
    changed: list[tuple[_Prepared, SaveOutcome]] = []
    for p in live:
        written, replaced = p.rows, len(p.old)
        if p.doc.kind is DocumentKind.NO_DATA:
            done.append((p, _result(p, fetched, SaveOutcome.STORED)))
        elif not written and not replaced:
            done.append((p, _result(p, fetched, SaveOutcome.UNCHANGED)))
        elif p.old and p.old == p.new():
            done.append((p, _result(p, fetched, SaveOutcome.UNCHANGED, written, replaced)))
        else:
            changed.append((p, SaveOutcome.REVISED if p.old else SaveOutcome.STORED))
    assess = await _assessed(conn, [p for p, _ in changed], policy)
    payloads: list[str] = []
    for p, outcome in changed:
        assessed = Assessed()
        if p.span is not None and p.index in assess:
            origin = (p.source, p.doc.document_id, p.doc.revision)
            try:
                assessed = await assess_stored(conn, p.doc, p.span, policy, origin)
            except AnalyticsError as exc:  # the document goes back with its warnings: nothing half-stored
                raise StoreError(f"{p.doc.document_id}: assessing its borders: {exc}") from None
        publication = Publication(
            p.source,
            p.doc.document_id,
            p.doc.revision,
            p.doc.kind.value,
            outcome,
            fetched,
            p.zones,
            p.span,
            len(assessed.changed),
            len(assessed.cleared),
        )
        payloads.append(publication.to_json())
        done.append((p, _result(p, fetched, outcome, p.rows, len(p.old), assessed)))
    if payloads:
        await conn.execute("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", NOTIFY_CHANNEL, payloads)
    return done


async def _assessed(conn: Conn, changed: list[_Prepared], policy: WarningPolicy) -> set[int]:
    """The documents (by index) whose borders need assessing: every flows or capacities document, and a
    day-ahead price document when a configured border or a stored flow or capacity touches its zone on
    its days (one query for all of them; most backfilled prices have none)."""
    wanted = {p.index for p in changed if p.doc.kind in (DocumentKind.FLOWS, DocumentKind.CAPACITIES)}
    priced = [p for p in changed if p.doc.kind is DocumentKind.PRICES and p.span is not None]
    zones = {s.zone for p in priced for s in p.doc.prices if day_ahead(s)}
    if not zones:
        return wanted
    configured = {z for b in policy.borders for z in b}
    spans = [p.span for p in priced if p.span is not None]
    start = min(s[0] for s in spans) - timedelta(days=1)
    end = max(s[1] for s in spans) + timedelta(days=1)
    touching = (
        "(out_zone = ANY($1::text[]) OR in_zone = ANY($1::text[])) AND delivery_start >= $2 AND delivery_start < $3"
    )
    rows = await conn.fetch(
        f"SELECT out_zone, in_zone FROM market.flows WHERE {touching}"
        f" UNION SELECT out_zone, in_zone FROM market.capacities WHERE {touching}",
        sorted(zones),
        start,
        end,
    )
    bordered = configured | {r["out_zone"] for r in rows} | {r["in_zone"] for r in rows}
    wanted.update(p.index for p in priced if any(day_ahead(s) and s.zone in bordered for s in p.doc.prices))
    return wanted


# Finding the rows a save replaces and deleting them are two statements: the rows are found with one
# index range scan per series and document (a LATERAL subquery the planner cannot flatten: as a
# `DELETE ... USING unnest(...)` join it hashed a sequential scan of every stored price, so each batch
# cost more the more was stored), locked FOR UPDATE so they stay put, and deleted by their ctid (a TID
# scan). In a backfill nothing is found and the DELETE is skipped.
_PRICE_FOUND = "w.tid, w.zone, w.product, w.auction, w.sequence, w.geography, w.delivery_start, w.resolution_s, w.value"
_BORDER_FOUND = "w.tid, w.out_zone, w.in_zone, w.delivery_start, w.resolution_s, w.value"


async def _take(conn: Conn, table: str, found: list[asyncpg.Record]) -> None:
    if found:
        await conn.execute(f"DELETE FROM market.{table} WHERE ctid = ANY($1::tid[])", [r["tid"] for r in found])


async def _delete_documents(conn: Conn, docs: list[_Prepared]) -> None:
    by_n = {n: p for n, p in enumerate(docs)}
    keys = ([n for n in by_n], [p.source for p in docs], [p.doc.document_id for p in docs])
    rows = await conn.fetch(
        f"SELECT k.n, {_PRICE_FOUND} FROM unnest($1::int[], $2::text[], $3::text[]) AS k(n, s, i) CROSS JOIN LATERAL"
        " (SELECT p.ctid AS tid, p.* FROM market.prices p WHERE p.source = k.s AND p.document_id = k.i"
        " OFFSET 0 FOR UPDATE) w",
        *keys,
    )
    await _take(conn, "prices", rows)
    for r in rows:
        by_n[r[0]].old.add(("prices", (r[2], r[3], r[4], r[5], r[6]), epoch_us(r[7]), r[8], r[9]))
    for table in ("flows", "capacities"):
        rows = await conn.fetch(
            f"SELECT k.n, {_BORDER_FOUND} FROM unnest($1::int[], $2::text[], $3::text[]) AS k(n, s, i)"
            f" CROSS JOIN LATERAL (SELECT p.ctid AS tid, p.* FROM market.{table} p"
            " WHERE p.source = k.s AND p.document_id = k.i OFFSET 0 FOR UPDATE) w",
            *keys,
        )
        await _take(conn, table, rows)
        for r in rows:
            by_n[r[0]].old.add((table, (r[2], r[3]), epoch_us(r[4]), r[5], r[6]))


async def _replace(conn: Conn, docs: list[_Prepared]) -> None:
    """Delete the values of each document's series identities inside its span (into its `old`)."""
    by_n = {n: p for n, p in enumerate(docs)}
    idents = sorted({(n, ident) for n, p in by_n.items() for ident, *_ in p.prices})
    if idents:
        rows = await conn.fetch(
            f"SELECT k.n, {_PRICE_FOUND} FROM unnest($1::int[], $2::text[], $3::smallint[], $4::smallint[],"
            " $5::int[], $6::text[], $7::timestamptz[], $8::timestamptz[])"
            " AS k(n, zone, product, auction, sequence, geography, s, e) CROSS JOIN LATERAL"
            " (SELECT p.ctid AS tid, p.* FROM market.prices p"
            " WHERE p.zone = k.zone AND p.product = k.product AND p.auction = k.auction AND p.sequence = k.sequence"
            " AND p.geography = k.geography AND p.delivery_start >= k.s AND p.delivery_start < k.e"
            " OFFSET 0 FOR UPDATE) w",
            [n for n, _ in idents],
            *([ident[i] for _, ident in idents] for i in range(5)),
            [_span_of(by_n[n])[0] for n, _ in idents],
            [_span_of(by_n[n])[1] for n, _ in idents],
        )
        await _take(conn, "prices", rows)
        for r in rows:
            by_n[r[0]].old.add(("prices", (r[2], r[3], r[4], r[5], r[6]), epoch_us(r[7]), r[8], r[9]))
    for table in ("flows", "capacities"):
        borders = sorted({(n, b[1]) for n, p in by_n.items() for b in p.borders if b[0] == table})
        if not borders:
            continue
        rows = await conn.fetch(
            f"SELECT k.n, {_BORDER_FOUND} FROM unnest($1::int[], $2::text[], $3::text[], $4::timestamptz[],"
            " $5::timestamptz[]) AS k(n, o, i, s, e) CROSS JOIN LATERAL"
            f" (SELECT p.ctid AS tid, p.* FROM market.{table} p"
            " WHERE p.out_zone = k.o AND p.in_zone = k.i AND p.delivery_start >= k.s AND p.delivery_start < k.e"
            " OFFSET 0 FOR UPDATE) w",
            [n for n, _ in borders],
            [b[0] for _, b in borders],
            [b[1] for _, b in borders],
            [_span_of(by_n[n])[0] for n, _ in borders],
            [_span_of(by_n[n])[1] for n, _ in borders],
        )
        await _take(conn, table, rows)
        for r in rows:
            by_n[r[0]].old.add((table, (r[2], r[3]), epoch_us(r[4]), r[5], r[6]))


def _span_of(p: _Prepared) -> tuple[datetime, datetime]:
    assert p.span is not None  # only documents with a span have values to replace
    return p.span


PRICE_COLUMNS: Final = (
    "zone",
    "product",
    "auction",
    "sequence",
    "geography",
    "delivery_start",
    "resolution_s",
    "value",
    "currency",
    "unit",
    "source",
    "document_id",
    "revision",
)
_BORDER_COLUMNS: Final = (
    "out_zone",
    "in_zone",
    "delivery_start",
    "resolution_s",
    "value",
    "source",
    "document_id",
    "revision",
)


async def _insert(conn: Conn, docs: list[_Prepared]) -> None:
    """Write every document's slots with a binary COPY per table (services/market/binary_copy.py).
    No slot can meet a stored row: each lies inside its document's span (checked by _prepare), whose
    rows of the same series were deleted just before, and no two documents of a group share a series
    over overlapping spans (_waves); were one to meet, the unique key refuses it and the whole call
    rolls back, never a silent overwrite."""
    prices = CopyRows(len(PRICE_COLUMNS))
    borders = {"flows": CopyRows(len(_BORDER_COLUMNS)), "capacities": CopyRows(len(_BORDER_COLUMNS))}
    for p in docs:
        try:
            after = text(p.source) + text(p.doc.document_id) + int8(p.doc.revision)
            for (zone, product, auction, sequence, geography), res, starts, values, currency, unit in p.prices:
                prices.series(
                    text(zone) + int2(product) + int2(auction) + int4(sequence) + text(geography),
                    starts,
                    int4(res),
                    values,
                    text(currency) + text(unit) + after,
                )
            for table, (out_zone, in_zone), res, starts, values in p.borders:
                borders[table].series(text(out_zone) + text(in_zone), starts, int4(res), values, after)
        except (struct.error, OverflowError) as exc:  # a number the column's type cannot hold
            raise StoreError(f"{p.doc.document_id}: {exc}") from None
    if prices.rows:
        await _copy(conn, "prices", PRICE_COLUMNS, prices)
    for table, rows in borders.items():
        if rows.rows:
            await _copy(conn, table, _BORDER_COLUMNS, rows)


_DOCUMENT_COLUMNS: Final = (
    "source",
    "document_id",
    "revision",
    "kind",
    "fetched_at",
    "created_at",
    "interval_start",
    "interval_end",
    "no_data_reason",
    "zones",
    "value_count",
)


def _document_rows(docs: list[_Prepared], fetched: datetime) -> CopyRows:
    """The revision records of `docs` as one binary COPY (no jsonb array per document to unnest, no
    array parameters for asyncpg to walk element by element). A revision stored before is refused by
    the primary key, as an INSERT would be, and rolls the call back."""
    out = CopyRows(len(_DOCUMENT_COLUMNS))
    at = timestamptz(fetched)
    for p in docs:
        start, end = p.span if p.span is not None else (None, None)
        try:
            out.row(
                text(p.source)
                + text(p.doc.document_id)
                + int8(p.doc.revision)
                + text(p.doc.kind.value)
                + at
                + timestamptz(p.created)
                + timestamptz(start)
                + timestamptz(end)
                + text(p.doc.no_data_reason)
                + text_array(p.zones)
                + int4(p.rows)
            )
        except (struct.error, OverflowError) as exc:  # a number the column's type cannot hold
            raise StoreError(f"{p.doc.document_id}: {exc}") from None
    return out


async def _copy(conn: Conn, table: str, columns: tuple[str, ...], rows: CopyRows) -> None:
    # asyncpg copies from any buffer; its stubs name only paths, files and async iterables.
    source: Any = rows.payload()
    await conn.copy_to_table(table, schema_name="market", source=source, columns=columns, format="binary")


async def save_warnings(conn: Conn, warnings: Sequence[BorderWarning]) -> int:
    """Upsert border warnings by their stable key, with their evidence as jsonb and no origin
    document; the number given."""
    await upsert_warnings(conn, warnings, None)
    return len(warnings)
