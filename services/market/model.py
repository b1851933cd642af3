"""The market domain's normalised vocabulary: what every parser produces and every store, query and
warning consumes, whatever the source (ENTSO-E XML, REE REData JSON, ESIOS JSON).

Times are timezone-aware UTC datetimes. A slot is [start, start + resolution). Prices are in the
currency and unit their document states (EUR per MWh for every source EMMA reads today); values are
floats as published, never rounded. A gap stays a gap: a series holds only the slots its document
gives a value for (after the A03 forward fill, which is a publication rule, not a guess).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from core.errors import EmmaError


class MarketError(EmmaError):
    """Root of the market package's errors."""


class DocumentError(MarketError):
    """A document that cannot be read: names the document and the field, so an operator can look."""

    def __init__(self, document: str, field_path: str, problem: str) -> None:
        super().__init__(f"{document}: {field_path}: {problem}")
        self.document = document
        self.field_path = field_path
        self.problem = problem


class Product(enum.Enum):
    """What was traded. The numbers are the contract's MarketProduct values."""

    DAY_AHEAD = 1
    INTRADAY_AUCTION = 2  # with PriceSeries.auction = 1, 2, 3 (the SIDC intraday auctions IDA1..3)
    PVPC = 3  # Spain's regulated consumer price (REE), per geography
    SPOT = 4  # Spain's day-ahead spot price as REE republishes it


class Source(enum.Enum):
    ENTSOE = "entsoe"
    REE_REDATA = "ree-redata"
    REE_ESIOS = "ree-esios"


class DocumentKind(enum.Enum):
    PRICES = "prices"  # ENTSO-E A44, REData prices, ESIOS indicator
    FLOWS = "flows"  # ENTSO-E A11 physical flows
    CAPACITIES = "capacities"  # ENTSO-E A61 forecasted transfer capacity
    NO_DATA = "no-data"  # ENTSO-E Acknowledgement with reason 999


@dataclass(frozen=True, slots=True)
class Slot:
    """One delivery interval's value: a price (currency/MWh) or a flow/capacity (MW)."""

    start: datetime
    value: float

    def __reduce__(self) -> tuple[type[Slot], tuple[datetime, float]]:
        # Documents cross process boundaries (parsed in a worker, stored in the service); the
        # dataclass's own slots pickling looks the fields up again for every Slot, 5x slower.
        return Slot, (self.start, self.value)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _pack(slots: tuple[Slot, ...]) -> tuple[object, ...]:
    """A series' slots for pickling: UTC starts as microseconds since the epoch and the values, two
    flat lists (a Slot and its datetime pickled one by one cost most of sending a parsed document to
    another process); other time zones as the Slots themselves."""
    starts = [s.start for s in slots]
    if not all(t.tzinfo is UTC for t in starts):
        return (slots,)
    return [(t - _EPOCH) // _MICROSECOND for t in starts], [s.value for s in slots]


def _unpack(packed: tuple[object, ...]) -> tuple[Slot, ...]:
    if len(packed) == 1:
        return packed[0]  # type: ignore[return-value]
    starts, values = packed
    return tuple(
        Slot(_EPOCH + timedelta(microseconds=m), v)
        for m, v in zip(starts, values, strict=True)  # type: ignore[call-overload]
    )


def _price_series(packed: tuple[object, ...], *fields: Any) -> PriceSeries:
    return PriceSeries(fields[0], fields[1], fields[2], _unpack(packed), *fields[3:])


@dataclass(frozen=True, slots=True)
class PriceSeries:
    zone: str  # EIC code of the bidding zone (10Y1001A1001A82H for DE-LU)
    product: Product
    resolution: timedelta
    slots: tuple[Slot, ...]
    auction: int = 0  # intraday auction number; 0 for the others
    sequence: int = 1  # ENTSO-E classificationSequence: kept apart, never averaged
    geography: str = ""  # PVPC's ESIOS geography ("8741" Península); "" elsewhere
    currency: str = "EUR"
    unit: str = "MWH"

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _price_series, (
            _pack(self.slots),
            self.zone,
            self.product,
            self.resolution,
            self.auction,
            self.sequence,
            self.geography,
            self.currency,
            self.unit,
        )


@dataclass(frozen=True, slots=True)
class FlowSeries:
    """Physical flow from `out_zone` into `in_zone` (ENTSO-E's direction), MW."""

    out_zone: str
    in_zone: str
    resolution: timedelta
    slots: tuple[Slot, ...]


@dataclass(frozen=True, slots=True)
class CapacitySeries:
    """Forecasted transfer capacity from `out_zone` into `in_zone`, MW."""

    out_zone: str
    in_zone: str
    resolution: timedelta
    slots: tuple[Slot, ...]


@dataclass(frozen=True, slots=True)
class MarketDocument:
    """One parsed publication. `document_id` and `revision` identify it at its source (ENTSO-E mRID
    and revisionNumber; for REE the indicator and day, revision from its last-update time)."""

    source: Source
    kind: DocumentKind
    document_id: str
    revision: int
    created_at: datetime | None
    prices: tuple[PriceSeries, ...] = ()
    flows: tuple[FlowSeries, ...] = ()
    capacities: tuple[CapacitySeries, ...] = ()
    no_data_reason: str = ""  # for NO_DATA: the Acknowledgement's reason text
    # The delivery interval the document covers (union of its periods), None for NO_DATA.
    interval: tuple[datetime, datetime] | None = field(default=None)
