"""The optimizer's errors: one root (OptimizerError) under core's EmmaError, like forecast's."""

from __future__ import annotations

from core.errors import EmmaError


class OptimizerError(EmmaError):
    """Root of every deliberate error of the optimizer package."""


class OptimizerInputError(OptimizerError):
    """An input no model can be built from; `field` names it (e.g. `batteries[0].capacity_kwh`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class InfeasibleError(OptimizerError):
    """The inputs admit no schedule. `conflicts` says which constraint families clash, in plain words
    ("EV ev_1 cannot reach 40 kWh by 07:00 with 11 kW"); the message joins them."""

    def __init__(self, conflicts: list[str]) -> None:
        super().__init__("; ".join(conflicts))
        self.conflicts = conflicts


class SolverError(OptimizerError):
    """HiGHS gave no usable answer (unbounded, time limit without a feasible plan, an internal error)."""
