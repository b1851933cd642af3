"""EdgeDaemon: wires channel store, devices, control cycle, controllers, outbox and (later) the uplink.

The control cycle is the one thing that must never stop: the uplink runs beside it under supervision
(a crash is logged and the uplink restarted after a pause), and everything the uplink needs from the
site goes through the small surface below, never through the cycle's internals:

- `take_samples()`: telemetry sampled at the end of every cycle since the previous call.
- `take_acks()`: final command statuses written by controllers since the previous call.
- `submit_command(...)`: put a cloud command onto its request channel (RECEIVED once it returns).
- `set_schedule(...)`: hand a schedule to the schedule follower.
- `outbox`, `registry`: durable batches and the channel table (open while `run()` is running).
- `channel_units()`, `devices`: inventory for Hello and the channel table.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Sequence
from typing import Protocol

from core.tasks import stop_tasks
from edge_daemon.channel_registry import ChannelRegistry
from edge_daemon.channels import AckEvent, Category, ChannelStore, Request, Sample
from edge_daemon.clock import Clock, SystemClock
from edge_daemon.commands import submit_command
from edge_daemon.config import SiteConfig
from edge_daemon.controllers.base import Controller, CycleContext
from edge_daemon.controllers.factory import build_controller
from edge_daemon.controllers.schedule_follower import Schedule, ScheduleFollower
from edge_daemon.cycle import ControlCycle
from edge_daemon.device_types import build_devices
from edge_daemon.devices.base import Device
from edge_daemon.devices.site import SiteDevices
from edge_daemon.errors import ScheduleError
from edge_daemon.outbox import Outbox

log = logging.getLogger(__name__)

DROPPED_SAMPLES = "_daemon/DroppedSamples"
UPLINK_RESTART_S = 5.0


class Uplink(Protocol):
    """What the daemon runs beside the cycle to talk to the cloud (implemented in edge_daemon.uplink).

    `run` is started once the outbox is open and cancelled on shutdown; it owns reconnects. It must not
    block the event loop: sqlite calls go through asyncio.to_thread.
    """

    async def run(self, daemon: EdgeDaemon) -> None: ...


class EdgeDaemon:
    def __init__(
        self,
        config: SiteConfig,
        *,
        clock: Clock | None = None,
        devices: Sequence[Device] | None = None,
        uplink: Uplink | None = None,
        uplink_restart_s: float = UPLINK_RESTART_S,
    ) -> None:
        self.config = config
        self.uplink_restart_s = uplink_restart_s
        self.clock: Clock = clock or SystemClock()
        self.store = ChannelStore(self.clock)
        if devices is None:
            devices = build_devices([(d.device_id, d.params) for d in config.devices], config.site_context())
        self.devices = SiteDevices(devices)
        self.controllers: tuple[Controller, ...] = tuple(
            build_controller(c.params, self.devices) for c in config.controllers
        )
        self.schedule_follower: ScheduleFollower | None = next(
            (c for c in self.controllers if isinstance(c, ScheduleFollower)), None
        )
        self.cycle = ControlCycle(
            self.store, self.devices, self.controllers, period_s=config.cycle.period_s, clock=self.clock
        )
        self.store.declare(DROPPED_SAMPLES, Category.INPUT, "")
        self.cycle.add_hook(self._sample)
        self._samples: deque[Sample] = deque()
        self._samples_lock = threading.Lock()
        self.dropped_samples = 0
        self.outbox: Outbox | None = None
        self.registry: ChannelRegistry | None = None
        self._uplink = uplink
        self._stop = asyncio.Event()
        self.started = asyncio.Event()

    # -- uplink surface --------------------------------------------------------------------------

    def take_samples(self) -> list[Sample]:
        """Every sample taken since the previous call, oldest first. Safe from any thread."""
        with self._samples_lock:
            samples = list(self._samples)
            self._samples.clear()
        return samples

    def take_acks(self) -> list[AckEvent]:
        """Every final command ack written since the previous call, in order. Safe from any thread."""
        return self.store.drain_acks()

    def submit_command(
        self, channel: str, command_id: str, value: float | None, hold_s: float | None = None
    ) -> Request | None:
        """Queue a command; see `edge_daemon.commands.submit_command`. Raises CommandError."""
        log.info("command received", extra={"command_id": command_id, "channel": channel, "value": value})
        return submit_command(self.store, self.devices, channel, command_id, value, hold_s)

    def set_schedule(self, schedule: Schedule) -> None:
        """Install a schedule on the schedule follower. Raises ScheduleError, also without a follower."""
        if self.schedule_follower is None:
            raise ScheduleError("this site has no schedule_follower controller")
        self.schedule_follower.set_schedule(schedule)

    def channel_units(self) -> dict[str, str]:
        """Unit of every telemetry channel (inputs and outputs), for the channel registry."""
        return {
            name: meta.unit
            for name, meta in self.store.catalog().items()
            if meta.category in (Category.INPUT, Category.OUTPUT)
        }

    # -- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the outbox and channel registry (idempotent). `run()` does this itself."""
        if self.outbox is None:
            cfg = self.config.outbox
            self.outbox = await asyncio.to_thread(Outbox, cfg.path, cfg.max_bytes, clock=self.clock)
        if self.registry is None:
            self.registry = await asyncio.to_thread(ChannelRegistry, self.config.outbox.path, clock=self.clock)

    async def run(self) -> None:
        """Run until `stop()`; then stop the uplink and devices and close the outbox."""
        self._stop.clear()
        await self.open()
        started: list[Device] = []
        tasks: list[asyncio.Task[object]] = []
        try:
            for device in self.devices.devices:
                await device.start()
                started.append(device)
            cycle_task = asyncio.create_task(self.cycle.run(), name="control-cycle")
            tasks.append(cycle_task)
            if self._uplink is not None:
                tasks.append(asyncio.create_task(self._supervise_uplink(self._uplink), name="uplink"))
            stop_task = asyncio.create_task(self._stop.wait(), name="stop")
            tasks.append(stop_task)
            log.info(
                "edge daemon started",
                extra={
                    "site": self.config.site.site_id,
                    "devices": len(self.devices),
                    "period_s": self.config.cycle.period_s,
                },
            )
            self.started.set()
            done, _ = await asyncio.wait([cycle_task, stop_task], return_when=asyncio.FIRST_COMPLETED)
            if cycle_task in done:
                cycle_task.result()  # the cycle never ends by itself: surface why it did
        finally:
            self.cycle.stop()
            await stop_tasks(tasks)
            for device in reversed(started):
                try:
                    await device.stop()
                except Exception:
                    log.exception("device stop failed", extra={"device": device.device_id})
            await asyncio.to_thread(self._close)
            self.started.clear()
            log.info("edge daemon stopped", extra={"site": self.config.site.site_id})

    def stop(self) -> None:
        """Ask `run()` to finish. Call from the event loop thread (signal handlers qualify)."""
        self._stop.set()

    def _close(self) -> None:
        if self.outbox is not None:
            self.outbox.close()
            self.outbox = None
        if self.registry is not None:
            self.registry.close()
            self.registry = None

    async def _supervise_uplink(self, uplink: Uplink) -> None:
        while True:
            try:
                await uplink.run(self)
                log.warning("uplink returned; restarting")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("uplink crashed; restarting")
            await asyncio.sleep(self.uplink_restart_s)

    def _sample(self, ctx: CycleContext) -> None:
        samples = self.store.drain_samples()
        limit = self.config.telemetry.max_pending_samples
        with self._samples_lock:
            self._samples.extend(samples)
            overflow = len(self._samples) - limit
            if overflow > 0:
                for _ in range(overflow):
                    self._samples.popleft()
        if overflow > 0:
            self.dropped_samples += overflow
            # Recorded as a channel so the loss itself becomes telemetry once the uplink catches up.
            self.store.set(DROPPED_SAMPLES, self.dropped_samples, ts=ctx.now, category=Category.INPUT)
