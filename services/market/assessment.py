"""Border warnings kept current as documents are stored: after a flows, capacities or day-ahead price
document is saved, every border it affects is assessed again (interconnect.assess_border) for every
delivery day (CET) it covers, from what is stored now, inside the document's own transaction.

Affected borders: a flows or capacities document's own borders; for day-ahead prices (sequence 1) of
a zone, the configured borders of that zone and every border of it with flows or capacities stored on
those days. A warning is upserted by its stable key and counts as raised or changed only when its
message or evidence differs from the stored one (storing the same data twice announces nothing); a
warning of an assessed border and day that no longer holds is deleted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from services.market.interconnect import MARKET_DAY_TZ, BorderWarning, InterconnectConfig, assess_border
from services.market.model import CapacitySeries, DocumentKind, FlowSeries, MarketDocument, PriceSeries, Product, Slot
from services.market.queries import SeriesKey, load_border, load_prices
from services.market.resample import HOUR, resample_slots
from services.platform.migrations import Conn

_MARKET_TZ = ZoneInfo(MARKET_DAY_TZ)


@dataclass(frozen=True, slots=True)
class WarningPolicy:
    """How stored documents are assessed: the thresholds and the configured borders (OUT, IN EICs),
    which are assessed on a price document even before any flow of theirs is stored."""

    interconnect: InterconnectConfig = field(default_factory=InterconnectConfig)
    borders: tuple[tuple[str, str], ...] = ()


Origin = tuple[str, str, int]  # source, document id, revision


def market_days(span: tuple[datetime, datetime]) -> list[date]:
    """The CET delivery days [start, end) touches."""
    first = span[0].astimezone(_MARKET_TZ).date()
    last = (span[1] - timedelta(microseconds=1)).astimezone(_MARKET_TZ).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


async def affected_borders(
    conn: Conn, doc: MarketDocument, days: list[date], policy: WarningPolicy
) -> list[tuple[str, str]]:
    if doc.kind in (DocumentKind.FLOWS, DocumentKind.CAPACITIES):
        directed: Sequence[FlowSeries | CapacitySeries] = (*doc.flows, *doc.capacities)
        return sorted({(s.out_zone, s.in_zone) for s in directed})
    zones = sorted({p.zone for p in doc.prices if day_ahead(p)})
    if doc.kind is not DocumentKind.PRICES or not zones or not days:
        return []
    start, end = _day_bounds(days[0])[0], _day_bounds(days[-1])[1]
    touching = (
        "(out_zone = ANY($1::text[]) OR in_zone = ANY($1::text[])) AND delivery_start >= $2 AND delivery_start < $3"
    )
    rows = await conn.fetch(
        f"SELECT out_zone, in_zone FROM market.flows WHERE {touching}"
        f" UNION SELECT out_zone, in_zone FROM market.capacities WHERE {touching}",
        zones,
        start,
        end,
    )
    found = {(r["out_zone"], r["in_zone"]) for r in rows}
    found.update(b for b in policy.borders if b[0] in zones or b[1] in zones)
    return sorted(found)


@dataclass(frozen=True, slots=True)
class Assessed:
    """The keys of the warnings an assessment raised or changed, and of those it cleared, sorted."""

    changed: tuple[str, ...] = ()
    cleared: tuple[str, ...] = ()


async def assess_stored(
    conn: Conn, doc: MarketDocument, span: tuple[datetime, datetime], policy: WarningPolicy, origin: Origin
) -> Assessed:
    """Assess the borders `doc` affects on the days of `span` and store their warnings; the keys of
    the warnings raised or changed and of those cleared (deleted, and recorded under `origin` in
    market.cleared_warnings so the publication can announce them). Runs in the caller's transaction."""
    days = market_days(span)
    changed: list[str] = []
    cleared: list[str] = []
    for out_zone, in_zone in await affected_borders(conn, doc, days, policy):
        for day in days:
            start, end = _day_bounds(day)
            flows, capacities = await load_border(conn, out_zone, in_zone, start, end)
            out_prices = await _day_ahead_hourly(conn, out_zone, start, end)
            in_prices = await _day_ahead_hourly(conn, in_zone, start, end)
            flow = FlowSeries(out_zone, in_zone, HOUR, _hourly(flows)) if flows else None
            capacity = CapacitySeries(out_zone, in_zone, HOUR, _hourly(capacities)) if capacities else None
            warnings: tuple[BorderWarning, ...] = ()
            if flow or capacity or (out_prices and in_prices):
                _, warnings = assess_border(flow, capacity, out_prices, in_prices, policy.interconnect)
            kept = [w for w in warnings if w.key.delivery_day == day]
            changed.extend(await upsert_warnings(conn, kept, origin))
            gone = await conn.fetch(
                "DELETE FROM market.warnings WHERE out_zone = $1 AND in_zone = $2 AND delivery_day = $3"
                " AND NOT (warning_key = ANY($4::text[])) RETURNING warning_key",
                out_zone,
                in_zone,
                day,
                [str(w.key) for w in kept],
            )
            cleared.extend(r["warning_key"] for r in gone)
    if cleared:
        await conn.execute(
            "INSERT INTO market.cleared_warnings (source, document_id, revision, warning_key)"
            " SELECT $1, $2, $3, k FROM unnest($4::text[]) AS k ON CONFLICT DO NOTHING",
            *origin,
            cleared,
        )
    return Assessed(tuple(sorted(changed)), tuple(sorted(cleared)))


async def upsert_warnings(conn: Conn, warnings: Sequence[BorderWarning], origin: Origin | None) -> list[str]:
    """Upsert by stable key; the keys whose row is new or whose message or evidence changed."""
    if not warnings:
        return []
    source, document_id, revision = origin if origin is not None else (None, None, None)
    rows = await conn.fetch(
        "INSERT INTO market.warnings AS w (warning_key, kind, out_zone, in_zone, delivery_day, message, evidence,"
        " source, document_id, revision)"
        " SELECT k, kd, o, i, d, m, e::jsonb, $8, $9, $10"
        " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::date[], $6::text[], $7::text[])"
        " AS t(k, kd, o, i, d, m, e)"
        " ON CONFLICT (warning_key) DO UPDATE SET message = EXCLUDED.message, evidence = EXCLUDED.evidence,"
        " source = EXCLUDED.source, document_id = EXCLUDED.document_id, revision = EXCLUDED.revision,"
        " update_time = now()"
        " WHERE w.message IS DISTINCT FROM EXCLUDED.message OR w.evidence IS DISTINCT FROM EXCLUDED.evidence"
        " RETURNING warning_key",
        [str(w.key) for w in warnings],
        [w.key.kind for w in warnings],
        [w.key.border.out_zone for w in warnings],
        [w.key.border.in_zone for w in warnings],
        [w.key.delivery_day for w in warnings],
        [w.message for w in warnings],
        [json.dumps(evidence(w), separators=(",", ":")) for w in warnings],
        source,
        document_id,
        revision,
    )
    return [r["warning_key"] for r in rows]


def evidence(w: BorderWarning) -> dict[str, object]:
    return {
        "saturation_threshold": w.saturation_threshold,
        "spread_threshold_eur_mwh": w.spread_threshold_eur_mwh,
        "hours": [
            {
                "start": h.start.astimezone(UTC).isoformat(),
                "flow_mw": h.flow_mw,
                "capacity_mw": h.capacity_mw,
                "utilisation": h.utilisation,
                "out_price": h.out_price,
                "in_price": h.in_price,
                "spread": h.spread,
            }
            for h in w.hours
        ],
    }


def day_ahead(p: PriceSeries) -> bool:
    """Whether `p` is the day-ahead auction's price (sequence 1), the one borders are assessed with."""
    return p.product is Product.DAY_AHEAD and p.sequence == 1 and p.auction == 0 and not p.geography


def _day_bounds(day: date) -> tuple[datetime, datetime]:
    return (
        datetime.combine(day, time(0), _MARKET_TZ).astimezone(UTC),
        datetime.combine(day + timedelta(days=1), time(0), _MARKET_TZ).astimezone(UTC),
    )


async def _day_ahead_hourly(conn: Conn, zone: str, start: datetime, end: datetime) -> PriceSeries | None:
    stored = await load_prices(conn, SeriesKey(zone, Product.DAY_AHEAD, 0, 1, ""), start, end)
    slots = _hourly(stored.series)
    return PriceSeries(zone, Product.DAY_AHEAD, HOUR, slots) if slots else None


def _hourly(series: Sequence[FlowSeries | CapacitySeries | PriceSeries]) -> tuple[Slot, ...]:
    """Every published resolution on the hour grid, the finest first where two give an hour."""
    hours: dict[datetime, float] = {}
    for s in sorted(series, key=lambda s: s.resolution):
        for slot in resample_slots(s.slots, s.resolution, HOUR):
            hours.setdefault(slot.start, slot.value)
    return tuple(Slot(t, v) for t, v in sorted(hours.items()))
