"""Resampling price, flow and capacity series to 15 minutes or one hour: time-weighted mean to a coarser
step, the value repeated to a finer one, a target slot only when its source slots cover it completely,
sequences never averaged together. Expected numbers are worked out by hand from the documents."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.market import FlowSeries, MarketDocument, PriceSeries, Product, Slot
from services.market.documents import parse_document
from services.market.resample import HOUR, QUARTER_HOUR, Aggregation, AnalyticsError, aggregation_for, resample

DATA = Path(__file__).parent / "data"
NL = "10YNL----------L"


def _doc(name: str) -> MarketDocument:
    return parse_document((DATA / name).read_bytes(), name)


def _series(name: str, sequence: int = 1, resolution: timedelta | None = None) -> PriceSeries:
    found = [
        s for s in _doc(name).prices if s.sequence == sequence and (resolution is None or s.resolution == resolution)
    ]
    assert len(found) == 1
    return found[0]


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def _prices(start: datetime, step: timedelta, values: list[float | None]) -> PriceSeries:
    slots = tuple(Slot(start + i * step, v) for i, v in enumerate(values) if v is not None)
    return PriceSeries(zone=NL, product=Product.DAY_AHEAD, resolution=step, slots=slots)


def test_the_aggregation_is_named_by_the_steps() -> None:
    assert aggregation_for(QUARTER_HOUR, HOUR) is Aggregation.TIME_WEIGHTED_MEAN
    assert aggregation_for(timedelta(minutes=30), HOUR) is Aggregation.TIME_WEIGHTED_MEAN
    assert aggregation_for(HOUR, QUARTER_HOUR) is Aggregation.REPEAT
    assert aggregation_for(HOUR, HOUR) is Aggregation.AS_PUBLISHED


def test_real_quarter_hours_to_hours_are_the_hour_mean_and_stay_in_their_sequence() -> None:
    name = "A44_DE-LU_2024-10-06_07_dayahead_PT60M+PT15M_negative.xml"
    seq2 = resample(_series(name, 2), HOUR)
    assert seq2.sequence == 2 and seq2.resolution == HOUR and len(seq2.slots) == 48
    # (98.1 + 89.5 + 77.21 + 40.09) / 4 and (79.8 + 52.9 + 28.43 - 19.91) / 4
    assert seq2.slots[0] == Slot(_utc(2024, 10, 5, 22), pytest.approx(76.225))
    assert seq2.slots[10].start == _utc(2024, 10, 6, 8)
    assert seq2.slots[10].value == pytest.approx(35.305)
    # Sequence 1 is hourly already and comes back as published, not mixed with sequence 2.
    seq1 = resample(_series(name, 1), HOUR)
    assert seq1 == _series(name, 1)
    assert seq1.slots[0].value == 67.04


def test_real_hours_to_quarter_hours_repeat_the_value_exactly() -> None:
    name = "A44_DE-LU_2024-10-06_07_dayahead_PT60M+PT15M_negative.xml"
    fine = resample(_series(name, 1), QUARTER_HOUR)
    assert len(fine.slots) == 192 and fine.resolution == QUARTER_HOUR
    assert [s.value for s in fine.slots[:5]] == [67.04, 67.04, 67.04, 67.04, 63.97]
    assert [s.start for s in fine.slots[:2]] == [_utc(2024, 10, 5, 22), _utc(2024, 10, 5, 22, 15)]
    assert [s.value for s in fine.slots[52:60]] == [-0.01] * 8  # 11:00-13:00 UTC, both negative hours


def test_half_hours_go_both_ways() -> None:
    ida2 = _series("derived_A44_DE-LU_2024-06-14_intraday_IDA2_PT30M+PT15M.xml", resolution=timedelta(minutes=30))
    assert ida2.product is Product.INTRADAY_AUCTION and ida2.auction == 2
    hourly = resample(ida2, HOUR)
    # (50.5 - 4.25) / 2 and (12.0 + 0.0) / 2
    assert hourly.slots == (Slot(_utc(2024, 6, 14, 10), 23.125), Slot(_utc(2024, 6, 14, 11), 6.0))
    assert hourly.auction == 2 and hourly.product is Product.INTRADAY_AUCTION
    quarters = resample(ida2, QUARTER_HOUR)
    assert [s.value for s in quarters.slots] == [50.5, 50.5, -4.25, -4.25, 12.0, 12.0, 0.0, 0.0]


def test_an_hour_missing_one_quarter_is_a_gap_not_a_mean_of_three() -> None:
    series = _prices(_utc(2025, 1, 1), QUARTER_HOUR, [10.0, 20.0, 30.0, 40.0, 1.0, None, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0])
    hourly = resample(series, HOUR)
    assert hourly.slots == (Slot(_utc(2025, 1, 1, 0), 25.0), Slot(_utc(2025, 1, 1, 2), 5.0))


def test_a_gap_in_hours_stays_a_gap_in_quarter_hours() -> None:
    flows = _doc("derived_A11_FR-DE-LU_2024-10-07_flows_gap.xml").flows
    fr_de = next(f for f in flows if f.out_zone == "10YFR-RTE------C")
    fine = resample(fr_de, QUARTER_HOUR)
    assert isinstance(fine, FlowSeries) and fine.out_zone == "10YFR-RTE------C"
    starts = {s.start for s in fine.slots}
    assert len(fine.slots) == 22 * 4
    assert not any(_utc(2024, 10, 7, 2) <= t < _utc(2024, 10, 7, 4) for t in starts)
    assert fine.slots[4 * 4].start == _utc(2024, 10, 7, 4) and fine.slots[4 * 4].value == 1007.0
    # Zero flows are values, kept as zeros.
    de_fr = next(f for f in flows if f.out_zone == "10Y1001A1001A82H")
    assert [s.value for s in resample(de_fr, HOUR).slots] == [0.0] * 24


def test_slots_off_the_target_grid_only_count_where_they_cover_it() -> None:
    # Half-hour slots starting at :15 cover hour 01:00 completely (00:45-01:15, 01:15-01:45, 01:45-02:15)
    # but hour 00:00 only from 00:15 on: 00:00 is a gap; 01:00 is (10*15 + 20*30 + 30*15) / 60.
    series = _prices(_utc(2025, 1, 1, 0, 15), timedelta(minutes=30), [0.0, 10.0, 20.0, 30.0])
    assert resample(series, HOUR).slots == (Slot(_utc(2025, 1, 1, 1), 20.0),)


def test_dst_days_keep_their_23_and_25_hours() -> None:
    short = resample(_series("derived_A44_DE-LU_2024-03-31_dst_23h.xml"), QUARTER_HOUR)
    long = resample(_series("derived_A44_DE-LU_2024-10-27_dst_25h.xml"), QUARTER_HOUR)
    assert len(short.slots) == 92 and len(long.slots) == 100
    assert long.slots[-1] == Slot(_utc(2024, 10, 27, 22, 45), 250.0)


def test_bad_requests_are_refused_with_the_reason() -> None:
    series = _prices(_utc(2025, 1, 1), HOUR, [1.0])
    with pytest.raises(AnalyticsError, match="step 0:30:00 is not supported"):
        resample(series, timedelta(minutes=30))
    with pytest.raises(AnalyticsError, match="not positive"):
        resample(PriceSeries(NL, Product.DAY_AHEAD, timedelta(0), series.slots), HOUR)
    with pytest.raises(AnalyticsError, match="longer than a day"):
        resample(PriceSeries(NL, Product.DAY_AHEAD, timedelta(days=3650), series.slots), QUARTER_HOUR)
    naive = PriceSeries(NL, Product.DAY_AHEAD, HOUR, (Slot(datetime(2025, 1, 1), 1.0),))
    with pytest.raises(AnalyticsError, match="no time zone"):
        resample(naive, QUARTER_HOUR)
    overlapping = PriceSeries(
        NL, Product.DAY_AHEAD, HOUR, (Slot(_utc(2025, 1, 1), 1.0), Slot(_utc(2025, 1, 1, 0, 30), 2.0))
    )
    with pytest.raises(AnalyticsError, match="overlap at 2025-01-01T00:30:00"):
        resample(overlapping, QUARTER_HOUR)


prices = st.floats(min_value=-500, max_value=4000, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(prices, min_size=96, max_size=96), st.integers(0, 365))
def test_a_complete_day_keeps_its_mean_through_hours_and_back(values: list[float], day: int) -> None:
    start = _utc(2025, 1, 1) + timedelta(days=day)
    quarters = _prices(start, QUARTER_HOUR, list(values))
    hourly = resample(quarters, HOUR)
    assert len(hourly.slots) == 24
    day_mean = sum(values) / 96
    assert sum(s.value for s in hourly.slots) / 24 == pytest.approx(day_mean, abs=1e-6)
    again = resample(hourly, QUARTER_HOUR)
    assert len(again.slots) == 96
    assert sum(s.value for s in again.slots) / 96 == pytest.approx(day_mean, abs=1e-6)
    # Each hour lies between its quarters' extremes.
    for i, hour in enumerate(hourly.slots):
        block = values[4 * i : 4 * i + 4]
        assert min(block) - 1e-9 <= hour.value <= max(block) + 1e-9


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), prices), min_size=96, max_size=96))
def test_an_hour_exists_exactly_when_its_four_quarters_do(values: list[float | None]) -> None:
    start = _utc(2025, 3, 1)
    hourly = resample(_prices(start, QUARTER_HOUR, values), HOUR)
    expected = [start + i * HOUR for i in range(24) if all(v is not None for v in values[4 * i : 4 * i + 4])]
    assert [s.start for s in hourly.slots] == expected
