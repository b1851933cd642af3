"""The market domain's normalised vocabulary: what every parser produces and every store, query and
warning consumes, whatever the source (ENTSO-E XML, REE REData JSON, ESIOS JSON).

Times are timezone-aware UTC datetimes. A slot is [start, start + resolution). Prices are in the
currency and unit their document states (EUR per MWh for every source EMMA reads today); values are
floats as published, never rounded. A gap stays a gap: a series holds only the slots its document
gives a value for (after the A03 forward fill, which is a publication rule, not a guess).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, overload

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


def epoch_us(t: datetime) -> int:
    """An aware time as whole microseconds since 1970-01-01 UTC (the unit of SlotColumns)."""
    return (t - _EPOCH) // _MICROSECOND


class SlotColumns(Sequence[Slot]):
    """A series' slots as two columns, starts in microseconds since the Unix epoch (UTC) and values,
    with the Slots themselves built only when first read. The ENTSO-E parser gives these: a stored
    backfill never needs a datetime or a Slot per value (building them was a third of parsing and
    most of receiving a parsed document in another process), while everything that reads `slots`
    sees the same Slots, in the same order, as from a tuple."""

    __slots__ = ("_built", "starts_us", "values")

    def __init__(self, starts_us: Sequence[int], values: Sequence[float]) -> None:
        if len(starts_us) != len(values):
            raise ValueError(f"{len(starts_us)} starts for {len(values)} values")
        self.starts_us = starts_us
        self.values = values
        self._built: tuple[Slot, ...] | None = None

    def slots(self) -> tuple[Slot, ...]:
        if self._built is None:
            epoch, step = _EPOCH, _MICROSECOND
            self._built = tuple(Slot(epoch + m * step, v) for m, v in zip(self.starts_us, self.values, strict=True))
        return self._built

    def __len__(self) -> int:
        return len(self.values)

    @overload
    def __getitem__(self, index: int) -> Slot: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Slot, ...]: ...

    def __getitem__(self, index: int | slice) -> Slot | tuple[Slot, ...]:
        return self.slots()[index]

    def __iter__(self) -> Iterator[Slot]:
        return iter(self.slots())

    def __eq__(self, other: object) -> bool:
        # Equal to the tuple of the same Slots, as the tuple a parser used to give.
        if isinstance(other, SlotColumns):
            return list(self.starts_us) == list(other.starts_us) and list(self.values) == list(other.values)
        if isinstance(other, tuple):
            return self.slots() == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.slots())

    def __repr__(self) -> str:
        return f"SlotColumns({len(self)} slots)"

    def __reduce__(self) -> tuple[type[SlotColumns], tuple[Sequence[int], Sequence[float]]]:
        # Two flat lists (a range for contiguous starts) pickle far cheaper than a Slot each.
        return SlotColumns, (self.starts_us, self.values)


def columns(slots: Sequence[Slot]) -> SlotColumns | None:
    """`slots` as columns: themselves if they are, else built when every start is UTC (None if not,
    so a caller keeps the Slots and their time zones)."""
    if isinstance(slots, SlotColumns):
        return slots
    starts = [s.start for s in slots]
    if not all(t.tzinfo is UTC for t in starts):
        return None
    return SlotColumns([epoch_us(t) for t in starts], [s.value for s in slots])


def _pack(slots: Sequence[Slot]) -> Sequence[Slot]:
    """A series' slots for pickling: as columns when they are UTC (see SlotColumns), else as they are."""
    return columns(slots) or tuple(slots)


def _price_series(packed: Sequence[Slot], *fields: Any) -> PriceSeries:
    return PriceSeries(fields[0], fields[1], fields[2], packed, *fields[3:])


@dataclass(frozen=True, slots=True)
class PriceSeries:
    zone: str  # EIC code of the bidding zone (10Y1001A1001A82H for DE-LU)
    product: Product
    resolution: timedelta
    slots: Sequence[Slot]  # a tuple, or SlotColumns
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
    slots: Sequence[Slot]  # a tuple, or SlotColumns


@dataclass(frozen=True, slots=True)
class CapacitySeries:
    """Forecasted transfer capacity from `out_zone` into `in_zone`, MW."""

    out_zone: str
    in_zone: str
    resolution: timedelta
    slots: Sequence[Slot]  # a tuple, or SlotColumns


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
