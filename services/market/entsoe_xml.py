"""ENTSO-E Transparency Platform XML (IEC 62325-451): day-ahead and intraday auction prices (A44),
physical flows (A11), forecasted transfer capacities (A61) and the Acknowledgement it answers with
when a query matches nothing.

Rules, all from the publication's own conventions:
- Each Period's timeInterval is authoritative (a document's period.timeInterval may be shorter).
- Its resolution splits the interval into positions 1..n; a position outside that range, a repeated
  position or an interval that is not a whole number of resolutions is a DocumentError naming it.
- Curve type A01: each Point is its own slot; a missing position is a gap and stays one.
  Curve type A03: a Point's value holds until the next Point's position, the last to the Period's end.
- classificationSequence (two day-ahead results of one zone, e.g. the hourly and the 15-minute
  coupling) and the auction are kept apart as series of their own, never merged or averaged.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import operator
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import attrgetter, itemgetter
from typing import NoReturn, cast
from xml.etree.ElementTree import Element, ParseError, XMLParser
from xml.parsers import expat

from defusedxml import (  # type: ignore[import-untyped]
    DefusedXmlException,
    DTDForbidden,
    EntitiesForbidden,
    ExternalReferenceForbidden,
)

from services.market.entsoe_plain import VALUE_FIELD as PLAIN_VALUE_FIELD
from services.market.entsoe_plain import PlainDocument, PlainPeriod, plain_document
from services.market.model import (
    CapacitySeries,
    DocumentError,
    DocumentKind,
    FlowSeries,
    MarketDocument,
    PriceSeries,
    Product,
    SlotColumns,
    Source,
    epoch_us,
)
from services.market.zones import checked_zone

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_ZERO, _DAY = timedelta(0), timedelta(days=1)

# Every IEC 62325-451 document lives under this namespace family (publication, acknowledgement, GL).
_NAMESPACE_PREFIX = "urn:iec62325.351:tc57wg16:451-"
NO_DATA_REASON = "999"
_CONTRACTS = {"A01": Product.DAY_AHEAD, "A07": Product.INTRADAY_AUCTION}
_DURATION = re.compile(r"PT(?:(\d{1,3})H)?(?:(\d{1,4})M)?")
# The SIDC intraday auctions are IDA1..IDA3; ENTSO-E names the auction in auction.mRID where it does.
_AUCTION_NUMBER = re.compile(r"(?:IDA)?([1-9])", re.IGNORECASE)
# A Period holds at most a year of 15-minute slots; more positions than that is not a real document.
_MAX_POSITIONS = 366 * 96
# An A03 curve expands one Point to a whole Period, so a small document could ask for billions of
# slots; a document may hold at most this many (a year of 15-minute prices for 25 zones is 880 000).
MAX_SLOTS = 1_000_000


def _refuse_dtd(name: str, sysid: str | None, pubid: str | None, internal: bool) -> NoReturn:
    raise DTDForbidden(name, sysid, pubid)


def _refuse_entity(name: str, _parameter: bool, value: str | None, base: str | None, *rest: str | None) -> NoReturn:
    raise EntitiesForbidden(name, value, base, rest[0], rest[1], rest[2])


def _refuse_unparsed(name: str, base: str | None, sysid: str | None, pubid: str | None, notation: str) -> NoReturn:
    raise EntitiesForbidden(name, None, base, sysid, pubid, notation)


def _refuse_external(context: str, base: str | None, sysid: str | None, pubid: str | None) -> NoReturn:
    raise ExternalReferenceForbidden(context, base, sysid, pubid)


def _check_constructs(data: bytes) -> None:
    """Refuse a DTD, an entity declaration or an external reference, as defusedxml does, by a pass of
    expat with only those handlers set: no Python runs per element. defusedxml itself swaps in the
    pure-Python ElementTree to hook them, which made building the tree half of parsing a document."""
    scanner = expat.ParserCreate()
    scanner.StartDoctypeDeclHandler = _refuse_dtd
    scanner.EntityDeclHandler = _refuse_entity
    scanner.UnparsedEntityDeclHandler = _refuse_unparsed
    scanner.ExternalEntityRefHandler = _refuse_external
    with contextlib.suppress(expat.ExpatError):  # malformed: the tree builder says so in its words
        scanner.Parse(data, True)


# Encodings in which "<!DOCTYPE" is these very bytes (expat reads them itself, without Python codecs).
_ASCII_COMPATIBLE = frozenset({b"utf-8", b"us-ascii", b"iso-8859-1"})
_DECLARED_ENCODING = re.compile(rb"""encoding\s*=\s*["']([^"']*)["']""")


def _plainly_without_dtd(data: bytes) -> bool:
    """True when `data` cannot hold a DTD, so neither an entity declaration nor an external reference
    (both live only in one): it is UTF-8 (or declared in an encoding where ASCII is ASCII) and the
    bytes "<!DOCTYPE" appear nowhere in it. A single substring search instead of a pass of expat;
    a document where this cannot be told so simply (UTF-16, another declared encoding, "<!DOCTYPE"
    anywhere, even in a comment) gets the full check."""
    body = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    if body[:1] != b"<" or body[1:2] == b"\x00":
        return False
    if body.startswith(b"<?xml"):
        end = body.find(b"?>")
        if end < 0:
            return False
        declared = _DECLARED_ENCODING.search(body, 0, end)
        if declared is not None and declared.group(1).lower() not in _ASCII_COMPATIBLE:
            return False
    return b"<!DOCTYPE" not in body


def parse_xml(data: bytes, document: str) -> Element:
    """The root element; DTDs, entity declarations and external references are refused, not expanded.
    The refusal is checked first over the whole document, so the tree is only ever built (by the C
    ElementTree) from a document that has none of them."""
    try:
        if not _plainly_without_dtd(data):
            _check_constructs(data)
        parser = XMLParser()
        parser.feed(data)
        root: Element = parser.close()
    except DefusedXmlException as exc:
        raise DocumentError(document, "(document)", f"refused XML construct: {type(exc).__name__}") from None
    except ParseError as exc:
        raise DocumentError(document, "(document)", f"malformed XML: {exc}") from None
    except LookupError as exc:  # expat asks Python's codecs for an encoding it does not know itself
        raise DocumentError(document, "(document)", f"malformed XML: {str(exc)[:80]}") from None
    return root


def _split(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return "", tag


def is_entsoe(root: Element) -> bool:
    return _split(root.tag)[0].startswith(_NAMESPACE_PREFIX)


# Qualified tags ("{namespace}name") per namespace, kept across documents: every document of a kind
# names the same fields in the same namespace, so building them per document was wasted work.
_QUALIFIED: dict[str, dict[str, str]] = {}
_MAX_NAMESPACES = 32  # a stream of made-up namespaces cannot grow the cache without bound

# An element's children's texts by tag, the first of a tag winning (as find() does); from a tree
# (_Reader.fields) or from a plainly laid-out document (entsoe_plain, tags without a namespace).
Fields = Mapping[str, str | None]


def _qualified(ns: str) -> dict[str, str]:
    names = _QUALIFIED.get(ns)
    if names is None:
        names = {}
        if len(_QUALIFIED) < _MAX_NAMESPACES:
            _QUALIFIED[ns] = names
    return names


class _NotISOTime(ValueError):
    pass


class _NaiveTime(ValueError):
    pass


@functools.lru_cache(maxsize=1024)  # every document of a day names the same few instants
def _utc_time(raw: str) -> datetime:
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise _NotISOTime(raw) from None
    if value.tzinfo is None:
        raise _NaiveTime(raw)
    return value.astimezone(UTC)


class _Reader:
    """Reads an element's fields in the document's namespace and names every field it complains about.
    ENTSO-E's field names hold dots, which send find() through the pure-Python ElementPath, so fields
    are looked up in a dict of the element's children (`fields`), built once per element."""

    __slots__ = ("_names", "document", "ns")

    def __init__(self, ns: str, document: str) -> None:
        self.ns = ns
        self.document = document
        self._names = _qualified(ns)

    def q(self, name: str) -> str:
        tag = self._names.get(name)
        if tag is None:
            tag = self._names[name] = f"{{{self.ns}}}{name}" if self.ns else name
        return tag

    @staticmethod
    def fields(el: Element) -> Fields:
        return {c.tag: c.text for c in reversed(el)}

    def all(self, el: Element, name: str) -> list[Element]:
        return el.findall(self.q(name))

    def text(self, f: Fields, name: str, path: str) -> str:
        value = self.optional(f, name)
        if value is None:
            raise DocumentError(self.document, f"{path}.{name}" if path else name, "missing")
        return value

    def optional(self, f: Fields, name: str) -> str | None:
        return (f.get(self._names.get(name) or self.q(name)) or "").strip() or None

    def error(self, path: str, problem: str) -> DocumentError:
        return DocumentError(self.document, path, problem)

    def time(self, f: Fields, name: str, path: str) -> datetime:
        raw = self.text(f, name, path)
        try:
            return _utc_time(raw)
        except _NotISOTime:
            raise self.error(f"{path}.{name}", f"{raw[:40]!r} is not an ISO 8601 time") from None
        except _NaiveTime:
            raise self.error(f"{path}.{name}", f"{raw!r} has no time zone (ENTSO-E times are UTC)") from None

    def integer(self, f: Fields, name: str, path: str) -> int:
        raw = self.text(f, name, path)
        if not raw.isascii() or not raw.isdigit() or len(raw) > 9:
            raise self.error(f"{path}.{name}", f"{raw[:40]!r} is not a whole number")
        return int(raw)

    def number(self, f: Fields, name: str, path: str) -> float:
        raw = self.text(f, name, path)
        try:
            value = float(raw)
        except ValueError:
            raise self.error(f"{path}.{name}", f"{raw[:40]!r} is not a number") from None
        if not math.isfinite(value):
            raise self.error(f"{path}.{name}", f"{raw!r} is not a finite number")
        return value


def parse_resolution(raw: str, document: str, path: str) -> timedelta:
    """PT15M, PT30M, PT60M, PT1H: the minute and hour durations ENTSO-E publishes."""
    step = _resolution(raw)
    if step is None:
        raise DocumentError(document, path, f"{raw[:40]!r} is not a supported resolution (PTnM or PTnH)")
    if step <= _ZERO or step > _DAY:
        raise DocumentError(document, path, f"{raw!r} is not a usable resolution")
    return step


@functools.lru_cache(maxsize=64)  # a handful of resolutions exist; each document names one again
def _resolution(raw: str) -> timedelta | None:
    m = _DURATION.fullmatch(raw)
    if m is None or not (m.group(1) or m.group(2)):
        return None
    return timedelta(hours=int(m.group(1) or 0), minutes=int(m.group(2) or 0))


def _fast_point(raw_position: str | None, raw_value: str | None) -> tuple[int | None, float | None]:
    """A Point's position and value when both are plainly fine, else None for the Reader to judge."""
    if raw_position is None or raw_value is None:
        return None, None
    raw_position = raw_position.strip()
    if not (raw_position.isascii() and raw_position.isdigit() and len(raw_position) <= 9):
        return None, None
    try:
        value = float(raw_value)
    except ValueError:
        return None, None
    if not math.isfinite(value):
        return None, None
    return int(raw_position), value


@dataclass(frozen=True, slots=True)
class _Period:
    start: datetime
    end: datetime
    resolution: timedelta
    starts_us: Sequence[int]  # each slot's start, microseconds since the Unix epoch (SlotColumns)
    values: list[float]


_first, _second = itemgetter(0), itemgetter(1)
_tag_of, _text_of = attrgetter("tag"), attrgetter("text")


def _plain_points(points: list[Element], position_tag: str, value_tag: str) -> tuple[list[int], list[float]] | None:
    """Every Point's position and value when the Period is laid out as the platform writes it (each
    Point exactly a position then a value, plain digits, finite numbers), read with a few sweeps over
    all of them in C (map with itemgetter/attrgetter: no Python frame per Point); None otherwise, for
    the Point-by-Point reading that names what it refuses."""
    if set(map(len, points)) != {2}:
        return None
    first, second = list(map(_first, points)), list(map(_second, points))
    if set(map(_tag_of, first)) != {position_tag} or set(map(_tag_of, second)) != {value_tag}:
        return None
    return _plain_values(list(map(_text_of, first)), list(map(_text_of, second)))


def _plain_values(
    texts_positions: Sequence[str | None], texts_values: Sequence[str | None]
) -> tuple[list[int], list[float]] | None:
    """The positions and values of Points written as plain digits and finite numbers; None otherwise."""
    if None in texts_positions or None in texts_values:
        return None
    raw_positions, raw_values = cast(Sequence[str], texts_positions), cast(Sequence[str], texts_values)
    digits = "".join(raw_positions)
    if not (digits.isascii() and digits.isdigit()):
        return None
    widths = set(map(len, raw_positions))
    if min(widths) == 0 or max(widths) > 9:
        return None
    try:
        values = list(map(float, raw_values))
    except ValueError:
        return None
    if not all(map(math.isfinite, values)):
        return None
    positions = list(map(_SMALL_POSITIONS.get, raw_positions))  # int() is ~3x slower than the lookup
    if None in positions:
        return list(map(int, raw_positions)), values
    return cast(list[int], positions), values


# The positions of a day's Periods as written (no sign, no leading zero), for _plain_values.
_SMALL_POSITIONS = {str(p): p for p in range(1, 101)}


class _NotPlain(Exception):
    """A plainly laid-out document whose Points need the Point-by-Point reading: read its tree."""


# What the walk reads of a Period: its timeInterval's fields (None: it has none), its resolution's
# text and its Points, as Elements (from a tree) or as entsoe_plain's texts.
_PeriodParts = tuple[Fields | None, str | None, list[Element] | PlainPeriod]
# What the walk reads of a TimeSeries: its fields and its Periods.
_SeriesParts = tuple[Fields, Iterable[_PeriodParts]]


def _tree_series(r: _Reader, root: Element) -> Iterator[_SeriesParts]:
    for el in root.findall(r.q("TimeSeries")):
        yield r.fields(el), (_tree_period(r, p) for p in el.findall(r.q("Period")))


def _tree_period(r: _Reader, el: Element) -> _PeriodParts:
    # find() with a tag without dots stays in C (ElementPath is only needed for dotted names).
    interval = el.find(r.q("timeInterval"))
    resolution = el.find(r.q("resolution"))
    return (
        None if interval is None else r.fields(interval),
        None if resolution is None else resolution.text,
        el.findall(r.q("Point")),
    )


def _plain_series(plain: PlainDocument) -> Iterator[_SeriesParts]:
    for series in plain.series:
        yield series.fields, ((p.times, p.resolution, p) for p in series.periods)


def _period(r: _Reader, parts: _PeriodParts, path: str, curve: str, value_field: str) -> _Period:
    times, raw_resolution, points = parts
    if times is None:
        raise r.error(f"{path}.timeInterval", "missing")
    start = r.time(times, "start", f"{path}.timeInterval")
    end = r.time(times, "end", f"{path}.timeInterval")
    text = (raw_resolution or "").strip()
    if not text:
        raise r.error(f"{path}.resolution", "missing")
    resolution = parse_resolution(text, r.document, f"{path}.resolution")
    if end <= start:
        raise r.error(f"{path}.timeInterval", f"end {end.isoformat()} is not after start {start.isoformat()}")
    first, step = epoch_us(start), resolution // _MICROSECOND
    count, rest = divmod(epoch_us(end) - first, step)
    if rest:
        raise r.error(f"{path}.timeInterval", f"{end - start} is not a whole number of {resolution} slots")
    if count > _MAX_POSITIONS:
        raise r.error(f"{path}.timeInterval", f"{count} slots of {resolution} is more than a year")
    n = len(points.positions) if isinstance(points, PlainPeriod) else len(points)
    if n > count:
        raise r.error(f"{path}.Point", f"{n} points do not fit {count} slots of {resolution}")
    if not n:
        raise r.error(f"{path}.Point", "a Period without points")
    position_tag, value_tag = r.q("position"), r.q(value_field)
    if isinstance(points, PlainPeriod):
        plain = _plain_values(points.positions, points.values) if value_field == PLAIN_VALUE_FIELD else None
    else:
        plain = _plain_points(points, position_tag, value_tag)
    if (
        plain is not None
        and plain[0][0] >= 1
        and plain[0][-1] <= count
        and all(map(operator.lt, plain[0], plain[0][1:]))
    ):
        # Positions within the interval and rising: none repeated, already in order.
        positions, given = plain
    elif isinstance(points, PlainPeriod):
        raise _NotPlain
    else:
        positions, given = _points(r, points, path, count, position_tag, value_tag, value_field)
    if curve == "A03":
        # A03 ("variable sized blocks"): omitted positions repeat the previous point's value up to the
        # next point or the Period's end. Position 1 must be given: there is nothing before it.
        if positions[0] != 1:
            raise r.error(f"{path}.Point", f"curve type A03 starts at position {positions[0]}, not 1")
        lengths = map(int.__sub__, [*positions[1:], count + 1], positions)
        values = (
            given if len(given) == count else list(itertools.chain.from_iterable(map(itertools.repeat, given, lengths)))
        )
        starts: Sequence[int] = range(first, first + count * step, step)
    else:
        values = given
        starts = (
            range(first, first + count * step, step)
            if len(positions) == count
            else [first + (p - 1) * step for p in positions]
        )
    return _Period(start, end, resolution, starts, values)


def _points(
    r: _Reader, points: list[Element], path: str, count: int, position_tag: str, value_tag: str, value_field: str
) -> tuple[list[int], list[float]]:
    """Point by Point: the positions in order with their values, or a DocumentError naming the Point."""
    values: dict[int, float] = {}
    for i, point in enumerate(points):
        raw_position = raw_value = None
        for child in point:
            if child.tag == position_tag and raw_position is None:
                raw_position = child.text
            elif child.tag == value_tag and raw_value is None:
                raw_value = child.text
        position, value = _fast_point(raw_position, raw_value)
        if position is None or value is None:
            ppath = f"{path}.Point[{i}]"
            fields = r.fields(point)
            position = r.integer(fields, "position", ppath)
            value = r.number(fields, value_field, ppath)
        if not 1 <= position <= count:
            raise r.error(
                f"{path}.Point[{i}].position", f"position {position} is outside 1..{count} of the Period's interval"
            )
        if position in values:
            raise r.error(f"{path}.Point[{i}].position", f"position {position} appears twice")
        values[position] = value
    positions = sorted(values)
    return positions, [values[p] for p in positions]


def _count(r: _Reader, seen: int, period: _Period, path: str) -> int:
    seen += len(period.values)
    if seen > MAX_SLOTS:
        raise r.error(path, f"the document holds more than {MAX_SLOTS} slots")
    return seen


def _curve(r: _Reader, ts: Fields, path: str) -> str:
    curve = r.optional(ts, "curveType") or "A01"
    if curve not in ("A01", "A03"):
        raise r.error(f"{path}.curveType", f"curve type {curve[:20]!r} is not supported (A01, A03)")
    return curve


def _merge(r: _Reader, path: str, periods: list[_Period]) -> SlotColumns:
    """One series' slots in time order; two Periods giving the same slot is a document error."""
    if len(periods) == 1:
        return SlotColumns(periods[0].starts_us, periods[0].values)
    every = [t for p in periods for t in p.starts_us]
    given = [v for p in periods for v in p.values]
    order = sorted(range(len(every)), key=every.__getitem__)
    starts, values = [every[i] for i in order], [given[i] for i in order]
    for a, b in itertools.pairwise(starts):
        if a == b:
            raise r.error(path, f"two Periods give the slot at {(_EPOCH + a * _MICROSECOND).isoformat()}")
    return SlotColumns(starts, values)


def _domain(r: _Reader, ts: Fields, side: str, path: str) -> str:
    # Publication documents say in_Domain/out_Domain; GL documents inBiddingZone_Domain/outBiddingZone_Domain.
    for name in (f"{side}_Domain.mRID", f"{side}BiddingZone_Domain.mRID"):
        code = r.optional(ts, name)
        if code is not None:
            return checked_zone(code, r.document, f"{path}.{name}")
    raise r.error(f"{path}.{side}_Domain.mRID", "missing")


def _prices(r: _Reader, all_series: Iterable[_SeriesParts]) -> tuple[tuple[PriceSeries, ...], list[_Period]]:
    groups: dict[tuple[str, Product, int, int, timedelta, str, str], list[_Period]] = {}
    periods: list[_Period] = []
    seen = 0
    for t, (ts, ts_periods) in enumerate(all_series):
        path = f"TimeSeries[{t}]"
        zone = _domain(r, ts, "in", path)
        contract = r.optional(ts, "contract_MarketAgreement.type") or "A01"
        product = _CONTRACTS.get(contract)
        if product is None:
            raise r.error(f"{path}.contract_MarketAgreement.type", f"{contract[:20]!r} is neither A01 nor A07")
        auction = 0
        if product is Product.INTRADAY_AUCTION:
            named = r.optional(ts, "auction.mRID")
            m = _AUCTION_NUMBER.fullmatch(named) if named else None
            auction = int(m.group(1)) if m else 0
        sequence = 1
        if r.optional(ts, "classificationSequence_AttributeInstanceComponent.position") is not None:
            sequence = r.integer(ts, "classificationSequence_AttributeInstanceComponent.position", path)
        currency = r.optional(ts, "currency_Unit.name") or "EUR"
        unit = r.optional(ts, "price_Measure_Unit.name") or "MWH"
        curve = _curve(r, ts, path)
        for p, parts in enumerate(ts_periods):
            period = _period(r, parts, f"{path}.Period[{p}]", curve, "price.amount")
            periods.append(period)
            seen = _count(r, seen, period, f"{path}.Period[{p}]")
            key = (zone, product, auction, sequence, period.resolution, currency, unit)
            groups.setdefault(key, []).append(period)
    series = tuple(
        PriceSeries(
            zone=zone,
            product=product,
            resolution=resolution,
            slots=_merge(r, f"TimeSeries(zone {zone}, sequence {sequence}, {resolution})", group),
            auction=auction,
            sequence=sequence,
            currency=currency,
            unit=unit,
        )
        for (zone, product, auction, sequence, resolution, currency, unit), group in sorted(
            groups.items(), key=lambda kv: (kv[0][0], kv[0][1].value, kv[0][2], kv[0][3], kv[0][4])
        )
    )
    return series, periods


def _directed(
    r: _Reader, all_series: Iterable[_SeriesParts]
) -> tuple[dict[tuple[str, str, timedelta], SlotColumns], list[_Period]]:
    """Flows and capacities: one series per direction (out_Domain -> in_Domain) and resolution."""
    groups: dict[tuple[str, str, timedelta], list[_Period]] = {}
    periods: list[_Period] = []
    seen = 0
    for t, (ts, ts_periods) in enumerate(all_series):
        path = f"TimeSeries[{t}]"
        out_zone = _domain(r, ts, "out", path)
        in_zone = _domain(r, ts, "in", path)
        curve = _curve(r, ts, path)
        for p, parts in enumerate(ts_periods):
            period = _period(r, parts, f"{path}.Period[{p}]", curve, "quantity")
            periods.append(period)
            seen = _count(r, seen, period, f"{path}.Period[{p}]")
            groups.setdefault((out_zone, in_zone, period.resolution), []).append(period)
    merged = {
        key: _merge(r, f"TimeSeries({key[0]} -> {key[1]}, {key[2]})", group) for key, group in sorted(groups.items())
    }
    return merged, periods


def _interval(periods: list[_Period]) -> tuple[datetime, datetime] | None:
    if not periods:
        return None
    return min(p.start for p in periods), max(p.end for p in periods)


def parse_entsoe(root: Element, document: str) -> MarketDocument:
    """A parsed ENTSO-E document (root from parse_xml, namespace already known to be IEC 62325-451)."""
    ns, local = _split(root.tag)
    r = _Reader(ns, document)
    head = r.fields(root)
    if local == "Acknowledgement_MarketDocument":
        return _acknowledgement(r, root, head)
    if local not in ("Publication_MarketDocument", "GL_MarketDocument"):
        raise r.error("(root)", f"{local[:60]!r} is not a document EMMA reads")
    return _publication(r, head, _tree_series(r, root))


def parse_plain_entsoe(data: bytes, document: str) -> MarketDocument | None:
    """The document `data` when entsoe_plain reads it (a plainly laid-out A44 document, as the
    Transparency Platform writes them) and the walk finds nothing to refuse; None otherwise, for
    parse_xml and parse_entsoe, which read any document and name whatever they refuse. Both read
    the same fields with the same walk, so a document gives the same MarketDocument either way."""
    plain = plain_document(data)
    if plain is None:
        return None
    try:
        return _publication(_Reader("", document), plain.head, _plain_series(plain))
    except (DocumentError, _NotPlain):
        return None


def _publication(r: _Reader, head: Fields, all_series: Iterable[_SeriesParts]) -> MarketDocument:
    doc_type = r.text(head, "type", "")
    document_id = r.text(head, "mRID", "")
    revision = r.integer(head, "revisionNumber", "") if r.optional(head, "revisionNumber") else 1
    created = r.time(head, "createdDateTime", "") if r.optional(head, "createdDateTime") else None
    if doc_type == "A44":
        prices, periods = _prices(r, all_series)
        return MarketDocument(
            Source.ENTSOE,
            DocumentKind.PRICES,
            document_id,
            revision,
            created,
            prices=prices,
            interval=_interval(periods),
        )
    if doc_type == "A11":
        groups, periods = _directed(r, all_series)
        flows = tuple(FlowSeries(o, i, res, slots) for (o, i, res), slots in groups.items())
        return MarketDocument(
            Source.ENTSOE, DocumentKind.FLOWS, document_id, revision, created, flows=flows, interval=_interval(periods)
        )
    if doc_type == "A61":
        groups, periods = _directed(r, all_series)
        caps = tuple(CapacitySeries(o, i, res, slots) for (o, i, res), slots in groups.items())
        return MarketDocument(
            Source.ENTSOE,
            DocumentKind.CAPACITIES,
            document_id,
            revision,
            created,
            capacities=caps,
            interval=_interval(periods),
        )
    raise r.error("type", f"document type {doc_type[:20]!r} is not one EMMA reads (A44, A11, A61)")


def _acknowledgement(r: _Reader, root: Element, head: Fields) -> MarketDocument:
    """Reason 999 is ENTSO-E's "no matching data": an answer, not a failure. Any other reason is a
    refused request (bad parameters, too large a query), which is an error of the document's."""
    reasons = r.all(root, "Reason")
    if not reasons:
        raise r.error("Reason", "an Acknowledgement without a Reason")
    reason = r.fields(reasons[0])
    code = r.text(reason, "code", "Reason[0]")
    text = r.optional(reason, "text") or ""
    if code != NO_DATA_REASON:
        raise r.error("Reason[0].code", f"acknowledgement reason {code[:20]}: {text[:200]}")
    created = r.time(head, "createdDateTime", "") if r.optional(head, "createdDateTime") else None
    document_id = r.optional(head, "mRID") or ""
    return MarketDocument(Source.ENTSOE, DocumentKind.NO_DATA, document_id, 0, created, no_data_reason=text)
