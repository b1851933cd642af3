"""Base for devices that do I/O (Modbus, CAN, HTTP): polling in their own task, a cache for the cycle.

The cycle calls `read` and `write` synchronously and must never wait on a wire. So `poll()` and
`apply()` run in a background task with timeouts; `read` only publishes what the last successful poll
cached (with that poll's timestamp, so consumers can see how old it is) and `write` only hands the
latest setpoints to the task. A dead device therefore shows up as stale values and
`CommunicationOk = false`, never as a late cycle.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import abstractmethod
from collections.abc import Mapping

from core.tasks import stop_task
from edge_daemon.channels import Category, ChannelStore, Number
from edge_daemon.clock import Clock, SystemClock
from edge_daemon.devices.base import ChannelAccess, ChannelSpec, Device

log = logging.getLogger(__name__)

COMMUNICATION_OK = ChannelSpec("CommunicationOk", "", ChannelAccess.READ, "The last poll succeeded recently")


class PollingDevice(Device):
    def __init__(
        self,
        device_id: str,
        *,
        poll_interval_s: float = 1.0,
        timeout_s: float = 2.0,
        setpoint_refresh_s: float = 0.0,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(device_id)
        self.poll_interval_s = poll_interval_s
        self.timeout_s = timeout_s
        # 0: a setpoint is sent when it changes. Otherwise also again once it is this old: many inverters
        # fall back to their own mode when no setpoint arrives within a watchdog time, and a device that
        # restarted has forgotten what it was sent.
        self.setpoint_refresh_s = setpoint_refresh_s
        self.stale_after_s = 3 * poll_interval_s + timeout_s
        self.clock: Clock = clock or SystemClock()
        self.poll_failures = 0
        self.apply_failures = 0
        self._cache: dict[str, Number] = {}
        self._cache_ts = 0.0
        self._generation = 0
        self._published = 0
        self._last_ok: float | None = None
        self._pending: dict[str, float] = {}
        self._applied: dict[str, float] = {}
        self._applied_at: dict[str, float] = {}  # time.monotonic() of each output's last successful send
        self._task: asyncio.Task[None] | None = None

    @property
    @abstractmethod
    def device_channels(self) -> tuple[ChannelSpec, ...]:
        """The channels of the device itself; CommunicationOk is added by this base."""

    @property
    def channels(self) -> tuple[ChannelSpec, ...]:
        return (*self.device_channels, COMMUNICATION_OK)

    @abstractmethod
    async def poll(self) -> Mapping[str, Number]:
        """Read the device; return input values by local channel name. May take long or hang."""

    @abstractmethod
    async def apply(self, outputs: Mapping[str, float]) -> None:
        """Send setpoints (local channel name -> value) to the device."""

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"poll:{self.device_id}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        # stop_task cancels until the task has ended: a driver library may swallow one cancellation
        # (pymodbus awaits responses with asyncio.wait_for, which drops it on Python 3.11).
        await stop_task(task)

    def read(self, store: ChannelStore, now: float) -> None:
        if self._generation != self._published:
            # Republishing an unchanged cache would turn one measurement into a sample per cycle.
            self._published = self._generation
            store.set_many(
                {self.address(k): v for k, v in self._cache.items()},
                ts=self._cache_ts,
                category=Category.INPUT,
            )
        ok = self._last_ok is not None and now - self._last_ok <= self.stale_after_s
        store.set(self.address("CommunicationOk"), ok, ts=now, category=Category.INPUT)

    def write(self, store: ChannelStore) -> None:
        refresh_before = time.monotonic() - self.setpoint_refresh_s if self.setpoint_refresh_s else None
        for spec in self.device_channels:
            if not spec.writable:
                continue
            value = self.output_value(store, spec.name)
            if value is None:
                continue
            if self._applied.get(spec.name) != value or (
                refresh_before is not None and self._applied_at.get(spec.name, refresh_before) <= refresh_before
            ):
                self._pending[spec.name] = value  # latest wins; the task sends it when the wire allows

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns a poll that finished just as
                # the task was cancelled and drops the cancellation, and stop() then waits forever.
                async with asyncio.timeout(self.timeout_s):
                    values = await self.poll()
            except Exception as exc:  # a driver fault must not end polling
                self.poll_failures += 1
                log.warning("poll failed", extra={"device": self.device_id, "error": repr(exc)})
            else:
                self._cache.update(values)
                self._cache_ts = self.clock.time()
                self._last_ok = self._cache_ts
                self._generation += 1
            if self._pending:
                pending, self._pending = self._pending, {}
                try:
                    async with asyncio.timeout(self.timeout_s):
                        await self.apply(pending)
                except Exception as exc:
                    self.apply_failures += 1
                    # Keep what failed unless a newer setpoint arrived meanwhile.
                    self._pending = {**pending, **self._pending}
                    log.warning("apply failed", extra={"device": self.device_id, "error": repr(exc)})
                else:
                    self._applied.update(pending)
                    sent_at = time.monotonic()
                    self._applied_at.update(dict.fromkeys(pending, sent_at))
            await asyncio.sleep(max(0.0, self.poll_interval_s - (time.monotonic() - started)))
