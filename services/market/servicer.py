"""MarketDataService: market data as stored by services/market/store.py, read back through the
analytics of the domain (resample.py, summary.py, interconnect.py), never recomputed here.

Market data is reference data, the same for every organization: every authenticated user may read
it (POLICY in the package face). Bad input is INVALID_ARGUMENT with ErrorInfo FIELD_INVALID naming
the field: an unknown zone, a missing or reversed range, a range over MAX_RANGE.
"""

from __future__ import annotations

import bisect
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Final
from zoneinfo import ZoneInfo

import grpc
from emma.common.v1 import errors_pb2
from emma.market.v1 import market_pb2, market_pb2_grpc
from google.protobuf import timestamp_pb2

from services.errors import ApiError, invalid_field
from services.market.interconnect import MARKET_DAY_TZ, border_hours
from services.market.model import CapacitySeries, FlowSeries, PriceSeries, Product, Slot
from services.market.queries import (
    Provenance,
    SeriesKey,
    SourceStatus,
    StoredPrices,
    StoredWarning,
    load_border,
    load_cleared_of,
    load_latest_prices,
    load_prices,
    load_source_status,
    load_summary_prices,
    load_warnings_of,
    load_zone_warnings,
)
from services.market.resample import HOUR, QUARTER_HOUR, Aggregation, AnalyticsError, aggregation_for, resample_slots
from services.market.store import NOTIFY_CHANNEL, Publication, SaveOutcome
from services.market.summary import MarketSummary, summarise, zone_timezone
from services.market.zones import BIDDING_ZONES, ES_PENINSULA, is_eic
from services.pagination import Page
from services.platform.notify import Fanout, Gap, watch_gap
from services.platform.rpc import Context, set_timestamp, timestamp
from services.platform.runtime import Runtime
from services.platform.shared_reads import GatheredReads

# The longest delivery range one curve or border request may span (stated in the contract).
MAX_RANGE: Final = timedelta(days=31)
MAX_LIST_PAGE: Final = 100
MAX_BORDER_PAGE: Final = 744
DEFAULT_BORDER_PAGE: Final = 168
MAX_BATCH_ZONES: Final = 50
MAX_SEQUENCE: Final = 100
MAX_ZONE_LENGTH: Final = 40
# A watcher that falls this far behind is ended (ABORTED) rather than buffered without bound.
WATCH_QUEUE: Final = 1000

_BY_SHORT_NAME: Final = {short: eic for eic, (short, _) in BIDDING_ZONES.items()}
_PVPC_PENINSULA: Final = "8741"

_PRODUCTS: Final = (
    (market_pb2.MARKET_PRODUCT_DAY_AHEAD, "Day-ahead auction (SDAC)", ("entsoe",)),
    (market_pb2.MARKET_PRODUCT_INTRADAY_AUCTION, "Intraday auction IDA1..3 (SIDC)", ("entsoe",)),
    (market_pb2.MARKET_PRODUCT_PVPC, "PVPC, Spain's regulated consumer price", ("ree-redata", "ree-esios")),
    (market_pb2.MARKET_PRODUCT_SPOT, "Spain's day-ahead spot price (REE)", ("ree-redata",)),
)
# The sources each product's prices come from (a summary reports their health).
_PRODUCT_SOURCES: Final[dict[Product, tuple[str, ...]]] = {Product(p): tuple(src) for p, _, src in _PRODUCTS}
_MARKET_DAY_ZONE: Final = ZoneInfo(MARKET_DAY_TZ)
_AGGREGATION: Final = {
    Aggregation.AS_PUBLISHED: market_pb2.AGGREGATION_AS_PUBLISHED,
    Aggregation.TIME_WEIGHTED_MEAN: market_pb2.AGGREGATION_TIME_WEIGHTED_MEAN,
    Aggregation.REPEAT: market_pb2.AGGREGATION_REPEAT,
}
_STEP: Final = {market_pb2.RESOLUTION_15_MINUTES: QUARTER_HOUR, market_pb2.RESOLUTION_1_HOUR: HOUR}


def parse_zone(value: str, field: str, *, listed_only: bool = False) -> str:
    """A zone's EIC code from its EIC code or short name; FIELD_INVALID otherwise. `listed_only` also
    refuses a valid EIC that is not a known bidding zone (a summary needs its local day)."""
    if not value:
        raise invalid_field(field, "required: a bidding zone's EIC code or short name (DE-LU)")
    if len(value) > MAX_ZONE_LENGTH:
        raise invalid_field(field, f"longer than {MAX_ZONE_LENGTH} characters")
    if value in BIDDING_ZONES:
        return value
    if value in _BY_SHORT_NAME:
        return _BY_SHORT_NAME[value]
    if not listed_only and is_eic(value):
        return value
    raise invalid_field(field, f"{value!r} is not a known bidding zone (ListBiddingZones lists them)")


def _product(value: int) -> Product:
    return Product(value) if value else Product.DAY_AHEAD


def _sequence(value: int, field: str) -> int:
    if not 0 <= value <= MAX_SEQUENCE:
        raise invalid_field(field, f"must be between 0 and {MAX_SEQUENCE}")
    return value or 1


def parse_series(selector: market_pb2.SeriesSelector, field: str) -> SeriesKey:
    zone = parse_zone(selector.zone, f"{field}.zone")
    product = _product(selector.product)
    if not 0 <= selector.auction <= 3:
        raise invalid_field(f"{field}.auction", "must be between 0 and 3")
    if product is Product.INTRADAY_AUCTION and selector.auction == 0:
        raise invalid_field(f"{field}.auction", "required for INTRADAY_AUCTION: 1, 2 or 3")
    if product is not Product.INTRADAY_AUCTION and selector.auction != 0:
        raise invalid_field(f"{field}.auction", "only INTRADAY_AUCTION has an auction number")
    if len(selector.geography) > 10:
        raise invalid_field(f"{field}.geography", "longer than 10 characters")
    geography = selector.geography
    if product is Product.PVPC:
        geography = geography or _PVPC_PENINSULA
        if zone != ES_PENINSULA:
            raise invalid_field(f"{field}.zone", "PVPC is published for the ES bidding zone only")
    elif geography:
        raise invalid_field(f"{field}.geography", "only PVPC has a geography")
    return SeriesKey(zone, product, selector.auction, _sequence(selector.sequence, f"{field}.sequence"), geography)


def parse_range(
    start: timestamp_pb2.Timestamp, end: timestamp_pb2.Timestamp, has_start: bool, has_end: bool
) -> tuple[datetime, datetime]:
    if not has_start:
        raise invalid_field("start_time", "required")
    if not has_end:
        raise invalid_field("end_time", "required")
    first, last = start.ToDatetime(UTC), end.ToDatetime(UTC)
    if last <= first:
        raise invalid_field("end_time", "must be after start_time")
    if last - first > MAX_RANGE:
        raise invalid_field("end_time", f"the range is at most {MAX_RANGE.days} days")
    return first, last


def _publication_ref(p: Provenance) -> market_pb2.PublicationRef:
    return market_pb2.PublicationRef(
        source=p.source, document_id=p.document_id, revision=p.revision, fetch_time=timestamp(p.fetched_at)
    )


def _set_interval(out: market_pb2.TimeInterval, start: datetime, end: datetime) -> None:
    set_timestamp(out.start_time, start)
    set_timestamp(out.end_time, end)


def price_curve(
    key: SeriesKey, stored: StoredPrices, resolution: market_pb2.Resolution.ValueType, start: datetime, end: datetime
) -> market_pb2.PriceCurve:
    """The curve of the stored series, resampled to `resolution`'s step when it names one; the slots
    kept are those starting in [start, end)."""
    refs: list[Provenance] = sorted(set(stored.provenance.values()))
    index = {p: i for i, p in enumerate(refs)}
    points: list[tuple[datetime, datetime, float, int]] = []
    step = _STEP.get(resolution)
    aggregation = Aggregation.AS_PUBLISHED
    if step is None:
        for s in stored.series:
            res_s = int(s.resolution.total_seconds())
            for slot in s.slots:
                points.append(
                    (slot.start, slot.start + s.resolution, slot.value, index[stored.provenance[(slot.start, res_s)]])
                )
    else:
        longest = max((s.resolution for s in stored.series), default=step)
        aggregation = aggregation_for(longest, step)
        for s in stored.series:
            res_s = int(s.resolution.total_seconds())
            starts = [src.start for src in s.slots]
            for slot in resample_slots(s.slots, s.resolution, step):
                if not start <= slot.start < end:
                    continue
                # The newest document among the published slots the target slot was made from: those
                # starting in (slot start - resolution, slot start + step).
                first = bisect.bisect_right(starts, slot.start - s.resolution)
                last = bisect.bisect_left(starts, slot.start + step)
                sources = [stored.provenance[(t, res_s)] for t in starts[first:last]]
                points.append((slot.start, slot.start + step, slot.value, index[max(sources)]))
    points.sort(key=lambda p: (p[0], p[1]))
    steps = {s.resolution for s in stored.series} if step is None else {step}
    curve = market_pb2.PriceCurve(
        zone=key.zone,
        product=key.product.value,  # type: ignore[arg-type]
        auction=key.auction,
        sequence=key.sequence,
        geography=key.geography,
        currency=stored.currency,
        unit=stored.unit,
        resolution=resolution or market_pb2.RESOLUTION_AS_PUBLISHED,
        aggregation=_AGGREGATION[aggregation],
        points=[
            market_pb2.PricePoint(start_time=timestamp(a), end_time=timestamp(b), value=v, publication_index=i)
            for a, b, v, i in points
        ],
        publications=[_publication_ref(p) for p in refs],
    )
    if len(steps) == 1:
        curve.step.FromTimedelta(next(iter(steps)))
    return curve


def _summary_message(
    summary: MarketSummary, currency: str, unit: str, lengths: dict[datetime, timedelta]
) -> market_pb2.MarketSummary:
    # Times are set in place (set_timestamp), not built as Timestamps and copied in: a summary holds
    # some sixty of them, and forty summaries are built per BatchGetMarketSummaries.
    out = market_pb2.MarketSummary(
        zone=summary.zone,
        zone_name=summary.zone_name,
        time_zone=summary.timezone,
        product=summary.product.value,  # type: ignore[arg-type]
        sequence=summary.sequence,
        currency=currency,
        unit=unit,
        local_day=summary.local_day.isoformat(),
        latest_delivery_day=summary.latest_delivery_day.isoformat() if summary.latest_delivery_day else "",
        stale=summary.stale,
    )
    set_timestamp(out.read_time, summary.now)
    if summary.current is not None:
        c = summary.current
        current = out.current
        set_timestamp(current.start_time, c.start)
        set_timestamp(current.end_time, c.end)
        current.value = c.value
    today = summary.today
    if today is not None:
        for target, extreme in ((out.today_minimum, today.minimum), (out.today_maximum, today.maximum)):
            target.value = extreme.value
            for s in extreme.starts:
                _set_interval(target.slots.add(), s, s + lengths.get(s, HOUR))
        out.today_mean = today.mean
        out.today_slot_count = today.slots
        out.today_complete = today.complete
        out.negative_slot_count = today.negative_slots
        for a, b in today.negative_intervals:
            _set_interval(out.negative_intervals.add(), a, b)
    if summary.stale_since is not None:
        set_timestamp(out.stale_since_time, summary.stale_since)
    return out


def _parse_publication(payload: str) -> Publication | None:
    try:
        return Publication.from_json(payload)
    except (ValueError, KeyError, TypeError):
        return None  # not one of the store's announcements


class MarketDataServicer(market_pb2_grpc.MarketDataServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._pool = runtime.pool
        self._watchers = Fanout(runtime.dsn, NOTIFY_CHANNEL, _parse_publication, WATCH_QUEUE)
        self._summary_reads: GatheredReads[tuple[Product, int], str, market_pb2.MarketSummary] = GatheredReads(
            self._gathered_summaries
        )

    async def start(self) -> None:
        await self._watchers.start()

    async def stop(self) -> None:
        await self._summary_reads.stop()
        await self._watchers.stop()

    async def ListBiddingZones(
        self, request: market_pb2.ListBiddingZonesRequest, context: Context
    ) -> market_pb2.ListBiddingZonesResponse:
        if request.page_size > MAX_LIST_PAGE:
            raise invalid_field("page_size", f"must be between 0 and {MAX_LIST_PAGE}")
        page = Page.of("ListBiddingZones", request, default=MAX_LIST_PAGE)
        zones = sorted(BIDDING_ZONES.items(), key=lambda z: z[1][0])
        rows = zones[page.offset : page.offset + page.limit]
        out = market_pb2.ListBiddingZonesResponse(next_page_token=page.next_token(rows))
        for eic, (short, readable) in page.rows(rows):
            try:
                tz = zone_timezone(eic).key
            except AnalyticsError:
                tz = ""
            out.bidding_zones.add(
                name=f"biddingZones/{eic}", eic_code=eic, short_name=short, display_name=readable, time_zone=tz
            )
        return out

    async def ListProducts(
        self, request: market_pb2.ListProductsRequest, context: Context
    ) -> market_pb2.ListProductsResponse:
        if request.page_size > MAX_LIST_PAGE:
            raise invalid_field("page_size", f"must be between 0 and {MAX_LIST_PAGE}")
        page = Page.of("ListProducts", request, default=MAX_LIST_PAGE)
        rows = _PRODUCTS[page.offset : page.offset + page.limit]
        out = market_pb2.ListProductsResponse(next_page_token=page.next_token(rows))
        for product, name, sources in page.rows(rows):
            out.products.add(product=product, display_name=name, sources=sources)
        return out

    async def GetPriceCurve(self, request: market_pb2.GetPriceCurveRequest, context: Context) -> market_pb2.PriceCurve:
        if not request.HasField("series"):
            raise invalid_field("series", "required")
        key = parse_series(request.series, "series")
        start, end = parse_range(
            request.start_time, request.end_time, request.HasField("start_time"), request.HasField("end_time")
        )
        step = _STEP.get(request.resolution)
        # A resampled slot needs its whole source slots: read a day either side (the longest slot).
        margin = timedelta(days=1) if step is not None else timedelta(0)
        async with self._pool.acquire() as conn:
            stored = await load_prices(conn, key, start - margin, end + margin)
        if step is None:
            stored = StoredPrices(
                tuple(_within(s, start, end) for s in stored.series), stored.provenance, stored.currency, stored.unit
            )
        try:
            return price_curve(key, stored, request.resolution, start, end)
        except AnalyticsError as exc:
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION, errors_pb2.ERROR_REASON_STATE_CONFLICT, str(exc)
            ) from None

    async def GetLatestPublishedDay(
        self, request: market_pb2.GetLatestPublishedDayRequest, context: Context
    ) -> market_pb2.PublishedDay:
        if not request.HasField("series"):
            raise invalid_field("series", "required")
        key = parse_series(request.series, "series")
        tz = _timezone(key.zone, "series.zone")
        async with self._pool.acquire() as conn:
            latest = await load_latest_prices(conn, key)
            if not latest.series:
                raise ApiError(
                    grpc.StatusCode.NOT_FOUND,
                    errors_pb2.ERROR_REASON_RESOURCE_NOT_FOUND,
                    f"no prices stored for {key.zone} {key.product.name}",
                    metadata={"resource": f"biddingZones/{key.zone}"},
                )
            newest = latest.series[0].slots[0].start
            day = newest.astimezone(tz).date()
            day_start = datetime.combine(day, time(0), tz).astimezone(UTC)
            day_end = datetime.combine(day + timedelta(days=1), time(0), tz).astimezone(UTC)
            stored = await load_prices(conn, key, day_start, day_end)
        newest_doc = max(stored.provenance.values())
        return market_pb2.PublishedDay(
            zone=key.zone,
            product=key.product.value,  # type: ignore[arg-type]
            delivery_day=day.isoformat(),
            day_start_time=timestamp(day_start),
            day_end_time=timestamp(day_end),
            publication=_publication_ref(newest_doc),
        )

    async def ListBorderFlows(
        self, request: market_pb2.ListBorderFlowsRequest, context: Context
    ) -> market_pb2.ListBorderFlowsResponse:
        out_zone = parse_zone(request.out_zone, "out_zone")
        in_zone = parse_zone(request.in_zone, "in_zone")
        if out_zone == in_zone:
            raise invalid_field("in_zone", "must differ from out_zone")
        start, end = parse_range(
            request.start_time, request.end_time, request.HasField("start_time"), request.HasField("end_time")
        )
        start = start.replace(minute=0, second=0, microsecond=0)
        if request.page_size > MAX_BORDER_PAGE:
            raise invalid_field("page_size", f"must be between 0 and {MAX_BORDER_PAGE}")
        page = Page.of("ListBorderFlows", request, default=DEFAULT_BORDER_PAGE)
        async with self._pool.acquire() as conn:
            flows, capacities = await load_border(conn, out_zone, in_zone, start - timedelta(days=1), end)
        flow = FlowSeries(out_zone, in_zone, HOUR, _hourly_slots(flows)) if flows else None
        capacity = CapacitySeries(out_zone, in_zone, HOUR, _hourly_slots(capacities)) if capacities else None
        hours = [
            h
            for h in (border_hours(flow, capacity) if flow or capacity else ())
            if start <= h.start < end and (h.flow_mw is not None or h.capacity_mw is not None)
        ]
        rows = hours[page.offset : page.offset + page.limit]
        out = market_pb2.ListBorderFlowsResponse(
            out_zone=out_zone, in_zone=in_zone, next_page_token=page.next_token(rows)
        )
        for h in page.rows(rows):
            item = out.hours.add(start_time=timestamp(h.start))
            if h.flow_mw is not None:
                item.flow_mw = h.flow_mw
            if h.capacity_mw is not None:
                item.capacity_mw = h.capacity_mw
            if h.utilisation is not None:
                item.utilisation_ratio = h.utilisation
        return out

    async def GetMarketSummary(
        self, request: market_pb2.GetMarketSummaryRequest, context: Context
    ) -> market_pb2.MarketSummary:
        zone = parse_zone(request.zone, "zone", listed_only=True)
        sequence = _sequence(request.sequence, "sequence")
        product = _checked_product(request.product)
        _check_zones([zone], product, ["zone"])
        # Separate calls arriving together share the next read (one per product and sequence), which
        # reads all their zones at once: 40 lone reads queued on the loop cost about 40 times one.
        return await self._summary_reads.get((product, sequence), zone)

    async def BatchGetMarketSummaries(
        self, request: market_pb2.BatchGetMarketSummariesRequest, context: Context
    ) -> market_pb2.BatchGetMarketSummariesResponse:
        if not 1 <= len(request.zones) <= MAX_BATCH_ZONES:
            raise invalid_field("zones", f"between 1 and {MAX_BATCH_ZONES} zones")
        zones = [parse_zone(z, f"zones[{i}]", listed_only=True) for i, z in enumerate(request.zones)]
        sequence = _sequence(request.sequence, "sequence")
        fields = [f"zones[{i}]" for i in range(len(zones))]
        product = _checked_product(request.product)
        _check_zones(zones, product, fields)
        outcomes = await self._summaries(product, sequence, zones)
        summaries: list[market_pb2.MarketSummary] = []
        for zone in zones:
            outcome = outcomes[zone]
            if isinstance(outcome, Exception):
                raise outcome  # the first failing zone in request order, as one call reading them all
            summaries.append(outcome)
        return market_pb2.BatchGetMarketSummariesResponse(summaries=summaries)

    async def _gathered_summaries(
        self, group: tuple[Product, int], zones: list[str]
    ) -> dict[str, market_pb2.MarketSummary | Exception]:
        product, sequence = group
        return await self._summaries(product, sequence, zones)

    async def _summaries(
        self, product: Product, sequence: int, zones: list[str]
    ) -> dict[str, market_pb2.MarketSummary | Exception]:
        """The summary of each of `zones` (checked by _check_zones) from three queries whatever their
        number: the prices of every zone's window and newest slot, the warnings, the sources' health.
        A zone whose stored prices cannot be summarised gets its error, the others their summary."""
        geography = _PVPC_PENINSULA if product is Product.PVPC else ""
        timezones = {zone: zone_timezone(zone) for zone in zones}
        now = datetime.now(UTC)
        market_day = now.astimezone(_MARKET_DAY_ZONE).date()
        windows: list[tuple[str, datetime, datetime]] = []
        for zone, tz in timezones.items():
            # Today's local day is all a summary reads besides the newest slot (read apart): the
            # current slot lies in it, and staleness needs only the newest slot.
            today = now.astimezone(tz).date()
            day_start = datetime.combine(today, time(0), tz).astimezone(UTC)
            day_end = datetime.combine(today + timedelta(days=1), time(0), tz).astimezone(UTC)
            windows.append((zone, day_start, day_end))
        out: dict[str, market_pb2.MarketSummary | Exception] = {}
        async with self._pool.acquire() as conn:
            prices = await load_summary_prices(conn, windows, product, 0, sequence, geography)
            built: dict[str, tuple[MarketSummary, list[PriceSeries], StoredPrices, list[date]]] = {}
            for zone, tz in timezones.items():
                read = prices[zone]
                series = _merge(read.window.series, read.latest.series)
                try:
                    summary = summarise(
                        zone, series, now, product=product, sequence=sequence, geography=geography, timezone=tz
                    )
                except AnalyticsError as exc:
                    out[zone] = ApiError(
                        grpc.StatusCode.FAILED_PRECONDITION, errors_pb2.ERROR_REASON_STATE_CONFLICT, str(exc)
                    )
                    continue
                wanted = {summary.local_day, market_day}
                if summary.latest_delivery_day:
                    wanted.add(summary.latest_delivery_day)
                built[zone] = (summary, series, read.window if read.window.series else read.latest, sorted(wanted))
            every_day = sorted({d for _, _, _, days in built.values() for d in days})
            warnings = await load_zone_warnings(conn, list(built), every_day) if built else []
            sources = _PRODUCT_SOURCES[product]
            health = await load_source_status(conn, sources)
        # The sources' health is the product's, the same in every zone's summary: built once.
        source_health = [_source_health(health.get(source), source) for source in sources]
        for zone, (summary, series, stored, days) in built.items():
            lengths = {slot.start: s.resolution for s in series for slot in s.slots}
            message = _summary_message(summary, stored.currency, stored.unit, lengths)
            message.warnings.extend(
                _warning_message(w) for w in warnings if zone in (w.out_zone, w.in_zone) and w.delivery_day in days
            )
            message.sources.extend(source_health)
            out[zone] = message
        return out

    async def WatchPublications(
        self, request: market_pb2.WatchPublicationsRequest, context: Context
    ) -> AsyncIterator[market_pb2.Publication]:
        if len(request.zones) > MAX_BATCH_ZONES:
            raise invalid_field("zones", f"at most {MAX_BATCH_ZONES} zones")
        wanted = {parse_zone(z, f"zones[{i}]") for i, z in enumerate(request.zones)}
        with self._watchers.subscribe() as queue:
            await self._watchers.wait_connected()
            # Headers go out once the subscription is in place: a client that waits for them misses
            # nothing stored afterwards.
            await context.send_initial_metadata(())
            while True:
                publication = await queue.get()
                if isinstance(publication, Gap):
                    raise watch_gap(publication, f"{WATCH_QUEUE} publications", "re-read")
                if wanted and not wanted.intersection(publication.zones):
                    continue
                warnings: list[StoredWarning] = []
                cleared: list[str] = []
                if publication.warnings or publication.cleared:
                    # Read back by origin: the NOTIFY payload cannot carry evidence (8000 bytes at most). A
                    # warning changed again since by a later document is carried by that one's publication.
                    origin = (publication.source, publication.document_id, publication.revision)
                    async with self._pool.acquire() as conn:
                        if publication.warnings:
                            warnings = await load_warnings_of(conn, *origin)
                        if publication.cleared:
                            cleared = await load_cleared_of(conn, *origin)
                yield _publication_message(publication, warnings, cleared)


def _warning_message(w: StoredWarning) -> market_pb2.MarketWarning:
    return market_pb2.MarketWarning(
        key=w.key,
        kind=w.kind,
        out_zone=w.out_zone,
        in_zone=w.in_zone,
        delivery_day=w.delivery_day.isoformat(),
        message=w.message,
        evidence_json=w.evidence_json,
    )


def _source_health(status: SourceStatus | None, source: str) -> market_pb2.SourceHealth:
    """A source's health; one never fetched from has no times and is not failing."""
    out = market_pb2.SourceHealth(source=source)
    if status is None:
        return out
    if status.last_success_at is not None:
        out.last_success_time.CopyFrom(timestamp(status.last_success_at))
    if status.last_error_at is not None:
        out.last_error_time.CopyFrom(timestamp(status.last_error_at))
    out.last_error = status.last_error
    out.failing = status.failing
    return out


def _publication_message(p: Publication, warnings: list[StoredWarning], cleared: list[str]) -> market_pb2.Publication:
    out = market_pb2.Publication(
        document=market_pb2.PublicationRef(
            source=p.source, document_id=p.document_id, revision=p.revision, fetch_time=timestamp(p.fetched_at)
        ),
        kind=p.kind,
        outcome=market_pb2.PUBLICATION_OUTCOME_REVISED
        if p.outcome is SaveOutcome.REVISED
        else market_pb2.PUBLICATION_OUTCOME_STORED,
        zones=list(p.zones),
    )
    if p.interval is not None:
        _set_interval(out.interval, *p.interval)
    out.warnings.extend(_warning_message(w) for w in warnings)
    out.cleared_warning_keys.extend(cleared)
    return out


def _checked_product(value: int) -> Product:
    product = _product(value)
    if product is Product.INTRADAY_AUCTION:
        raise invalid_field("product", "a summary is of a product with one price per slot, not INTRADAY_AUCTION")
    return product


def _check_zones(zones: list[str], product: Product, fields: list[str]) -> None:
    """Refuse, naming its field, a zone a summary of `product` cannot be read for (before any read)."""
    for zone, field in zip(zones, fields, strict=True):
        _timezone(zone, field)
        if product is Product.PVPC and zone != ES_PENINSULA:
            raise invalid_field(field, "PVPC is published for the ES bidding zone only")


def _timezone(zone: str, field: str) -> ZoneInfo:
    try:
        return zone_timezone(zone)
    except AnalyticsError:
        raise invalid_field(field, f"{zone} has no local day EMMA knows (not a listed bidding zone)") from None


def _within(series: PriceSeries, start: datetime, end: datetime) -> PriceSeries:
    return PriceSeries(
        series.zone,
        series.product,
        series.resolution,
        tuple(s for s in series.slots if start <= s.start < end),
        series.auction,
        series.sequence,
        series.geography,
        series.currency,
        series.unit,
    )


def _merge(a: tuple[PriceSeries, ...], b: tuple[PriceSeries, ...]) -> list[PriceSeries]:
    """The series of `a` plus the slots of `b` that `a` does not hold (the newest slot, when it lies
    beyond the window read)."""
    held = {(slot.start, s.resolution) for s in a for slot in s.slots}
    extra = [
        PriceSeries(
            s.zone,
            s.product,
            s.resolution,
            tuple(x for x in s.slots if (x.start, s.resolution) not in held),
            s.auction,
            s.sequence,
            s.geography,
            s.currency,
            s.unit,
        )
        for s in b
    ]
    return [*a, *(s for s in extra if s.slots)]


def _hourly_slots(series: tuple[FlowSeries, ...] | tuple[CapacitySeries, ...]) -> tuple[Slot, ...]:
    """Every published resolution of one border series on the hour grid, the finer one first where
    both give an hour (resample_slots takes one resolution at a time)."""
    hours: dict[datetime, float] = {}
    every: list[FlowSeries | CapacitySeries] = sorted(series, key=lambda s: s.resolution)
    for s in every:
        for slot in resample_slots(s.slots, s.resolution, HOUR):
            hours.setdefault(slot.start, slot.value)
    return tuple(Slot(t, v) for t, v in sorted(hours.items()))
