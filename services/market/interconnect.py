"""Cross-border interconnection analytics: hourly utilisation of a border and the warnings it raises.

A border is an ordered zone pair `out_zone -> in_zone` (ENTSO-E's direction). Per hour:

- flows and forecasted transfer capacities are resampled to the hour first (time-weighted mean MW,
  `services/market/resample.py`); an hour missing in either stays a gap: no utilisation, never 0;
- utilisation = physical flow / forecasted transfer capacity; a capacity of 0 (or below) gives no
  utilisation rather than a division error or an infinite value;
- the day-ahead spread = in-zone price - out-zone price (hourly mean of each side's sequence-1
  day-ahead prices); its size is what the spread warning compares.

Warnings, one per border, kind and delivery day (the day-ahead market's day, CET):

- SATURATION: utilisation >= `saturation_threshold` (0.90 by default, so exactly 90 % warns);
- PRICE_SPREAD: |spread| > `spread_threshold_eur_mwh` (strictly above);
- DECOUPLING: both in the same hours, "ES-FR interconnection saturated, price decoupling likely".

A warning carries its evidence (the hours, utilisation, flow, capacity and both prices, and the
thresholds) and a stable key (border, kind, delivery day): computing it twice from the same data gives
the same key and the same warning, so storing it by key is idempotent.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Final
from zoneinfo import ZoneInfo

from core.env import env_float
from core.errors import ConfigError
from services.market.model import CapacitySeries, FlowSeries, PriceSeries, Product
from services.market.resample import HOUR, AnalyticsError, resample_slots
from services.market.zones import zone_name

# The day-ahead market's delivery day (SDAC) is the CET/CEST day, whatever the zones' own time.
MARKET_DAY_TZ: Final = "Europe/Brussels"


class MarketConfigError(ConfigError):
    """An EMMA_MARKET_* analytics setting that cannot be used."""


DEFAULT_SATURATION_THRESHOLD: Final = 0.90
DEFAULT_SPREAD_THRESHOLD_EUR_MWH: Final = 20.0


@dataclass(frozen=True, slots=True)
class InterconnectConfig:
    saturation_threshold: float = DEFAULT_SATURATION_THRESHOLD  # utilisation at or above which a border is saturated
    spread_threshold_eur_mwh: float = DEFAULT_SPREAD_THRESHOLD_EUR_MWH  # |spread| above which prices decoupled

    def __post_init__(self) -> None:
        # Built by code as well as from the environment: a NaN threshold would silently never warn.
        if not (0.0 < self.saturation_threshold < math.inf):
            raise MarketConfigError(f"saturation_threshold={self.saturation_threshold} must be a finite number above 0")
        if not (0.0 <= self.spread_threshold_eur_mwh < math.inf):
            raise MarketConfigError(
                f"spread_threshold_eur_mwh={self.spread_threshold_eur_mwh} must be a finite number of at least 0"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> InterconnectConfig:
        """EMMA_MARKET_SATURATION_THRESHOLD (a fraction above 0, 0.90 = 90 %) and
        EMMA_MARKET_SPREAD_THRESHOLD_EUR_MWH (at least 0); MarketConfigError naming the variable."""
        saturation = _finite(env, "EMMA_MARKET_SATURATION_THRESHOLD", DEFAULT_SATURATION_THRESHOLD)
        if saturation <= 0.0:
            # 0 would call every border saturated, even one carrying nothing.
            raise MarketConfigError(f"EMMA_MARKET_SATURATION_THRESHOLD={saturation} must be above 0")
        spread = _finite(env, "EMMA_MARKET_SPREAD_THRESHOLD_EUR_MWH", DEFAULT_SPREAD_THRESHOLD_EUR_MWH)
        return cls(saturation_threshold=saturation, spread_threshold_eur_mwh=spread)


def _finite(env: Mapping[str, str], name: str, default: float) -> float:
    value = env_float(env, name, default, 0.0, error=MarketConfigError)  # refuses NaN and negatives
    if math.isinf(value):
        raise MarketConfigError(f"{name}={value} must be a finite number")
    return value


@dataclass(frozen=True, slots=True, order=True)
class Border:
    out_zone: str  # EIC
    in_zone: str  # EIC

    @property
    def name(self) -> str:
        """Short names, "ES-FR" for ES -> FR."""
        return f"{zone_name(self.out_zone)}-{zone_name(self.in_zone)}"


class WarningKind(enum.Enum):
    SATURATION = "saturation"
    PRICE_SPREAD = "price-spread"
    DECOUPLING = "decoupling"  # saturation and price spread in the same hours


@dataclass(frozen=True, slots=True)
class BorderHour:
    """One hour `[start, start + 1 h)` of a border; None where the data has a gap."""

    start: datetime
    flow_mw: float | None
    capacity_mw: float | None
    utilisation: float | None  # None in a gap of either series or when capacity <= 0
    out_price: float | None  # day-ahead, EUR/MWh
    in_price: float | None
    spread: float | None  # in_price - out_price


@dataclass(frozen=True, slots=True, order=True)
class WarningKey:
    border: Border
    kind: str  # WarningKind value, a string so keys sort and store plainly
    delivery_day: date

    def __str__(self) -> str:
        return f"{self.border.out_zone}>{self.border.in_zone}:{self.kind}:{self.delivery_day.isoformat()}"


@dataclass(frozen=True, slots=True)
class BorderWarning:
    key: WarningKey
    message: str
    hours: tuple[BorderHour, ...]  # the hours the condition holds, in time order
    saturation_threshold: float
    spread_threshold_eur_mwh: float


def border_hours(
    flow: FlowSeries | None,
    capacity: CapacitySeries | None,
    out_prices: PriceSeries | None = None,
    in_prices: PriceSeries | None = None,
) -> tuple[BorderHour, ...]:
    """The border's hours: every hour any of the series gives after resampling to the hour, each
    field None where its series has a gap. The series must describe one border (flow and capacity in
    the same direction, prices of its out and in zone, day-ahead); AnalyticsError otherwise."""
    border = _border_of(flow, capacity, out_prices, in_prices)
    for side, prices, zone in (("out", out_prices, border.out_zone), ("in", in_prices, border.in_zone)):
        if prices is None:
            continue
        if prices.zone != zone:
            raise AnalyticsError(f"{side}-zone prices are for {prices.zone}, the border's {side} zone is {zone}")
        if prices.product is not Product.DAY_AHEAD:
            raise AnalyticsError(f"{side}-zone prices are {prices.product.name}, the spread uses DAY_AHEAD")
    flows = _hourly(flow)
    capacities = _hourly(capacity)
    outs = _hourly(out_prices)
    ins = _hourly(in_prices)
    hours: list[BorderHour] = []
    for start in sorted(set(flows) | set(capacities) | set(outs) | set(ins)):
        f = flows.get(start)
        c = capacities.get(start)
        o = outs.get(start)
        i = ins.get(start)
        hours.append(
            BorderHour(
                start=start,
                flow_mw=f,
                capacity_mw=c,
                utilisation=f / c if f is not None and c is not None and c > 0 else None,
                out_price=o,
                in_price=i,
                spread=i - o if i is not None and o is not None else None,
            )
        )
    return tuple(hours)


def border_warnings(
    border: Border, hours: tuple[BorderHour, ...], config: InterconnectConfig | None = None
) -> tuple[BorderWarning, ...]:
    """The border's warnings per delivery day (CET), sorted by key; none when no hour qualifies."""
    cfg = config if config is not None else InterconnectConfig()
    market_tz = ZoneInfo(MARKET_DAY_TZ)
    saturated = [h for h in hours if h.utilisation is not None and h.utilisation >= cfg.saturation_threshold]
    spread = [h for h in hours if h.spread is not None and abs(h.spread) > cfg.spread_threshold_eur_mwh]
    spread_starts = {h.start for h in spread}
    both = [h for h in saturated if h.start in spread_starts]
    name = border.name
    pct = f"{cfg.saturation_threshold * 100:g} %"
    texts = {
        WarningKind.SATURATION: f"{name} interconnection saturated (utilisation at or above {pct})",
        WarningKind.PRICE_SPREAD: (
            f"{name} day-ahead price spread above {cfg.spread_threshold_eur_mwh:g} EUR/MWh, prices decoupled"
        ),
        WarningKind.DECOUPLING: f"{name} interconnection saturated, price decoupling likely",
    }
    warnings: list[BorderWarning] = []
    for kind, qualifying in (
        (WarningKind.SATURATION, saturated),
        (WarningKind.PRICE_SPREAD, spread),
        (WarningKind.DECOUPLING, both),
    ):
        by_day: dict[date, list[BorderHour]] = {}
        for h in qualifying:
            by_day.setdefault(h.start.astimezone(market_tz).date(), []).append(h)
        for day, day_hours in by_day.items():
            warnings.append(
                BorderWarning(
                    key=WarningKey(border, kind.value, day),
                    message=texts[kind],
                    hours=tuple(sorted(day_hours, key=lambda h: h.start)),
                    saturation_threshold=cfg.saturation_threshold,
                    spread_threshold_eur_mwh=cfg.spread_threshold_eur_mwh,
                )
            )
    warnings.sort(key=lambda w: w.key)
    return tuple(warnings)


def assess_border(
    flow: FlowSeries | None,
    capacity: CapacitySeries | None,
    out_prices: PriceSeries | None,
    in_prices: PriceSeries | None,
    config: InterconnectConfig | None = None,
) -> tuple[tuple[BorderHour, ...], tuple[BorderWarning, ...]]:
    """`border_hours` and `border_warnings` in one call."""
    border = _border_of(flow, capacity, out_prices, in_prices)
    hours = border_hours(flow, capacity, out_prices, in_prices)
    return hours, border_warnings(border, hours, config)


def _border_of(
    flow: FlowSeries | None,
    capacity: CapacitySeries | None,
    out_prices: PriceSeries | None,
    in_prices: PriceSeries | None,
) -> Border:
    if (
        flow is not None
        and capacity is not None
        and (flow.out_zone, flow.in_zone)
        != (
            capacity.out_zone,
            capacity.in_zone,
        )
    ):
        raise AnalyticsError(
            f"flow {flow.out_zone}->{flow.in_zone} and capacity {capacity.out_zone}->{capacity.in_zone} "
            "are not the same border and direction"
        )
    directed = flow if flow is not None else capacity
    if directed is not None:
        return Border(directed.out_zone, directed.in_zone)
    if out_prices is not None and in_prices is not None:
        return Border(out_prices.zone, in_prices.zone)
    raise AnalyticsError("a border needs a flow or capacity series, or the prices of both zones")


def _hourly(series: FlowSeries | CapacitySeries | PriceSeries | None) -> dict[datetime, float]:
    if series is None:
        return {}
    return {slot.start.astimezone(UTC): slot.value for slot in resample_slots(series.slots, series.resolution, HOUR)}
