"""The site's devices as one lookup table: read order, channel specs and effective setpoint limits."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edge_daemon.channels import ChannelStore, ChannelValue
from edge_daemon.devices.base import ChannelSpec, Device, DynamicLimit
from edge_daemon.errors import ChannelError, LimitError, NotWritableError


@dataclass(frozen=True, slots=True)
class Limits:
    low: float
    high: float

    def clamp(self, value: float) -> float:
        return min(self.high, max(self.low, value))

    def __contains__(self, value: float) -> bool:
        return self.low <= value <= self.high


class SiteDevices:
    def __init__(self, devices: Sequence[Device], *, max_limit_age_s: float = 30.0) -> None:
        seen: set[str] = set()
        for device in devices:
            if device.device_id in seen:
                raise ChannelError(f"duplicate device id {device.device_id!r}")
            seen.add(device.device_id)
        # sorted() is stable, so devices keep their configured order within a phase.
        self.devices: tuple[Device, ...] = tuple(sorted(devices, key=lambda d: d.read_phase))
        self.by_id: Mapping[str, Device] = {d.device_id: d for d in devices}
        self.max_limit_age_s = max_limit_age_s
        self._specs: dict[str, tuple[Device, ChannelSpec]] = {
            d.address(s.name): (d, s) for d in devices for s in d.channels
        }
        self.outputs: tuple[str, ...] = tuple(name for name, (_, spec) in self._specs.items() if spec.writable)

    def __len__(self) -> int:
        return len(self.devices)

    def declare(self, store: ChannelStore) -> None:
        for device in self.devices:
            device.declare(store)

    def spec(self, channel: str) -> tuple[Device, ChannelSpec] | None:
        return self._specs.get(channel)

    def writable(self, channel: str) -> tuple[Device, ChannelSpec]:
        """The device and spec of a channel that commands and controllers may write.

        The one check of "exists and is writable" at the edge; raises NotWritableError saying which.
        """
        found = self._specs.get(channel)
        if found is None or not found[1].writable:
            raise NotWritableError(channel, known=found is not None)
        return found

    def units(self) -> dict[str, str]:
        return {name: spec.unit for name, (_, spec) in self._specs.items()}

    def limits(self, channel: str, snapshot: Mapping[str, ChannelValue], now: float) -> Limits:
        """Static limits of a writable channel intersected with its dynamic ones from `snapshot`.

        Raises LimitError when the channel is not writable or a dynamic limit is missing or older than
        `max_limit_age_s`: acting on a stale limit is how a dead BMS gets overdriven.
        """
        try:
            device, spec = self.writable(channel)
        except NotWritableError as exc:
            raise LimitError(str(exc)) from exc
        low = -math.inf if spec.minimum is None else spec.minimum
        high = math.inf if spec.maximum is None else spec.maximum
        if spec.dynamic_min is not None:
            low = max(low, self._dynamic(device, spec.dynamic_min, snapshot, now))
        if spec.dynamic_max is not None:
            high = min(high, self._dynamic(device, spec.dynamic_max, snapshot, now))
        if low > high:
            raise LimitError(f"{channel}: limits cross ({low:g} > {high:g})")
        return Limits(low, high)

    def _dynamic(self, device: Device, limit: DynamicLimit, snapshot: Mapping[str, ChannelValue], now: float) -> float:
        name = device.address(limit.channel)
        cv = snapshot.get(name)
        if cv is None:
            raise LimitError(f"dynamic limit {name} unavailable")
        if now - cv.timestamp > self.max_limit_age_s:
            raise LimitError(f"dynamic limit {name} stale ({now - cv.timestamp:.0f} s old)")
        value = cv.value
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise LimitError(f"dynamic limit {name} is not a number")
        return limit.scale * float(value)
