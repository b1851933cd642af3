"""Building simulated sites for the edge tests: real devices, real controllers, a manual clock."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge_daemon.channels import ChannelStore, ChannelValue
from edge_daemon.clock import ManualClock
from edge_daemon.config import SiteConfig, demo_site_dict, parse_config
from edge_daemon.controllers.base import Controller, CycleContext
from edge_daemon.controllers.factory import build_controller
from edge_daemon.cycle import ControlCycle
from edge_daemon.device_types import build_devices
from edge_daemon.devices.base import Device
from edge_daemon.devices.site import SiteDevices

# Midsummer in Berlin, 00:00 UTC: a full day of sun ahead.
MIDSUMMER = datetime(2024, 6, 21, tzinfo=UTC).timestamp()


def site_config(tmp: Path, *, quiet: bool = False, **overrides: Any) -> SiteConfig:
    """The demo site; `quiet` removes the load's noise so controllers can settle exactly."""
    doc = demo_site_dict()
    if quiet:
        for device in doc["devices"]:
            if device["type"] == "sim_load":
                device["noise_w"] = 0
    for key, value in overrides.items():
        doc[key] = value
    return parse_config(doc, tmp / "site.toml")


class Site:
    """A demo-like site driven by hand: `step(seconds)` advances the clock and runs one cycle."""

    def __init__(
        self,
        config: SiteConfig,
        *,
        start: float = MIDSUMMER,
        controllers: Sequence[Controller] | None = None,
        extra_devices: Sequence[Device] = (),
    ) -> None:
        self.clock = ManualClock(start)
        self.store = ChannelStore(self.clock)
        devices = build_devices([(d.device_id, d.params) for d in config.devices], config.site_context())
        self.devices = SiteDevices([*devices, *extra_devices])
        if controllers is None:
            controllers = [build_controller(c.params, self.devices) for c in config.controllers]
        self.controllers = list(controllers)
        self.cycle = ControlCycle(self.store, self.devices, self.controllers, period_s=1.0, clock=self.clock)
        self.snapshots: list[Mapping[str, ChannelValue]] = []
        self.cycle.add_hook(self._record)

    def _record(self, ctx: CycleContext) -> None:
        self.snapshots.append(ctx.snapshot)

    def device(self, device_id: str) -> Device:
        return self.devices.by_id[device_id]

    def step(self, seconds: float = 1.0) -> CycleContext:
        self.clock.advance(seconds)
        return self.cycle.run_once()

    def run(self, cycles: int, seconds: float = 1.0, each: Callable[[CycleContext], None] | None = None) -> None:
        for _ in range(cycles):
            ctx = self.step(seconds)
            if each is not None:
                each(ctx)

    def value(self, name: str) -> Any:
        cv = self.store.get(name)
        return None if cv is None else cv.value
