"""The control cycle: devices read -> snapshot -> controllers in priority order -> devices write.

Cycles start on absolute deadlines `start + k * period` of `time.monotonic()`. Deriving each deadline
from the start (instead of sleeping `period` after the previous cycle) keeps the phase from drifting.
When a cycle ends after the next deadline, that cycle is an overrun: the deadlines it missed are
skipped and the next cycle starts at the first deadline still in the future. Catching up by running
the missed cycles back to back would hand devices a burst of setpoints computed from the same stale
readings, which is worse than a gap.

Everything in `run_once` is synchronous: devices and controllers are forbidden to block, and a driver
with I/O keeps it in its own task (see `devices.polling`), so a dead device costs nothing here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from edge_daemon.channels import Category, ChannelStore
from edge_daemon.clock import Clock, SystemClock
from edge_daemon.controllers.base import Controller, CycleContext
from edge_daemon.devices.site import SiteDevices

log = logging.getLogger(__name__)

MIN_PERIOD_S: Final = 0.1
MAX_PERIOD_S: Final = 60.0

CYCLE_TIME: Final = "_cycle/CycleTimeMs"
LATENESS: Final = "_cycle/LatenessMs"
OVERRUNS: Final = "_cycle/Overruns"
SKIPPED: Final = "_cycle/SkippedCycles"
ERRORS: Final = "_cycle/Errors"
CYCLE_UNITS: Final = {CYCLE_TIME: "ms", LATENESS: "ms", OVERRUNS: "", SKIPPED: "", ERRORS: ""}

CycleHook = Callable[[CycleContext], None]


@dataclass(slots=True)
class CycleStats:
    cycles: int = 0
    overruns: int = 0
    skipped: int = 0
    errors: int = 0
    last_cycle_time_s: float = 0.0
    last_lateness_s: float = 0.0
    max_lateness_s: float = 0.0
    max_cycle_time_s: float = 0.0


class ControlCycle:
    def __init__(
        self,
        store: ChannelStore,
        devices: SiteDevices,
        controllers: Sequence[Controller],
        *,
        period_s: float = 1.0,
        clock: Clock | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not MIN_PERIOD_S <= period_s <= MAX_PERIOD_S:
            raise ValueError(f"cycle period must be within {MIN_PERIOD_S}..{MAX_PERIOD_S} s, got {period_s}")
        self.store = store
        self.devices = devices
        self.controllers = tuple(controllers)
        self.period_s = period_s
        self.clock: Clock = clock or SystemClock()
        self._monotonic = monotonic
        self.stats = CycleStats()
        self.hooks: list[CycleHook] = []
        self._stop = asyncio.Event()
        self._error_counts: dict[str, int] = {}
        devices.declare(store)
        for name, unit in CYCLE_UNITS.items():
            store.declare(name, Category.INPUT, unit)

    def add_hook(self, hook: CycleHook) -> None:
        """Run `hook(ctx)` at the end of every cycle, after devices wrote (e.g. telemetry sampling)."""
        self.hooks.append(hook)

    def run_once(self, *, slot: int = -1, started: float | None = None, lateness_s: float = 0.0) -> CycleContext:
        """One full cycle, synchronously. Tests call this directly with a manual clock to fast-forward."""
        began = self._monotonic() if started is None else started
        now = self.clock.time()
        store = self.store
        for device in self.devices.devices:
            try:
                device.read(store, now)
            except Exception:
                self._error(f"read:{device.device_id}")
        ctx = CycleContext(now, began, slot, store.snapshot(), store, self.devices)
        for controller in self.controllers:
            before = dict(ctx.writes)
            try:
                controller.step(ctx)
            except Exception:
                # A controller that failed half-way must not leave half a decision behind.
                ctx.writes = before
                self._error(f"step:{type(controller).__name__}")
        if ctx.writes:
            store.set_many(ctx.writes, ts=now, category=Category.OUTPUT)
        for device in self.devices.devices:
            try:
                device.write(store)
            except Exception:
                self._error(f"write:{device.device_id}")
        stats = self.stats
        stats.cycles += 1
        stats.last_cycle_time_s = self._monotonic() - began
        stats.max_cycle_time_s = max(stats.max_cycle_time_s, stats.last_cycle_time_s)
        stats.last_lateness_s = lateness_s
        stats.max_lateness_s = max(stats.max_lateness_s, lateness_s)
        store.set_many(
            {
                CYCLE_TIME: stats.last_cycle_time_s * 1000,
                LATENESS: lateness_s * 1000,
                OVERRUNS: stats.overruns,
                SKIPPED: stats.skipped,
                ERRORS: stats.errors,
            },
            ts=now,
            category=Category.INPUT,
        )
        for hook in self.hooks:
            try:
                hook(ctx)
            except Exception:
                self._error(f"hook:{getattr(hook, '__qualname__', repr(hook))}")
        return ctx

    async def run(self) -> None:
        """Run cycles on deadlines until `stop()`."""
        self._stop.clear()
        period = self.period_s
        start = self._monotonic()
        slot = 0
        while True:
            deadline = start + slot * period
            if not await self._sleep_until(deadline):
                return
            began = self._monotonic()
            self.run_once(slot=slot, started=began, lateness_s=began - deadline)
            ended = self._monotonic()
            next_slot = max(slot + 1, int((ended - start) // period) + 1)
            if next_slot > slot + 1:
                missed = next_slot - slot - 1
                self.stats.overruns += 1
                self.stats.skipped += missed
                log.warning(
                    "cycle overrun",
                    extra={
                        "slot": slot,
                        "cycle_time_ms": round((ended - began) * 1000, 3),
                        "lateness_ms": round((began - deadline) * 1000, 3),
                        "skipped": missed,
                    },
                )
            slot = next_slot

    def stop(self) -> None:
        self._stop.set()

    async def _sleep_until(self, deadline: float) -> bool:
        # Loop because timers may fire a hair early; a cycle must never start before its deadline.
        while (remaining := deadline - self._monotonic()) > 0:
            if self._stop.is_set():
                return False
            try:
                async with asyncio.timeout(remaining):
                    await self._stop.wait()
            except TimeoutError:
                pass
            else:
                return False
        return not self._stop.is_set()

    def _error(self, where: str) -> None:
        self.stats.errors += 1
        count = self._error_counts.get(where, 0) + 1
        self._error_counts[where] = count
        # Log the 1st, 2nd, 4th, 8th... failure of each source: a device failing every 100 ms must not
        # flood the log, but it must stay visible.
        if count & (count - 1) == 0:
            log.exception("cycle step failed", extra={"where": where, "occurrences": count})
