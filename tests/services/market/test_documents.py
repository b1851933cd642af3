"""Every market document in data/ parsed, its numbers checked against values worked out by hand from
the file (min, max and where, mean, slot counts, negative slots), and every rule of the parsers:
A03 forward fill, sequences apart, resolution changes, DST days, PVPC missing, no data, errors."""

from __future__ import annotations

import asyncio
import itertools
import json
import pickle
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from core.tasks import stop_task
from services.market import DocumentError, DocumentKind, MarketDocument, PriceSeries, Product, Slot, Source
from services.market.documents import parse_document, parse_documents

DATA = Path(__file__).parent / "data"
DE_LU = "10Y1001A1001A82H"
ES = "10YES-REE------0"
H = timedelta(hours=1)
Q = timedelta(minutes=15)


def parse(name: str) -> MarketDocument:
    return parse_document((DATA / name).read_bytes(), name)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def at(series: PriceSeries, start: datetime) -> float:
    [value] = [s.value for s in series.slots if s.start == start]
    return value


def mins(series: PriceSeries) -> tuple[float, list[datetime]]:
    low = min(s.value for s in series.slots)
    return low, [s.start for s in series.slots if s.value == low]


def maxs(series: PriceSeries) -> tuple[float, list[datetime]]:
    high = max(s.value for s in series.slots)
    return high, [s.start for s in series.slots if s.value == high]


def mean(series: PriceSeries) -> float:
    return sum(s.value for s in series.slots) / len(series.slots)


def contiguous(series: PriceSeries) -> bool:
    return all(b.start - a.start == series.resolution for a, b in zip(series.slots, series.slots[1:], strict=False))


# --- ENTSO-E A44 -------------------------------------------------------------------------------


def test_a44_hourly_and_quarter_hourly_sequences_with_a03_fill_and_negative_prices() -> None:
    doc = parse("A44_DE-LU_2024-10-06_07_dayahead_PT60M+PT15M_negative.xml")
    assert (doc.source, doc.kind, doc.revision) == (Source.ENTSOE, DocumentKind.PRICES, 1)
    assert doc.document_id == "2d27edd953004059aa96e104fd2d6aee"
    assert doc.created_at == utc(2024, 10, 7, 18, 8, 18)
    # The Periods' intervals count, not the document's (2024-10-05T22:00Z..2024-10-06T22:00Z).
    assert doc.interval == (utc(2024, 10, 5, 22), utc(2024, 10, 7, 22))
    hourly, quarter = doc.prices
    assert (hourly.zone, hourly.product, hourly.sequence, hourly.resolution) == (DE_LU, Product.DAY_AHEAD, 1, H)
    assert (quarter.zone, quarter.product, quarter.sequence, quarter.resolution) == (DE_LU, Product.DAY_AHEAD, 2, Q)
    assert (hourly.currency, hourly.unit, hourly.auction) == ("EUR", "MWH", 0)
    # Two days: 2 x 24 hours and 2 x 96 quarters, after filling the omitted positions.
    assert len(hourly.slots) == 48 and contiguous(hourly)
    assert len(quarter.slots) == 192 and contiguous(quarter)
    # A03: hourly position 15 of the first day (12:00Z) is omitted and repeats position 14 (-0.01).
    assert at(hourly, utc(2024, 10, 6, 11)) == -0.01
    assert at(hourly, utc(2024, 10, 6, 12)) == -0.01
    # Quarter-hour position 23 of day one (03:30Z) repeats 68.2; position 6 of day two (23:15Z) 64.91.
    assert at(quarter, utc(2024, 10, 6, 3, 30)) == 68.2
    assert at(quarter, utc(2024, 10, 6, 23, 15)) == 64.91
    assert mins(hourly) == (-0.01, [utc(2024, 10, 6, 11), utc(2024, 10, 6, 12)])
    assert maxs(hourly) == (237.65, [utc(2024, 10, 7, 16)])
    assert mean(hourly) == pytest.approx(3326.83 / 48)
    assert sum(s.value < 0 for s in hourly.slots) == 2
    assert mins(quarter) == (-29.91, [utc(2024, 10, 6, 10, 45), utc(2024, 10, 6, 13)])
    assert maxs(quarter) == (189.94, [utc(2024, 10, 7, 18)])
    assert mean(quarter) == pytest.approx(13899.56 / 192)
    assert sum(s.value < 0 for s in quarter.slots) == 12


def test_a44_two_sequences_listed_out_of_order_stay_apart() -> None:
    doc = parse("A44_DE-LU_2026-02-02_03_dayahead_PT15M_two_sequences.xml")
    assert doc.interval == (utc(2026, 2, 1, 23), utc(2026, 2, 3, 23))
    # The file lists sequence 2 first; each sequence is one series over both days, never averaged.
    first, second = doc.prices
    assert (first.sequence, second.sequence) == (1, 2)
    for s in (first, second):
        assert (s.resolution, len(s.slots), s.slots[0].start) == (Q, 192, utc(2026, 2, 1, 23))
        assert contiguous(s)
        assert not any(slot.value < 0 for slot in s.slots)
    assert at(first, utc(2026, 2, 1, 23)) == 100.41 and at(second, utc(2026, 2, 1, 23)) == 102.1
    assert mins(first) == (76.02, [utc(2026, 2, 3, 3, 15)])
    assert maxs(first) == (154.13, [utc(2026, 2, 2, 8)])
    assert mean(first) == pytest.approx(19797.06 / 192)
    assert mins(second) == (68.9, [utc(2026, 2, 3, 3, 45)])
    assert maxs(second) == (157.8, [utc(2026, 2, 2, 7)])
    assert mean(second) == pytest.approx(19590.55 / 192)
    # Sequence 2, day two, position 79 (18:30Z) is omitted: A03 repeats position 78 (121.59).
    assert at(second, utc(2026, 2, 3, 18, 30)) == 121.59


@pytest.mark.parametrize(
    ("name", "start", "hours"),
    [
        ("derived_A44_DE-LU_2024-03-31_dst_23h.xml", utc(2024, 3, 30, 23), 23),
        ("derived_A44_DE-LU_2024-10-27_dst_25h.xml", utc(2024, 10, 26, 22), 25),
    ],
)
def test_a44_dst_days_have_23_and_25_hours(name: str, start: datetime, hours: int) -> None:
    [series] = parse(name).prices
    assert len(series.slots) == hours and contiguous(series)
    assert series.slots[0].start == start
    assert series.slots[-1].start == start + (hours - 1) * H
    assert [s.value for s in series.slots] == [10.0 * p for p in range(1, hours + 1)]


def test_a44_intraday_auction_with_a_resolution_change() -> None:
    doc = parse("derived_A44_DE-LU_2024-06-14_intraday_IDA2_PT30M+PT15M.xml")
    assert doc.revision == 2
    assert doc.interval == (utc(2024, 6, 14, 10), utc(2024, 6, 14, 13))
    # One TimeSeries, two Periods of different resolution: one series per resolution.
    half, quarter = sorted(doc.prices, key=lambda s: s.resolution, reverse=True)
    for s in (half, quarter):
        assert (s.product, s.auction, s.sequence) == (Product.INTRADAY_AUCTION, 2, 1)
    assert half.resolution == timedelta(minutes=30)
    assert [(s.start, s.value) for s in half.slots] == [
        (utc(2024, 6, 14, 10), 50.5),
        (utc(2024, 6, 14, 10, 30), -4.25),
        (utc(2024, 6, 14, 11), 12.0),
        (utc(2024, 6, 14, 11, 30), 0.0),
    ]
    assert [s.start for s in quarter.slots] == [utc(2024, 6, 14, 12, m) for m in (0, 15, 30, 45)]
    assert [s.value for s in quarter.slots] == [7.5, 8.5, 9.5, 10.5]


# --- ENTSO-E A11, A61, Acknowledgement -------------------------------------------------------------


def test_a11_flows_keep_direction_and_gaps() -> None:
    doc = parse("derived_A11_FR-DE-LU_2024-10-07_flows_gap.xml")
    assert doc.kind is DocumentKind.FLOWS and doc.prices == ()
    by_direction = {(f.out_zone, f.in_zone): f for f in doc.flows}
    fr_de = by_direction[("10YFR-RTE------C", DE_LU)]
    de_fr = by_direction[(DE_LU, "10YFR-RTE------C")]
    # Positions 5 and 6 (02:00Z, 03:00Z) are missing: 22 slots, the gap left open, never a zero.
    assert len(fr_de.slots) == 22
    starts = {s.start for s in fr_de.slots}
    assert utc(2024, 10, 7, 2) not in starts and utc(2024, 10, 7, 3) not in starts
    assert fr_de.slots[3] == type(fr_de.slots[3])(utc(2024, 10, 7, 1), 1004.0)
    assert fr_de.slots[4].start == utc(2024, 10, 7, 4) and fr_de.slots[4].value == 1007.0
    # A published zero is a value.
    assert len(de_fr.slots) == 24 and {s.value for s in de_fr.slots} == {0.0}


def test_a61_capacity() -> None:
    doc = parse("derived_A61_ES-PT_2024-10-07_capacity.xml")
    assert (doc.kind, doc.revision) == (DocumentKind.CAPACITIES, 3)
    [cap] = doc.capacities
    assert (cap.out_zone, cap.in_zone, cap.resolution) == (ES, "10YPT-REN------W", H)
    assert [s.value for s in cap.slots] == [4200.0] * 8 + [3900.0] * 16


def test_acknowledgement_999_is_no_data() -> None:
    doc = parse("Acknowledgement_999_no_matching_data.xml")
    assert doc.kind is DocumentKind.NO_DATA
    assert doc.no_data_reason == "No matching data found"
    assert (doc.prices, doc.flows, doc.capacities, doc.interval) == ((), (), (), None)
    assert doc.document_id == "be3917c7-0704-4"


def test_acknowledgement_with_another_reason_is_an_error() -> None:
    body = (DATA / "Acknowledgement_999_no_matching_data.xml").read_bytes()
    body = body.replace(b"<code>999</code>", b"<code>B11</code>").replace(b"No matching data found", b"Too many")
    with pytest.raises(DocumentError) as caught:
        parse_document(body, "ack.xml")
    assert (caught.value.document, caught.value.field_path) == ("ack.xml", "Reason[0].code")
    assert "B11" in caught.value.problem and "Too many" in caught.value.problem


# --- REE ---------------------------------------------------------------------------------------


def test_redata_pvpc_and_spot() -> None:
    doc = parse("redata_precios-mercados-tiempo-real_2023-11-29_pvpc+spot.json")
    assert (doc.source, doc.kind) == (Source.REE_REDATA, DocumentKind.PRICES)
    assert doc.document_id == "redata:mer13:2023-11-29"
    # last-update 2023-11-28T20:46:41+01:00 = 19:46:41Z
    assert doc.revision == int(utc(2023, 11, 28, 19, 46, 41).timestamp())
    assert doc.interval == (utc(2023, 11, 28, 23), utc(2023, 11, 29, 23))
    pvpc, spot = doc.prices
    assert (pvpc.product, pvpc.zone, pvpc.geography, pvpc.resolution) == (Product.PVPC, ES, "8741", H)
    assert (spot.product, spot.zone, spot.geography) == (Product.SPOT, ES, "")
    assert len(pvpc.slots) == len(spot.slots) == 24 and contiguous(pvpc) and contiguous(spot)
    # 2023-11-29T00:00+01:00 is 2023-11-28T23:00Z.
    assert pvpc.slots[0].start == utc(2023, 11, 28, 23) and pvpc.slots[0].value == 132.47
    assert mins(pvpc) == (114.86, [utc(2023, 11, 29, 13)])
    assert maxs(pvpc) == (207.19, [utc(2023, 11, 29, 19)])
    assert mean(pvpc) == pytest.approx(3697.65 / 24)
    assert mins(spot) == (57.79, [utc(2023, 11, 29, 13)])
    assert maxs(spot) == (100.28, [utc(2023, 11, 29, 19)])
    assert mean(spot) == pytest.approx(2040.11 / 24)


def test_redata_pvpc_not_yet_published_is_missing() -> None:
    doc = parse("derived_redata_2023-11-29_pvpc_missing.json")
    [spot] = doc.prices
    assert spot.product is Product.SPOT and len(spot.slots) == 24


def test_esios_pvpc_per_geography() -> None:
    doc = parse("esios_indicator_1001_PVPC_2024-03-09.json")
    assert (doc.source, doc.document_id) == (Source.REE_ESIOS, "esios:1001:2024-03-09")
    assert [s.geography for s in doc.prices] == ["8741", "8742", "8743", "8744", "8745"]
    for s in doc.prices:
        assert (s.product, s.zone, s.resolution, len(s.slots)) == (Product.PVPC, ES, H, 24)
        assert s.slots[0].start == utc(2024, 3, 8, 23) and s.slots[0].value == 44.98
        assert mins(s) == (41.94, [utc(2024, 3, 9, 22)])
        assert maxs(s) == (46.81, [utc(2024, 3, 9, 19)])
        assert mean(s) == pytest.approx(1066.7 / 24)


@pytest.mark.parametrize("drop_utc", [False, True], ids=["datetime_utc", "offset_in_datetime"])
@pytest.mark.parametrize(
    ("name", "start", "hours"),
    [
        ("derived_esios_1001_2024-10-27_dst_25h.json", utc(2024, 10, 26, 22), 25),
        ("derived_esios_1001_2024-03-31_dst_23h.json", utc(2024, 3, 30, 23), 23),
    ],
)
def test_esios_dst_days(name: str, start: datetime, hours: int, drop_utc: bool) -> None:
    body = (DATA / name).read_bytes()
    if drop_utc:
        # Without datetime_utc the offset in `datetime` decides: +02:00 and +01:00 give distinct hours.
        body = b"\n".join(line for line in body.split(b"\n") if b'"datetime_utc"' not in line)
        assert b"datetime_utc" not in body
    [series] = parse_document(body, name).prices
    assert len({s.start for s in series.slots}) == hours and contiguous(series)
    assert series.slots[0].start == start
    assert [s.value for s in series.slots] == [100.0 + h for h in range(hours)]


@pytest.mark.parametrize(
    ("body", "field", "needle"),
    [
        (b'{"errors":[{"code":500,"status":"500","title":"Internal Server Error","detail":"x"}]}', "errors", "500"),
        (b'{"message":"HTTP Token: Access denied."}', "message", "Access denied"),
    ],
)
def test_ree_error_bodies_are_document_errors(body: bytes, field: str, needle: str) -> None:
    with pytest.raises(DocumentError) as caught:
        parse_document(body, "ree.json")
    assert caught.value.field_path == field and needle in caught.value.problem


def test_gl_market_document_flows_name_zones_by_bidding_zone_domain() -> None:
    # The same flows in the GL_MarketDocument shape (inBiddingZone_Domain / outBiddingZone_Domain).
    body = (DATA / "derived_A11_FR-DE-LU_2024-10-07_flows_gap.xml").read_bytes()
    body = body.replace(b"Publication_MarketDocument", b"GL_MarketDocument")
    body = body.replace(b"in_Domain.mRID", b"inBiddingZone_Domain.mRID")
    body = body.replace(b"out_Domain.mRID", b"outBiddingZone_Domain.mRID")
    doc = parse_document(body, "gl.xml")
    assert {(f.out_zone, f.in_zone, len(f.slots)) for f in doc.flows} == {
        ("10YFR-RTE------C", DE_LU, 22),
        (DE_LU, "10YFR-RTE------C", 24),
    }


def test_redata_pvpc_without_values_is_missing_too() -> None:
    body = json.loads((DATA / "redata_precios-mercados-tiempo-real_2023-11-29_pvpc+spot.json").read_bytes())
    [pvpc] = [i for i in body["included"] if i["id"] == "1001"]
    pvpc["attributes"]["values"] = []
    doc = parse_document(json.dumps(body).encode(), "redata.json")
    assert [s.product for s in doc.prices] == [Product.SPOT]


def test_esios_without_values_is_missing_not_an_error() -> None:
    body = json.loads((DATA / "esios_indicator_1001_PVPC_2024-03-09.json").read_bytes())
    body["indicator"]["values"] = []
    doc = parse_document(json.dumps(body).encode(), "esios.json")
    assert (doc.kind, doc.prices, doc.interval) == (DocumentKind.PRICES, (), None)


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.iterdir() if p.suffix in (".xml", ".json")))
def test_a_parsed_document_crosses_a_process_boundary_unchanged(name: str) -> None:
    # Parsed documents are pickled from a parser process to the saver; series pack their slots.
    try:
        doc = parse(name)
    except DocumentError:
        return  # an error fixture: nothing to send
    again = pickle.loads(pickle.dumps(doc))
    assert again == doc
    assert [str(s.start) for p in again.prices for s in p.slots] == [str(s.start) for p in doc.prices for s in p.slots]
    cest = timezone(timedelta(hours=2))
    local = PriceSeries(ES, Product.SPOT, H, (Slot(datetime(2024, 6, 1, tzinfo=cest), 1.5),))
    back = pickle.loads(pickle.dumps(local))
    assert back == local and back.slots[0].start.tzinfo == cest


def test_points_spelled_otherwise_read_the_same() -> None:
    # The platform writes each Point as position then price.amount; a Point in the other order, with
    # another element beside them or with padded text reads the same (Point by Point, not the sweep).
    name = "A44_DE-LU_2024-10-06_07_dayahead_PT60M+PT15M_negative.xml"
    body = (DATA / name).read_bytes()
    plain = parse_document(body, name)
    first = b"<position>1</position>\n                 <price.amount>67.04</price.amount>"
    for spelled in (
        b"<price.amount>67.04</price.amount><position>1</position>",
        first + b"<note>kept apart</note>",
        b"<position> 1 </position><price.amount> 67.04 </price.amount>",
    ):
        assert body.count(first) == 1
        assert parse_document(body.replace(first, spelled), name) == plain


async def test_parse_documents_gives_each_document_and_the_loop_a_turn_between_them() -> None:
    # The fetch scheduler parses a fetch with it: the same documents as parse_document one by one, and
    # another task (a save in flight, an RPC) runs between two documents instead of after the last.
    names = sorted(p.name for p in DATA.iterdir() if p.name.startswith(("A44", "derived_A")))
    turns = 0

    async def other() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    seen: list[int] = []

    def named() -> Iterator[tuple[str, bytes]]:
        for name in names:
            seen.append(turns)  # how often the other task had run when this document was taken
            yield name, (DATA / name).read_bytes()

    task = asyncio.create_task(other())
    try:
        docs = await parse_documents(named())
    finally:
        await stop_task(task)
    assert docs == [parse(name) for name in names]
    assert len(seen) == len(names) > 2 and all(a < b for a, b in itertools.pairwise(seen))


async def test_parse_documents_stops_at_the_first_bad_document() -> None:
    good = "derived_A44_FR_2024-10-07_dayahead.xml"
    body = (DATA / good).read_bytes()
    with pytest.raises(DocumentError) as raised:
        await parse_documents([(good, body), ("broken.xml", body[:200]), ("never.xml", b"")])
    assert raised.value.document == "broken.xml" and "malformed XML" in raised.value.problem
