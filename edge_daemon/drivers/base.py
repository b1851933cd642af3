"""What every real-device driver adds to `PollingDevice`: per-poll timestamps and a loss channel.

`PollingDevice` merges every poll into one cache and republishes all of it with the newest poll's
timestamp. Real devices fail partially (one Modbus block answers with an exception, one CAN frame stops
arriving while others continue), and a value that was not read again must keep its old timestamp, or
a stale reading would look fresh. So drivers return from `read_device()` only what they actually read,
and `read()` publishes exactly that, stamped with the time it was read.

Channels every driver adds:
- `CommunicationOk` (bool, from the base) and `CommunicationLost` (0/1): the last poll failed or
  nothing was read for `stale_after_s`. Published every cycle, like the base does.
- `CommunicationErrors`: failed polls since start (a poll gives up only after its retries).
"""

from __future__ import annotations

import asyncio
import time
from abc import abstractmethod
from collections.abc import Mapping

from edge_daemon.channels import Category, ChannelStore, Number, Scalar
from edge_daemon.clock import Clock
from edge_daemon.devices.base import ChannelAccess, ChannelSpec
from edge_daemon.devices.polling import COMMUNICATION_OK, PollingDevice
from edge_daemon.errors import EdgeError

COMMUNICATION_LOST = ChannelSpec(
    "CommunicationLost", "", ChannelAccess.READ, "1 while the device does not answer (last poll failed or stale)"
)
COMMUNICATION_ERRORS = ChannelSpec("CommunicationErrors", "", ChannelAccess.READ, "Failed polls since start")


class CommunicationError(EdgeError):
    """The device did not answer (timeout, connection refused, silent bus) after all retries."""


class DriverDevice(PollingDevice):
    def __init__(
        self,
        device_id: str,
        *,
        poll_interval_s: float,
        poll_timeout_s: float,
        stale_after_s: float | None = None,
        setpoint_refresh_s: float = 0.0,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(
            device_id,
            poll_interval_s=poll_interval_s,
            timeout_s=poll_timeout_s,
            setpoint_refresh_s=setpoint_refresh_s,
            clock=clock,
        )
        # The base derives staleness from its timeout, which for drivers also covers retries and backoff.
        self.stale_after_s = stale_after_s if stale_after_s is not None else 3 * poll_interval_s
        self._fresh: list[tuple[float, dict[str, Scalar]]] = []
        self._read_ok_at: float | None = None
        self._last_poll_failed = False
        self._published_errors = -1
        self._published_status: dict[str, Number] = {}

    @property
    def extra_channels(self) -> tuple[ChannelSpec, ...]:
        """Driver-specific status channels (counters) published by `status_values`."""
        return ()

    @property
    def channels(self) -> tuple[ChannelSpec, ...]:
        return (
            *self.device_channels,
            COMMUNICATION_OK,
            COMMUNICATION_LOST,
            COMMUNICATION_ERRORS,
            *self.extra_channels,
        )

    @abstractmethod
    async def read_device(self) -> Mapping[str, Scalar]:
        """Read the device; return what was read by local channel name. Raise CommunicationError
        (or let a timeout fire) when the device did not answer."""

    def status_values(self) -> dict[str, Number]:
        """Driver counters to publish when they change (see `extra_channels`)."""
        return {}

    def changed_since_published(self, now: Mapping[str, Number]) -> dict[str, Number]:
        """The counters of `now` that differ from what was last published, marked as published."""
        changed: dict[str, Number] = {k: v for k, v in now.items() if self._published_status.get(k) != v}
        self._published_status.update(changed)
        return changed

    async def poll(self) -> Mapping[str, Number]:
        try:
            values = await self.read_device()
        except BaseException:
            # Also on cancellation: the base cancels a poll that exceeded its timeout, and a hung device
            # must show as lost from that moment, not only once its values are stale.
            self._last_poll_failed = True
            raise
        now = self.clock.time()
        self._last_poll_failed = False
        self._read_ok_at = now
        if values:
            self._fresh.append((now, dict(values)))
        # The base's merged cache is not used (see module docstring); `read` is overridden.
        return {}

    @property
    def communication_lost(self) -> bool:
        return self._is_lost(self.clock.time())

    def _is_lost(self, now: float) -> bool:
        return self._last_poll_failed or self._read_ok_at is None or now - self._read_ok_at > self.stale_after_s

    def read(self, store: ChannelStore, now: float) -> None:
        fresh, self._fresh = self._fresh, []
        for ts, values in fresh:
            store.set_many({self.address(k): v for k, v in values.items()}, ts=ts, category=Category.INPUT)
        lost = self._is_lost(now)
        store.set_many(
            {self.address("CommunicationOk"): not lost, self.address("CommunicationLost"): int(lost)},
            ts=now,
            category=Category.INPUT,
        )
        status: dict[str, Number] = {}
        if self.poll_failures != self._published_errors:
            self._published_errors = self.poll_failures
            status["CommunicationErrors"] = self.poll_failures
        status.update(self.status_values())
        if status:
            store.set_many({self.address(k): v for k, v in status.items()}, ts=now, category=Category.INPUT)


class RetryDelay:
    """Waits between attempts at a device that stopped answering: the poll interval, doubling per
    consecutive failed poll up to `maximum_s`, so a dead device is probed less and less often (and logs
    less) but is found again within `maximum_s` once it returns."""

    def __init__(self, initial_s: float, maximum_s: float) -> None:
        self.initial_s = initial_s
        self.maximum_s = max(initial_s, maximum_s)
        self.failures = 0
        self._not_before = 0.0

    def failed(self) -> None:
        self.failures += 1
        # The base already waits one poll interval after a failure; this adds the doubling on top.
        extra = min(self.maximum_s, self.initial_s * 2.0 ** min(self.failures - 1, 32)) - self.initial_s
        self._not_before = time.monotonic() + extra

    def succeeded(self) -> None:
        self.failures = 0
        self._not_before = 0.0

    async def wait(self) -> None:
        delay = self._not_before - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
