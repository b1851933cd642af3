"""The optimizer's inputs: a site or a community over 15-minute slots, as typed, validated values.

Power is in kW (positive = the direction the name says), energy in kWh, prices in EUR/kWh, carbon in
kg CO2/kWh. Slot t covers [start + 15 min * t, start + 15 min * (t + 1)). Every per-slot series has one
value per slot. Validation happens when a Problem is built, so the model can trust what it is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum

from services.optimizer.errors import OptimizerInputError

SLOT = timedelta(minutes=15)
SLOT_H = 0.25
MAX_SLOTS = 4 * 72
MAX_ASSETS = 2_000


class Objective(Enum):
    """What a run minimises."""

    COST = "cost"
    # cost + carbon price x emissions of imported energy (carbon intensity per slot)
    COST_AND_CARBON = "cost_and_carbon"
    # imported energy; cost only breaks ties (weight 1e-3), so a plan is still sensible about prices
    SELF_CONSUMPTION = "self_consumption"


# Self-consumption minimises imported energy; cost breaks ties with this weight (both models use it).
SELF_CONSUMPTION_COST_WEIGHT = 1e-3


@dataclass(frozen=True)
class Prices:
    """Import = (market + network + tax) x (1 + VAT); export = feed-in. Either may be negative."""

    market_eur_per_kwh: tuple[float, ...]
    feed_in_eur_per_kwh: tuple[float, ...]
    network_eur_per_kwh: float = 0.0
    tax_eur_per_kwh: float = 0.0
    vat_rate: float = 0.0
    # kg CO2 per kWh imported, per slot; empty = unknown (COST_AND_CARBON then refuses)
    carbon_kg_per_kwh: tuple[float, ...] = ()
    carbon_eur_per_kg: float = 0.0

    def import_eur_per_kwh(self, t: int) -> float:
        return (self.market_eur_per_kwh[t] + self.network_eur_per_kwh + self.tax_eur_per_kwh) * (1.0 + self.vat_rate)


@dataclass(frozen=True)
class Battery:
    name: str
    site: str
    capacity_kwh: float
    soc_kwh: float  # measured at the start of slot 0
    max_charge_kw: float
    max_discharge_kw: float
    charge_efficiency: float = 0.95
    discharge_efficiency: float = 0.95
    min_soc_kwh: float = 0.0
    # kept for outages; below it only if the battery starts below it (then it may not fall further)
    reserve_kwh: float = 0.0
    max_soc_kwh: float | None = None  # default: capacity
    terminal_soc_kwh: float | None = None  # at least this much at the end of the horizon
    stored_value_eur_per_kwh: float = 0.0  # what a kWh left at the end is worth
    degradation_eur_per_kwh: float = 0.0  # per kWh of throughput (charged + discharged)


@dataclass(frozen=True)
class PvArray:
    name: str
    site: str
    forecast_kw: tuple[float, ...]
    curtailable: bool = True


@dataclass(frozen=True)
class EvCharger:
    """A car plugged in at slot `arrival_slot` that must hold `energy_kwh` more before `departure_slot`."""

    name: str
    site: str
    energy_kwh: float
    arrival_slot: int
    departure_slot: int  # exclusive: the car leaves at the start of this slot
    max_kw: float
    min_kw: float = 0.0  # a charger that charges at all charges at least this (IEC 61851: 6 A)


@dataclass(frozen=True)
class FlexibleLoad:
    """`energy_kwh` to consume within [window_start_slot, window_end_slot), at most `max_kw`."""

    name: str
    site: str
    energy_kwh: float
    window_start_slot: int
    window_end_slot: int
    max_kw: float


@dataclass(frozen=True)
class Site:
    name: str
    load_kw: tuple[float, ...]  # fixed load forecast
    import_limit_kw: float
    export_limit_kw: float
    peak_eur_per_kw: float = 0.0  # demand charge on the highest 15-min import, for this horizon
    billed_peak_kw: float = 0.0  # the peak already reached this billing period (charged only above it)


@dataclass(frozen=True)
class SharedConnection:
    """One grid connection behind which all sites sit: limits on their net exchange."""

    import_limit_kw: float
    export_limit_kw: float
    peak_eur_per_kw: float = 0.0
    billed_peak_kw: float = 0.0


@dataclass(frozen=True)
class Problem:
    start: datetime
    slots: int
    prices: Prices
    sites: tuple[Site, ...]
    batteries: tuple[Battery, ...] = ()
    pv: tuple[PvArray, ...] = ()
    evs: tuple[EvCharger, ...] = ()
    flexible_loads: tuple[FlexibleLoad, ...] = ()
    shared: SharedConnection | None = None
    objective: Objective = Objective.COST
    time_limit_s: float = 10.0
    mip_gap: float = 1e-6
    names: frozenset[str] = field(init=False, repr=False, compare=False, default=frozenset())

    def __post_init__(self) -> None:
        validate(self)

    def slot_label(self, t: int) -> str:
        """A slot boundary as HH:MM (UTC) for messages; with the date when the horizon crosses one."""
        when = self.start + SLOT * t
        if (self.start + SLOT * self.slots).date() != self.start.date() or when.date() != self.start.date():
            return when.strftime("%Y-%m-%d %H:%M")
        return when.strftime("%H:%M")


def _num(where: str, value: float, low: float = -math.inf, high: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise OptimizerInputError(where, f"must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise OptimizerInputError(where, f"must be in [{low:g}, {high:g}], got {value:g}")


def _series(where: str, values: tuple[float, ...], slots: int, low: float = -math.inf) -> None:
    if len(values) != slots:
        raise OptimizerInputError(where, f"must have one value per slot ({slots}), got {len(values)}")
    for i, v in enumerate(values):
        _num(f"{where}[{i}]", v, low)


def _slot(where: str, value: int, slots: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= slots:
        raise OptimizerInputError(where, f"must be a slot index in 0..{slots}, got {value!r}")


def validate(p: Problem) -> None:
    """Refuse inputs no model should be built from, naming the field."""
    if p.start.tzinfo is None:
        raise OptimizerInputError("start", "must be timezone-aware")
    if isinstance(p.slots, bool) or not isinstance(p.slots, int) or not 1 <= p.slots <= MAX_SLOTS:
        raise OptimizerInputError("slots", f"must be 1..{MAX_SLOTS}, got {p.slots!r}")
    n = p.slots
    _series("prices.market_eur_per_kwh", p.prices.market_eur_per_kwh, n)
    _series("prices.feed_in_eur_per_kwh", p.prices.feed_in_eur_per_kwh, n)
    _num("prices.network_eur_per_kwh", p.prices.network_eur_per_kwh)
    _num("prices.tax_eur_per_kwh", p.prices.tax_eur_per_kwh)
    _num("prices.vat_rate", p.prices.vat_rate, 0.0, 1.0)
    _num("prices.carbon_eur_per_kg", p.prices.carbon_eur_per_kg, 0.0)
    if p.prices.carbon_kg_per_kwh:
        _series("prices.carbon_kg_per_kwh", p.prices.carbon_kg_per_kwh, n, 0.0)
    elif p.objective is Objective.COST_AND_CARBON:
        raise OptimizerInputError(
            "prices.carbon_kg_per_kwh", "the cost-and-carbon objective needs a carbon intensity per slot"
        )
    _num("time_limit_s", p.time_limit_s, 0.01, 3600.0)
    _num("mip_gap", p.mip_gap, 0.0, 1.0)
    if not p.sites:
        raise OptimizerInputError("sites", "at least one site is needed")
    assets = len(p.batteries) + len(p.pv) + len(p.evs) + len(p.flexible_loads)
    if assets > MAX_ASSETS:
        raise OptimizerInputError("assets", f"at most {MAX_ASSETS} assets, got {assets}")
    names: set[str] = set()
    sites: set[str] = set()
    for i, s in enumerate(p.sites):
        w = f"sites[{i}]"
        if not s.name or s.name in sites:
            raise OptimizerInputError(f"{w}.name", f"must be a non-empty unique name, got {s.name!r}")
        sites.add(s.name)
        _series(f"{w}.load_kw", s.load_kw, n)
        _num(f"{w}.import_limit_kw", s.import_limit_kw, 0.0)
        _num(f"{w}.export_limit_kw", s.export_limit_kw, 0.0)
        _num(f"{w}.peak_eur_per_kw", s.peak_eur_per_kw, 0.0)
        _num(f"{w}.billed_peak_kw", s.billed_peak_kw, 0.0)
    if p.shared is not None:
        _num("shared.import_limit_kw", p.shared.import_limit_kw, 0.0)
        _num("shared.export_limit_kw", p.shared.export_limit_kw, 0.0)
        _num("shared.peak_eur_per_kw", p.shared.peak_eur_per_kw, 0.0)
        _num("shared.billed_peak_kw", p.shared.billed_peak_kw, 0.0)

    def asset(w: str, name: str, site: str) -> None:
        if not name or name in names:
            raise OptimizerInputError(f"{w}.name", f"must be a non-empty name unique among assets, got {name!r}")
        names.add(name)
        if site not in sites:
            raise OptimizerInputError(f"{w}.site", f"names no site of this problem: {site!r}")

    for i, b in enumerate(p.batteries):
        w = f"batteries[{i}]"
        asset(w, b.name, b.site)
        _num(f"{w}.capacity_kwh", b.capacity_kwh, 0.0)
        top = b.capacity_kwh if b.max_soc_kwh is None else b.max_soc_kwh
        _num(f"{w}.max_soc_kwh", top, 0.0, b.capacity_kwh)
        _num(f"{w}.min_soc_kwh", b.min_soc_kwh, 0.0, top)
        _num(f"{w}.reserve_kwh", b.reserve_kwh, 0.0, top)
        _num(f"{w}.soc_kwh", b.soc_kwh, 0.0, b.capacity_kwh)
        _num(f"{w}.max_charge_kw", b.max_charge_kw, 0.0)
        _num(f"{w}.max_discharge_kw", b.max_discharge_kw, 0.0)
        _num(f"{w}.charge_efficiency", b.charge_efficiency, 0.01, 1.0)
        _num(f"{w}.discharge_efficiency", b.discharge_efficiency, 0.01, 1.0)
        if b.terminal_soc_kwh is not None:
            _num(f"{w}.terminal_soc_kwh", b.terminal_soc_kwh, 0.0, b.capacity_kwh)
        _num(f"{w}.stored_value_eur_per_kwh", b.stored_value_eur_per_kwh)
        _num(f"{w}.degradation_eur_per_kwh", b.degradation_eur_per_kwh, 0.0)
    for i, pv in enumerate(p.pv):
        w = f"pv[{i}]"
        asset(w, pv.name, pv.site)
        _series(f"{w}.forecast_kw", pv.forecast_kw, n, 0.0)
    for i, ev in enumerate(p.evs):
        w = f"evs[{i}]"
        asset(w, ev.name, ev.site)
        _num(f"{w}.energy_kwh", ev.energy_kwh, 0.0)
        _slot(f"{w}.arrival_slot", ev.arrival_slot, n - 1)
        _slot(f"{w}.departure_slot", ev.departure_slot, n)
        if ev.departure_slot <= ev.arrival_slot:
            raise OptimizerInputError(f"{w}.departure_slot", "must be after arrival_slot")
        _num(f"{w}.max_kw", ev.max_kw, 0.0)
        _num(f"{w}.min_kw", ev.min_kw, 0.0, ev.max_kw)
    for i, fl in enumerate(p.flexible_loads):
        w = f"flexible_loads[{i}]"
        asset(w, fl.name, fl.site)
        _num(f"{w}.energy_kwh", fl.energy_kwh, 0.0)
        _slot(f"{w}.window_start_slot", fl.window_start_slot, n - 1)
        _slot(f"{w}.window_end_slot", fl.window_end_slot, n)
        if fl.window_end_slot <= fl.window_start_slot:
            raise OptimizerInputError(f"{w}.window_end_slot", "must be after window_start_slot")
        _num(f"{w}.max_kw", fl.max_kw, 0.0)
    object.__setattr__(p, "names", frozenset(names))
