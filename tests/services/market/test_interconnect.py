"""Border utilisation and warnings: flows and capacities resampled to the hour, a gap or a capacity of 0
gives no utilisation, saturation at exactly the threshold warns, a spread at exactly its threshold does
not, the combined "saturated, price decoupling likely" warning, stable keys, the EMMA_* settings.
Expected numbers are worked out by hand."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from core.errors import ConfigError
from services.market import CapacitySeries, FlowSeries, PriceSeries, Product, Slot
from services.market.documents import parse_document
from services.market.interconnect import (
    Border,
    BorderHour,
    InterconnectConfig,
    MarketConfigError,
    WarningKey,
    assess_border,
    border_hours,
    border_warnings,
)
from services.market.resample import AnalyticsError

DATA = Path(__file__).parent / "data"
ES = "10YES-REE------0"
FR = "10YFR-RTE------C"
PT = "10YPT-REN------W"
DE_LU = "10Y1001A1001A82H"
HOUR = timedelta(hours=1)
QUARTER = timedelta(minutes=15)
# The CET delivery day 2024-10-07 starts at 2024-10-06 22:00 UTC.
T0 = datetime(2024, 10, 6, 22, tzinfo=UTC)


def _slots(start: datetime, step: timedelta, values: list[float | None]) -> tuple[Slot, ...]:
    return tuple(Slot(start + i * step, v) for i, v in enumerate(values) if v is not None)


def _prices(zone: str, values: list[float]) -> PriceSeries:
    return PriceSeries(zone=zone, product=Product.DAY_AHEAD, resolution=HOUR, slots=_slots(T0, HOUR, list(values)))


def _es_fr() -> tuple[FlowSeries, CapacitySeries, PriceSeries, PriceSeries]:
    # Flow in quarter hours: hour 0 averages (2600 + 2800 + 2700 + 2700) / 4 = 2700; hour 3 lacks a quarter.
    flow = FlowSeries(
        ES,
        FR,
        QUARTER,
        _slots(
            T0,
            QUARTER,
            [2600, 2800, 2700, 2700] + [2699] * 4 + [0] * 4 + [1500, None, 1500, 1500] + [3000] * 4,
        ),
    )
    capacity = CapacitySeries(ES, FR, HOUR, _slots(T0, HOUR, [3000, 3000, 0, 3000, 3000]))
    es = _prices(ES, [40, 40, 50, 50, 50])
    fr = _prices(FR, [80, 80, 70, 50, 60])
    return flow, capacity, es, fr


def test_hours_carry_utilisation_spread_and_gaps() -> None:
    hours = border_hours(*_es_fr())
    assert hours == (
        BorderHour(T0, 2700.0, 3000.0, 0.9, 40.0, 80.0, 40.0),
        BorderHour(T0 + HOUR, 2699.0, 3000.0, 2699 / 3000, 40.0, 80.0, 40.0),
        BorderHour(T0 + 2 * HOUR, 0.0, 0.0, None, 50.0, 70.0, 20.0),  # capacity 0: no utilisation
        BorderHour(T0 + 3 * HOUR, None, 3000.0, None, 50.0, 50.0, 0.0),  # a flow gap: no utilisation, not 0
        BorderHour(T0 + 4 * HOUR, 3000.0, 3000.0, 1.0, 50.0, 60.0, 10.0),
    )


def test_warnings_saturation_spread_and_the_combined_message() -> None:
    flow, capacity, es, fr = _es_fr()
    hours, warnings = assess_border(flow, capacity, es, fr)
    border = Border(ES, FR)
    assert border.name == "ES-FR"
    day = date(2024, 10, 7)
    assert [w.key for w in warnings] == [
        WarningKey(border, "decoupling", day),
        WarningKey(border, "price-spread", day),
        WarningKey(border, "saturation", day),
    ]
    decoupling, spread, saturation = warnings
    assert decoupling.message == "ES-FR interconnection saturated, price decoupling likely"
    assert decoupling.hours == (hours[0],)
    # 90 % exactly saturates (hour 0); 89.97 % does not (hour 1); 100 % does (hour 4).
    assert [h.start for h in saturation.hours] == [T0, T0 + 4 * HOUR]
    assert [h.utilisation for h in saturation.hours] == [0.9, 1.0]
    assert saturation.message == "ES-FR interconnection saturated (utilisation at or above 90 %)"
    # A spread of 40 exceeds 20; a spread of exactly 20 (hour 2) does not.
    assert [h.start for h in spread.hours] == [T0, T0 + HOUR]
    assert (spread.hours[0].out_price, spread.hours[0].in_price) == (40.0, 80.0)
    assert all((w.saturation_threshold, w.spread_threshold_eur_mwh) == (0.9, 20.0) for w in warnings)
    assert str(decoupling.key) == f"{ES}>{FR}:decoupling:2024-10-07"


def test_computing_twice_gives_the_same_keys_and_warnings() -> None:
    first = assess_border(*_es_fr())[1]
    second = assess_border(*_es_fr())[1]
    assert first == second
    stored = {w.key: w for w in first + second}
    assert len(stored) == 3


def test_thresholds_are_configurable() -> None:
    config = InterconnectConfig(saturation_threshold=0.95, spread_threshold_eur_mwh=19.5)
    flow, capacity, es, fr = _es_fr()
    warnings = assess_border(flow, capacity, es, fr, config)[1]
    by_kind = {w.key.kind: w for w in warnings}
    assert [h.start for h in by_kind["saturation"].hours] == [T0 + 4 * HOUR]
    assert [h.start for h in by_kind["price-spread"].hours] == [T0, T0 + HOUR, T0 + 2 * HOUR]
    assert "decoupling" not in by_kind  # hour 4's spread is 10
    assert by_kind["saturation"].saturation_threshold == 0.95


def test_warnings_split_by_cet_delivery_day() -> None:
    border = Border(ES, FR)
    late = BorderHour(datetime(2024, 10, 7, 21, tzinfo=UTC), 950.0, 1000.0, 0.95, None, None, None)
    next_day = BorderHour(datetime(2024, 10, 7, 22, tzinfo=UTC), 990.0, 1000.0, 0.99, None, None, None)
    warnings = border_warnings(border, (late, next_day))
    assert [(w.key.delivery_day, w.hours) for w in warnings] == [
        (date(2024, 10, 7), (late,)),
        (date(2024, 10, 8), (next_day,)),
    ]


def test_derived_capacity_document_saturates_at_exactly_90_percent() -> None:
    name = "derived_A61_ES-PT_2024-10-07_capacity.xml"
    (capacity,) = parse_document((DATA / name).read_bytes(), name).capacities
    flow = FlowSeries(ES, PT, HOUR, _slots(T0, HOUR, [3510.0] * 24))
    hours, warnings = assess_border(flow, capacity, None, None)
    # 3510 / 4200 is 83.6 % for the first 8 hours, 3510 / 3900 is exactly 90 % from 06:00 UTC on.
    assert [h.utilisation for h in hours[:8]] == [3510 / 4200] * 8
    assert [w.key for w in warnings] == [WarningKey(Border(ES, PT), "saturation", date(2024, 10, 7))]
    assert [h.start for h in warnings[0].hours] == [datetime(2024, 10, 7, h, tzinfo=UTC) for h in range(6, 22)]
    assert warnings[0].message == "ES-PT interconnection saturated (utilisation at or above 90 %)"


def test_derived_flow_gap_gives_no_hours_there() -> None:
    name = "derived_A11_FR-DE-LU_2024-10-07_flows_gap.xml"
    flow = next(f for f in parse_document((DATA / name).read_bytes(), name).flows if f.out_zone == FR)
    capacity = CapacitySeries(FR, DE_LU, HOUR, _slots(T0, HOUR, [1001.0] * 24))
    hours = border_hours(flow, capacity)
    assert len(hours) == 24
    gap = [h for h in hours if h.flow_mw is None]
    assert [h.start for h in gap] == [datetime(2024, 10, 7, 2, tzinfo=UTC), datetime(2024, 10, 7, 3, tzinfo=UTC)]
    assert all(h.utilisation is None and h.capacity_mw == 1001.0 for h in gap)
    assert hours[0].utilisation == 1.0  # 1001 / 1001
    assert [w.key.kind for w in assess_border(flow, capacity, None, None)[1]] == ["saturation"]


def test_series_of_different_borders_are_refused() -> None:
    flow, capacity, es, fr = _es_fr()
    reverse = CapacitySeries(FR, ES, HOUR, capacity.slots)
    with pytest.raises(AnalyticsError, match="not the same border"):
        border_hours(flow, reverse)
    with pytest.raises(AnalyticsError, match="in-zone prices are for 10YES-REE------0"):
        border_hours(flow, capacity, es, es)
    intraday = PriceSeries(FR, Product.INTRADAY_AUCTION, HOUR, fr.slots, auction=1)
    with pytest.raises(AnalyticsError, match="INTRADAY_AUCTION"):
        border_hours(flow, capacity, es, intraday)
    with pytest.raises(AnalyticsError, match="needs a flow or capacity"):
        border_hours(None, None, es, None)


def test_config_from_env() -> None:
    assert InterconnectConfig.from_env({}) == InterconnectConfig(0.9, 20.0)
    env = {"EMMA_MARKET_SATURATION_THRESHOLD": "0.95", "EMMA_MARKET_SPREAD_THRESHOLD_EUR_MWH": "35.5"}
    assert InterconnectConfig.from_env(env) == InterconnectConfig(0.95, 35.5)
    assert InterconnectConfig.from_env({"EMMA_MARKET_SPREAD_THRESHOLD_EUR_MWH": "0"}).spread_threshold_eur_mwh == 0


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("EMMA_MARKET_SATURATION_THRESHOLD", "ninety", "EMMA_MARKET_SATURATION_THRESHOLD='ninety' is not a number"),
        ("EMMA_MARKET_SATURATION_THRESHOLD", "0", "EMMA_MARKET_SATURATION_THRESHOLD=0.0 must be above 0"),
        ("EMMA_MARKET_SATURATION_THRESHOLD", "nan", "EMMA_MARKET_SATURATION_THRESHOLD=nan must be at least 0"),
        ("EMMA_MARKET_SPREAD_THRESHOLD_EUR_MWH", "-5", "EMMA_MARKET_SPREAD_THRESHOLD_EUR_MWH=-5.0 must be at least 0"),
        ("EMMA_MARKET_SPREAD_THRESHOLD_EUR_MWH", "inf", "EMMA_MARKET_SPREAD_THRESHOLD_EUR_MWH=inf must be a finite"),
        ("EMMA_MARKET_SATURATION_THRESHOLD", "1e999", "EMMA_MARKET_SATURATION_THRESHOLD=inf must be a finite"),
    ],
)
def test_bad_settings_name_the_variable(name: str, value: str, problem: str) -> None:
    with pytest.raises(MarketConfigError) as caught:
        InterconnectConfig.from_env({name: value})
    assert isinstance(caught.value, ConfigError)
    assert problem in str(caught.value)


@pytest.mark.parametrize(
    ("saturation", "spread"), [(float("nan"), 20.0), (0.0, 20.0), (0.9, float("nan")), (0.9, -1.0), (0.9, float("inf"))]
)
def test_a_config_built_by_code_is_checked_too(saturation: float, spread: float) -> None:
    with pytest.raises(MarketConfigError, match="must be a finite number"):
        InterconnectConfig(saturation_threshold=saturation, spread_threshold_eur_mwh=spread)
