"""A bidding zone's market summary at an instant: the current price, today's figures in the zone's
local day, the latest delivery day published and whether the publication is late.

Pure functions over the normalised model: the caller passes the price series it has stored.

- **Which series**: one product (day-ahead unless told otherwise), one classificationSequence
  (1 unless told otherwise), one auction and one geography; the matching series are merged (one
  document per day is normal) and never mixed with other sequences.
- **Today** is the zone's local calendar day (`zone_timezone`): 24 hours, 23 on the day clocks go
  forward, 25 on the day they go back. A slot belongs to the day its start falls in.
- **Mean** is time-weighted (a day can mix hourly and quarter-hourly slots); min and max list every
  slot start that reaches them. Gaps are not filled: `covered` and `complete` say how much of the day
  has prices.
- **Stale**: day-ahead prices for day D are published around 12:45-13:00 CET on D-1. The summary is
  stale once `now` is past the expected publication time (`PublicationSchedule`) of the first
  delivery day the data does not cover; `stale_since` is that time.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from services.market.model import PriceSeries, Product
from services.market.resample import AnalyticsError
from services.market.zones import BIDDING_ZONES, zone_name

# Short zone name -> IANA time zone of the zone's local day.
_ZONE_TZ: Final[dict[str, str]] = {
    "DE-LU": "Europe/Berlin",
    "FR": "Europe/Paris",
    "ES": "Europe/Madrid",
    "PT": "Europe/Lisbon",
    "NL": "Europe/Amsterdam",
    "BE": "Europe/Brussels",
    "AT": "Europe/Vienna",
    "CH": "Europe/Zurich",
    "PL": "Europe/Warsaw",
    "CZ": "Europe/Prague",
    "SK": "Europe/Bratislava",
    "HU": "Europe/Budapest",
    "SI": "Europe/Ljubljana",
    "HR": "Europe/Zagreb",
    "RO": "Europe/Bucharest",
    "BG": "Europe/Sofia",
    "GR": "Europe/Athens",
    "DK1": "Europe/Copenhagen",
    "DK2": "Europe/Copenhagen",
    "FI": "Europe/Helsinki",
    "EE": "Europe/Tallinn",
    "LV": "Europe/Riga",
    "LT": "Europe/Vilnius",
    "IE-SEM": "Europe/Dublin",
    "GB": "Europe/London",
    "ME": "Europe/Podgorica",
    "RS": "Europe/Belgrade",
    "MK": "Europe/Skopje",
    "BA": "Europe/Sarajevo",
    "AL": "Europe/Tirane",
    "XK": "Europe/Belgrade",  # the IANA database gives Kosovo no zone of its own
    "MT": "Europe/Malta",
    "CY": "Europe/Nicosia",
    "UA": "Europe/Kyiv",
    "MD": "Europe/Chisinau",
}


@functools.cache
def zone_timezone(zone: str) -> ZoneInfo:
    """The time zone of a bidding zone's local day, by EIC. AnalyticsError for a zone not listed in
    services/market/zones.py (a control area has no local day EMMA could vouch for)."""
    if zone not in BIDDING_ZONES:
        raise AnalyticsError(f"zone {zone!r} is not a known bidding zone: its local day is unknown")
    name = zone_name(zone)
    if name.startswith("IT-"):
        return ZoneInfo("Europe/Rome")
    if name.startswith("NO"):
        return ZoneInfo("Europe/Oslo")
    if name.startswith("SE"):
        return ZoneInfo("Europe/Stockholm")
    return ZoneInfo(_ZONE_TZ[name])


@dataclass(frozen=True, slots=True)
class PublicationSchedule:
    """When day-ahead prices for delivery day D are expected: on D-1 at `expected_by` in `timezone`.
    The auction's results come around 12:45-13:00 CET; the default leaves 15 minutes of slack."""

    expected_by: time = time(13, 15)
    timezone: str = "Europe/Brussels"

    def deadline(self, delivery_day: date) -> datetime:
        """The UTC instant by which `delivery_day`'s prices should be published."""
        local = datetime.combine(delivery_day - timedelta(days=1), self.expected_by, ZoneInfo(self.timezone))
        return local.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class PricePoint:
    """One slot's price: `[start, end)` in UTC."""

    start: datetime
    end: datetime
    value: float


@dataclass(frozen=True, slots=True)
class Extreme:
    """A day's minimum or maximum and the start of every slot that reaches it."""

    value: float
    starts: tuple[datetime, ...]


@dataclass(frozen=True, slots=True)
class DayFigures:
    """A local day's prices. `start`/`end` are the day's UTC bounds (23, 24 or 25 hours apart)."""

    day: date
    start: datetime
    end: datetime
    slots: int
    covered: timedelta  # the time with a price; less than end - start when there are gaps
    complete: bool
    minimum: Extreme
    maximum: Extreme
    mean: float  # time-weighted over the covered time
    negative_slots: int
    negative_intervals: tuple[tuple[datetime, datetime], ...]  # contiguous negative slots merged


@dataclass(frozen=True, slots=True)
class MarketSummary:
    zone: str
    zone_name: str
    timezone: str
    product: Product
    sequence: int
    now: datetime  # UTC
    local_day: date
    current: PricePoint | None  # the slot containing now; None in a gap
    today: DayFigures | None  # None when the local day has no price at all
    latest_delivery_day: date | None  # local day of the newest slot; None without data
    covered_until: datetime | None  # end of the newest slot
    stale: bool
    stale_since: datetime | None  # when the first missing day was due; None when not stale or no data


def _local_day_bounds(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(0), tz).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(0), tz).astimezone(UTC)
    return start, end


def _points(
    series: Iterable[PriceSeries], zone: str, product: Product, sequence: int, auction: int, geography: str
) -> list[PricePoint]:
    points: list[PricePoint] = []
    for s in series:
        if not (
            s.zone == zone
            and s.product == product
            and s.sequence == sequence
            and s.auction == auction
            and s.geography == geography
        ):
            continue
        step = s.resolution
        for slot in s.slots:
            start = slot.start.astimezone(UTC)
            points.append(PricePoint(start, start + step, slot.value))
    points.sort(key=_start_of)
    unique: list[PricePoint] = []
    for point in points:
        if unique and point.start < unique[-1].end:
            if point == unique[-1]:
                continue  # the same slot stored from two documents: one slot
            raise AnalyticsError(
                f"zone {zone} sequence {sequence}: two prices for {point.start.isoformat()} "
                f"({unique[-1].value} and {point.value}); pass one revision of each day"
            )
        unique.append(point)
    return unique


def _start_of(point: PricePoint) -> datetime:
    return point.start


_SECOND = timedelta(seconds=1)


def _day_figures(points: list[PricePoint], day: date, tz: ZoneInfo) -> DayFigures | None:
    start, end = _local_day_bounds(day, tz)
    today = [p for p in points if start <= p.start < end]
    if not today:
        return None
    # Each slot's value and length read once (a summary is built per zone per call; these passes
    # were a third of it), summed in slot order as before, so the mean is the same float.
    values = [p.value for p in today]
    lengths = [p.end - p.start for p in today]
    low = min(values)
    high = max(values)
    covered = sum(lengths, timedelta(0))
    weighted = sum(v * (length / _SECOND) for v, length in zip(values, lengths, strict=True))
    negatives: list[tuple[datetime, datetime]] = []
    for p in today:
        if p.value >= 0:
            continue
        if negatives and negatives[-1][1] == p.start:
            negatives[-1] = (negatives[-1][0], p.end)
        else:
            negatives.append((p.start, p.end))
    return DayFigures(
        day=day,
        start=start,
        end=end,
        slots=len(today),
        covered=covered,
        complete=covered == end - start,
        minimum=Extreme(low, tuple(p.start for p in today if p.value == low)),
        maximum=Extreme(high, tuple(p.start for p in today if p.value == high)),
        mean=weighted / covered.total_seconds(),
        negative_slots=sum(1 for v in values if v < 0),
        negative_intervals=tuple(negatives),
    )


def summarise(
    zone: str,
    series: Iterable[PriceSeries],
    now: datetime,
    *,
    product: Product = Product.DAY_AHEAD,
    sequence: int = 1,
    auction: int = 0,
    geography: str = "",
    schedule: PublicationSchedule | None = None,
    timezone: ZoneInfo | None = None,
) -> MarketSummary:
    """The summary of `zone` at `now` (timezone-aware) from the series given; series of other zones,
    products, sequences, auctions or geographies are ignored. `timezone` overrides `zone_timezone`.

    AnalyticsError for a naive `now`, a zone without a known local day (and no `timezone`), or two
    different prices for one slot of the chosen series."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise AnalyticsError(f"now {now.isoformat()} has no time zone")
    now = now.astimezone(UTC)
    tz = timezone if timezone is not None else zone_timezone(zone)
    plan = schedule if schedule is not None else PublicationSchedule()
    points = _points(series, zone, product, sequence, auction, geography)
    local_day = now.astimezone(tz).date()
    current = next((p for p in points if p.start <= now < p.end), None)
    latest_day: date | None = None
    covered_until: datetime | None = None
    stale = True
    stale_since: datetime | None = None
    if points:
        newest = max(points, key=lambda p: p.end)
        covered_until = newest.end
        latest_day = newest.start.astimezone(tz).date()
        # The first delivery day (in the schedule's time zone) not fully covered: an end at exactly
        # midnight covers the day before; a partly covered day counts as missing.
        market_tz = ZoneInfo(plan.timezone)
        missing_day = (covered_until - timedelta(microseconds=1)).astimezone(market_tz).date() + timedelta(days=1)
        if covered_until.astimezone(market_tz).time() != time(0):
            missing_day -= timedelta(days=1)
        due = plan.deadline(missing_day)
        stale = now > due  # at the expected time itself the publication is not late yet
        stale_since = due if stale else None
    return MarketSummary(
        zone=zone,
        zone_name=zone_name(zone),
        timezone=str(tz),
        product=product,
        sequence=sequence,
        now=now,
        local_day=local_day,
        current=current,
        today=_day_figures(points, local_day, tz),
        latest_delivery_day=latest_day,
        covered_until=covered_until,
        stale=stale,
        stale_since=stale_since,
    )
