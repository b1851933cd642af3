"""A zone's market summary at an instant: current price, today's figures in the local day (23/25 hours
on DST days), negative slots, the latest delivery day and staleness. Expected numbers are worked out by
hand from the documents (real ES and DE-LU days, derived DST days) or from hand-built series."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from services.market import MarketDocument, PriceSeries, Product, Slot
from services.market.documents import parse_document
from services.market.resample import AnalyticsError
from services.market.summary import Extreme, PricePoint, PublicationSchedule, summarise, zone_timezone
from services.market.zones import BIDDING_ZONES

DATA = Path(__file__).parent / "data"
ES = "10YES-REE------0"
DE_LU = "10Y1001A1001A82H"
NL = "10YNL----------L"
HOUR = timedelta(hours=1)


def _doc(name: str) -> MarketDocument:
    return parse_document((DATA / name).read_bytes(), name)


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def _hourly(zone: str, start: datetime, values: list[float | None]) -> PriceSeries:
    slots = tuple(Slot(start + i * HOUR, v) for i, v in enumerate(values) if v is not None)
    return PriceSeries(zone=zone, product=Product.DAY_AHEAD, resolution=HOUR, slots=slots)


REDATA = "redata_precios-mercados-tiempo-real_2023-11-29_pvpc+spot.json"
DE_LU_REAL = "A44_DE-LU_2024-10-06_07_dayahead_PT60M+PT15M_negative.xml"


def test_real_spanish_spot_day() -> None:
    summary = summarise(ES, _doc(REDATA).prices, _utc(2023, 11, 29, 10, 30), product=Product.SPOT)
    assert summary.zone_name == "ES" and summary.timezone == "Europe/Madrid"
    assert summary.local_day == date(2023, 11, 29)
    assert summary.current == PricePoint(_utc(2023, 11, 29, 10), _utc(2023, 11, 29, 11), 80.0)
    today = summary.today
    assert today is not None
    assert (today.start, today.end) == (_utc(2023, 11, 28, 23), _utc(2023, 11, 29, 23))
    assert today.slots == 24 and today.complete and today.covered == timedelta(hours=24)
    assert today.minimum == Extreme(57.79, (_utc(2023, 11, 29, 13),))
    assert today.maximum == Extreme(100.28, (_utc(2023, 11, 29, 19),))
    assert today.mean == pytest.approx(2040.11 / 24)
    assert today.negative_slots == 0 and today.negative_intervals == ()
    assert summary.latest_delivery_day == date(2023, 11, 29)
    assert summary.covered_until == _utc(2023, 11, 29, 23)
    assert not summary.stale and summary.stale_since is None


def test_pvpc_is_its_own_product_and_geography() -> None:
    prices = _doc(REDATA).prices
    pvpc = summarise(ES, prices, _utc(2023, 11, 29, 10, 30), product=Product.PVPC, geography="8741")
    assert pvpc.current is not None and pvpc.current.value == 184.95
    # Day-ahead by default: REData carries none, so there is nothing to show, and it is late.
    day_ahead = summarise(ES, prices, _utc(2023, 11, 29, 10, 30))
    assert day_ahead.current is None and day_ahead.today is None and day_ahead.latest_delivery_day is None
    assert day_ahead.stale and day_ahead.stale_since is None


def test_the_next_day_is_due_at_the_expected_publication_time() -> None:
    prices = _doc(REDATA).prices
    # 2023-11-30's prices are due on 2023-11-29 at 13:15 CET = 12:15 UTC.
    on_time = summarise(ES, prices, _utc(2023, 11, 29, 12, 15), product=Product.SPOT)
    assert not on_time.stale
    late = summarise(ES, prices, _utc(2023, 11, 29, 12, 16), product=Product.SPOT)
    assert late.stale and late.stale_since == _utc(2023, 11, 29, 12, 15)
    strict = PublicationSchedule(expected_by=time(12, 45))
    early = summarise(ES, prices, _utc(2023, 11, 29, 11, 50), product=Product.SPOT, schedule=strict)
    assert early.stale and early.stale_since == _utc(2023, 11, 29, 11, 45)
    # Two days later, the first missing day is still the 30th.
    later = summarise(ES, prices, _utc(2023, 12, 1, 9), product=Product.SPOT)
    assert later.stale and later.stale_since == _utc(2023, 11, 29, 12, 15)
    assert later.today is None and later.latest_delivery_day == date(2023, 11, 29)


def test_real_german_day_with_negative_hours_sequence_1() -> None:
    summary = summarise(DE_LU, _doc(DE_LU_REAL).prices, _utc(2024, 10, 6, 11, 30))
    assert summary.current == PricePoint(_utc(2024, 10, 6, 11), _utc(2024, 10, 6, 12), -0.01)
    today = summary.today
    assert today is not None and today.day == date(2024, 10, 6)
    assert (today.start, today.end) == (_utc(2024, 10, 5, 22), _utc(2024, 10, 6, 22))
    assert today.minimum == Extreme(-0.01, (_utc(2024, 10, 6, 11), _utc(2024, 10, 6, 12)))
    assert today.maximum == Extreme(106.3, (_utc(2024, 10, 6, 16),))
    assert today.mean == pytest.approx(1317.55 / 24)
    assert today.negative_slots == 2
    assert today.negative_intervals == ((_utc(2024, 10, 6, 11), _utc(2024, 10, 6, 13)),)
    assert summary.latest_delivery_day == date(2024, 10, 7)
    assert not summary.stale


def test_real_german_day_sequence_2_is_never_mixed_with_sequence_1() -> None:
    summary = summarise(DE_LU, _doc(DE_LU_REAL).prices, _utc(2024, 10, 6, 11, 30), sequence=2)
    assert summary.sequence == 2
    # Slot i starts at 2024-10-05 22:00 UTC + 15 min * i; 11:30 UTC is slot 54.
    assert summary.current == PricePoint(_utc(2024, 10, 6, 11, 30), _utc(2024, 10, 6, 11, 45), -13.21)
    today = summary.today
    assert today is not None and today.slots == 96 and today.complete
    assert today.minimum == Extreme(-29.91, (_utc(2024, 10, 6, 10, 45), _utc(2024, 10, 6, 13)))  # slots 51, 60
    assert today.maximum == Extreme(144.92, (_utc(2024, 10, 6, 15, 45),))  # slot 71
    # Slots 43, 47, 50-51, 54-57, 60-61 and 64.
    assert today.negative_slots == 11
    assert today.negative_intervals == (
        (_utc(2024, 10, 6, 8, 45), _utc(2024, 10, 6, 9)),
        (_utc(2024, 10, 6, 9, 45), _utc(2024, 10, 6, 10)),
        (_utc(2024, 10, 6, 10, 30), _utc(2024, 10, 6, 11)),
        (_utc(2024, 10, 6, 11, 30), _utc(2024, 10, 6, 12, 30)),
        (_utc(2024, 10, 6, 13), _utc(2024, 10, 6, 13, 30)),
        (_utc(2024, 10, 6, 14), _utc(2024, 10, 6, 14, 15)),
    )


def test_spring_dst_day_has_23_hours_and_the_next_day_is_late() -> None:
    prices = _doc("derived_A44_DE-LU_2024-03-31_dst_23h.xml").prices
    summary = summarise(DE_LU, prices, _utc(2024, 3, 31, 12))
    today = summary.today
    assert today is not None and today.day == date(2024, 3, 31)
    assert (today.start, today.end) == (_utc(2024, 3, 30, 23), _utc(2024, 3, 31, 22))
    assert today.slots == 23 and today.complete and today.covered == timedelta(hours=23)
    assert today.mean == pytest.approx(120.0)  # 10, 20, ... 230
    assert summary.current is not None and summary.current.value == 140.0  # 14:00 CEST
    # 2024-04-01 was due on 2024-03-31 at 13:15 CEST = 11:15 UTC.
    assert summary.stale and summary.stale_since == _utc(2024, 3, 31, 11, 15)


def test_autumn_dst_day_has_25_hours() -> None:
    prices = _doc("derived_A44_DE-LU_2024-10-27_dst_25h.xml").prices
    # 01:30 UTC is 02:30 CET, the second pass through the repeated hour: the fourth slot.
    summary = summarise(DE_LU, prices, _utc(2024, 10, 27, 1, 30))
    assert summary.current == PricePoint(_utc(2024, 10, 27, 1), _utc(2024, 10, 27, 2), 40.0)
    today = summary.today
    assert today is not None and today.day == date(2024, 10, 27)
    assert (today.start, today.end) == (_utc(2024, 10, 26, 22), _utc(2024, 10, 27, 23))
    assert today.slots == 25 and today.complete
    assert today.mean == pytest.approx(130.0)  # 10, 20, ... 250
    assert today.maximum == Extreme(250.0, (_utc(2024, 10, 27, 22),))


def test_autumn_dst_day_in_spain_pvpc() -> None:
    prices = _doc("derived_esios_1001_2024-10-27_dst_25h.json").prices
    summary = summarise(ES, prices, _utc(2024, 10, 27, 12), product=Product.PVPC, geography="8741")
    today = summary.today
    assert today is not None and today.slots == 25 and today.complete
    assert today.mean == pytest.approx(112.0)  # 100 ... 124
    assert today.minimum == Extreme(100.0, (_utc(2024, 10, 26, 22),))
    assert today.maximum == Extreme(124.0, (_utc(2024, 10, 27, 22),))


def test_a_gap_is_not_a_price() -> None:
    values: list[float | None] = [50.0] * 24
    values[2], values[3], values[5] = -10.0, -5.0, None
    series = _hourly(NL, _utc(2025, 1, 14, 23), values)
    summary = summarise(NL, [series], _utc(2025, 1, 15, 4, 30))  # 05:30 CET, the missing hour
    assert summary.current is None
    today = summary.today
    assert today is not None and today.slots == 23 and not today.complete
    assert today.covered == timedelta(hours=23)
    assert today.mean == pytest.approx(45.0)  # (21 * 50 - 10 - 5) / 23
    assert today.negative_slots == 2
    assert today.negative_intervals == ((_utc(2025, 1, 15, 1), _utc(2025, 1, 15, 3)),)
    assert today.minimum == Extreme(-10.0, (_utc(2025, 1, 15, 1),))


def test_the_mean_is_weighted_by_time_when_resolutions_mix() -> None:
    hours = _hourly(NL, _utc(2025, 1, 14, 23), [40.0] * 12)
    quarter = timedelta(minutes=15)
    quarters = PriceSeries(
        NL,
        Product.DAY_AHEAD,
        quarter,
        tuple(Slot(_utc(2025, 1, 15, 11) + i * quarter, 100.0) for i in range(48)),
    )
    today = summarise(NL, [hours, quarters], _utc(2025, 1, 15, 12)).today
    assert today is not None and today.slots == 60 and today.complete
    assert today.mean == pytest.approx(70.0)  # 12 h at 40 and 12 h at 100, not (12*40 + 48*100) / 60


def test_a_day_stored_twice_counts_once_and_conflicting_prices_are_refused() -> None:
    series = _hourly(NL, _utc(2025, 1, 14, 23), [10.0] * 24)
    twice = summarise(NL, [series, series], _utc(2025, 1, 15, 6)).today
    assert twice is not None and twice.slots == 24
    other = _hourly(NL, _utc(2025, 1, 15, 6), [11.0])
    with pytest.raises(AnalyticsError, match="two prices for 2025-01-15T06:00:00"):
        summarise(NL, [series, other], _utc(2025, 1, 15, 6))


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(AnalyticsError, match="no time zone"):
        summarise(NL, [], datetime(2025, 1, 15, 6))
    with pytest.raises(AnalyticsError, match="not a known bidding zone"):
        summarise("10YDOM-REGION-1V", [], _utc(2025, 1, 15, 6))
    # An explicit time zone serves a zone EMMA does not list.
    summary = summarise("10YDOM-REGION-1V", [], _utc(2025, 1, 15, 23, 30), timezone=ZoneInfo("Europe/Berlin"))
    assert summary.local_day == date(2025, 1, 16)


def test_every_listed_bidding_zone_has_a_local_day() -> None:
    assert str(zone_timezone(ES)) == "Europe/Madrid"
    assert str(zone_timezone("10YPT-REN------W")) == "Europe/Lisbon"
    assert str(zone_timezone("10Y1001A1001A73I")) == "Europe/Rome"  # IT-North
    assert str(zone_timezone("10Y1001A1001A48H")) == "Europe/Oslo"  # NO5
    assert str(zone_timezone("10Y1001A1001A46L")) == "Europe/Stockholm"  # SE3
    assert str(zone_timezone("10YFI-1--------U")) == "Europe/Helsinki"
    assert all(zone_timezone(code).key.startswith("Europe/") for code in BIDDING_ZONES)
