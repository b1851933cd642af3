"""What a run produces: per-asset schedules, the expected outcome next to the baseline, solver facts."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    """Money and carbon of one way of running the sites over the horizon."""

    energy_eur: float  # imports paid minus exports earned
    peak_eur: float  # demand charges above the billed peaks
    degradation_eur: float  # battery throughput
    stored_value_eur: float  # what the energy left in batteries at the end is worth
    co2_kg: float  # of imported energy
    import_kwh: float
    export_kwh: float

    @property
    def cost_eur(self) -> float:
        """What the horizon costs, all told: the bill plus wear, minus the value kept in storage."""
        return self.energy_eur + self.peak_eur + self.degradation_eur - self.stored_value_eur


@dataclass(frozen=True)
class BatterySchedule:
    charge_kw: tuple[float, ...]
    discharge_kw: tuple[float, ...]
    soc_kwh: tuple[float, ...]  # at the end of each slot


@dataclass(frozen=True)
class PvSchedule:
    used_kw: tuple[float, ...]
    curtailed_kw: tuple[float, ...]


@dataclass(frozen=True)
class GridSchedule:
    import_kw: tuple[float, ...]
    export_kw: tuple[float, ...]
    peak_kw: float


@dataclass(frozen=True)
class Plan:
    objective: float
    expected: Outcome
    baseline: Outcome  # the self-consumption controller alone (baseline.py)
    batteries: dict[str, BatterySchedule]
    pv: dict[str, PvSchedule]
    evs: dict[str, tuple[float, ...]]
    flexible_loads: dict[str, tuple[float, ...]]
    grid: dict[str, GridSchedule]
    build_s: float
    solve_s: float
    mip_gap: float
    optimal: bool  # False: the time limit ended the search with a feasible plan `mip_gap` from the bound
    solver: str
    solver_version: str
