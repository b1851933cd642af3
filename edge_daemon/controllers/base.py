"""The controller interface and the per-cycle context controllers work on."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from edge_daemon.channels import ChannelStore, ChannelValue
from edge_daemon.devices.site import Limits, SiteDevices
from edge_daemon.errors import ChannelError


@dataclass(slots=True)
class CycleContext:
    """One cycle as controllers see it.

    Controllers read the `snapshot` taken at cycle start, never the live store, so they all decide on
    the same data. Their setpoints go through `write` into `writes`, which the cycle commits to the store
    in one atomic step after the last controller: the last write wins, and `written` lets a controller
    refine (rather than blindly replace) what a lower-priority one decided this cycle.
    """

    now: float
    monotonic: float
    slot: int
    snapshot: Mapping[str, ChannelValue]
    store: ChannelStore
    devices: SiteDevices
    writes: dict[str, float] = field(default_factory=dict)

    def value(self, name: str) -> float | None:
        cv = self.snapshot.get(name)
        if cv is None:
            return None
        v = cv.value
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return None
        return float(v)

    def write(self, name: str, value: float) -> None:
        """Set a setpoint for this cycle. Raises ChannelError (NotWritableError: unknown or read-only)."""
        self.devices.writable(name)
        if not math.isfinite(value):
            raise ChannelError(f"{name}: refusing to write {value!r}")
        self.writes[name] = value

    def written(self, name: str) -> float | None:
        return self.writes.get(name)

    def limits(self, name: str) -> Limits:
        return self.devices.limits(name, self.snapshot, self.now)


class Controller(ABC):
    """A control strategy run once per cycle. `step` must be quick and must not block."""

    type_name: ClassVar[str]

    @abstractmethod
    def step(self, ctx: CycleContext) -> None: ...
