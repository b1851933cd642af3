"""Generated A44 documents round-trip through the parser: what a publisher encodes (A01 points with
gaps, A03 blocks that omit repeated values, several Periods and resolutions, several sequences) comes
back slot for slot, and within a Period slots never overlap and an A03 curve leaves no hole."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from services.market import PriceSeries, Product
from services.market.documents import parse_document

ZONE = "10YNL----------L"
BASE = datetime(2025, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class GenPeriod:
    start: datetime
    minutes: int
    values: tuple[float | None, ...]  # per position; None = not published (A01 only)
    curve: str

    @property
    def end(self) -> datetime:
        return self.start + len(self.values) * timedelta(minutes=self.minutes)


prices = st.floats(min_value=-500, max_value=4000, allow_nan=False, allow_infinity=False)


@st.composite
def periods(draw: st.DrawFn, start: datetime) -> list[GenPeriod]:
    out = []
    for _ in range(draw(st.integers(1, 3))):
        minutes = draw(st.sampled_from([15, 30, 60]))
        curve = draw(st.sampled_from(["A01", "A03"]))
        n = draw(st.integers(1, 24))
        if curve == "A03":
            # Runs of repeated values: what A03 compresses.
            values: list[float | None] = []
            while len(values) < n:
                values += [draw(prices)] * draw(st.integers(1, 4))
            values = values[:n]
        else:
            values = draw(
                st.lists(st.none() | prices, min_size=n, max_size=n).filter(lambda v: any(x is not None for x in v))
            )
        out.append(GenPeriod(start, minutes, tuple(values), curve))
        # The next Period starts where this one ends, or later (a gap between Periods).
        start = out[-1].end + draw(st.sampled_from([0, 60])) * timedelta(minutes=1)
    return out


def _points(p: GenPeriod) -> str:
    points = []
    previous: float | None = None
    for position, value in enumerate(p.values, start=1):
        if value is None or (p.curve == "A03" and position > 1 and value == previous):
            continue  # A01: not published; A03: the publisher leaves out a repeat of the previous value
        previous = value
        points.append(f"<Point><position>{position}</position><price.amount>{value!r}</price.amount></Point>")
    return "".join(points)


def _utc(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%MZ")


def render(series: dict[int, list[GenPeriod]]) -> bytes:
    ts = []
    for i, (sequence, ps) in enumerate(series.items()):
        # One TimeSeries per curve type: the curve type belongs to the TimeSeries, not the Period.
        for curve in ("A01", "A03"):
            chosen = "".join(
                f"<Period><timeInterval><start>{_utc(p.start)}</start><end>{_utc(p.end)}</end></timeInterval>"
                f"<resolution>PT{p.minutes}M</resolution>{_points(p)}</Period>"
                for p in ps
                if p.curve == curve
            )
            if chosen:
                ts.append(
                    f"<TimeSeries><mRID>{i}{curve}</mRID><in_Domain.mRID>{ZONE}</in_Domain.mRID>"
                    f"<out_Domain.mRID>{ZONE}</out_Domain.mRID><contract_MarketAgreement.type>A01"
                    "</contract_MarketAgreement.type>"
                    f"<classificationSequence_AttributeInstanceComponent.position>{sequence}"
                    "</classificationSequence_AttributeInstanceComponent.position>"
                    f"<curveType>{curve}</curveType>{chosen}</TimeSeries>"
                )
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<Publication_MarketDocument xmlns="urn:iec62325.351:tc57wg16:451-3:publicationdocument:7:3">'
        "<mRID>generated</mRID><revisionNumber>1</revisionNumber><type>A44</type>"
        f"{''.join(ts)}</Publication_MarketDocument>"
    ).encode()


@st.composite
def documents(draw: st.DrawFn) -> dict[int, list[GenPeriod]]:
    sequences = draw(st.lists(st.integers(1, 3), min_size=1, max_size=2, unique=True))
    return {s: draw(periods(BASE + draw(st.integers(0, 4)) * timedelta(hours=1))) for s in sequences}


def expected_slots(ps: list[GenPeriod]) -> dict[timedelta, list[tuple[datetime, float]]]:
    """What the generator meant: every published value (A01) or every value of the run (A03)."""
    by_resolution: dict[timedelta, list[tuple[datetime, float]]] = {}
    for p in ps:
        step = timedelta(minutes=p.minutes)
        for i, value in enumerate(p.values):
            if value is not None:
                by_resolution.setdefault(step, []).append((p.start + i * step, value))
    return {k: sorted(v) for k, v in by_resolution.items()}


@settings(max_examples=60, deadline=None)
@given(documents())
def test_generated_a44_round_trips(doc: dict[int, list[GenPeriod]]) -> None:
    parsed = parse_document(render(doc), "generated.xml")
    got: dict[tuple[int, timedelta], PriceSeries] = {(s.sequence, s.resolution): s for s in parsed.prices}
    assert len(got) == len(parsed.prices)  # one series per sequence and resolution
    want = {(seq, res): slots for seq, ps in doc.items() for res, slots in expected_slots(ps).items()}
    assert sorted(got) == sorted(want)
    for key, series in got.items():
        assert series.product is Product.DAY_AHEAD and series.zone == ZONE
        assert [(s.start, s.value) for s in series.slots] == want[key]
    starts = [p.start for ps in doc.values() for p in ps]
    ends = [p.end for ps in doc.values() for p in ps]
    assert parsed.interval == (min(starts), max(ends))


@settings(max_examples=60, deadline=None)
@given(documents())
def test_slots_never_overlap_and_a03_leaves_no_hole(doc: dict[int, list[GenPeriod]]) -> None:
    parsed = parse_document(render(doc), "generated.xml")
    for series in parsed.prices:
        starts = [s.start for s in series.slots]
        assert starts == sorted(set(starts))  # strictly increasing: no slot twice
    for sequence, ps in doc.items():
        for p in ps:
            if p.curve != "A03":
                continue
            step = timedelta(minutes=p.minutes)
            [series] = [s for s in parsed.prices if (s.sequence, s.resolution) == (sequence, step)]
            inside = [s.start for s in series.slots if p.start <= s.start < p.end]
            assert inside == [p.start + i * step for i in range(len(p.values))]
