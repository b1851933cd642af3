"""The one Device interface shared by simulators and real drivers.

A device declares its channels (local names such as `Soc`, with unit, access and limits) and takes part
in every control cycle twice: `read` publishes input channels into the store, `write` applies output
channels from it. Both run inside the cycle and therefore must never block: a driver that does I/O
polls in its own task and `read`/`write` only touch its cache (see `edge_daemon.devices.polling`).
"""

from __future__ import annotations

import enum
import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Final

from edge_daemon.channels import Category, ChannelStore, Number
from edge_daemon.errors import ChannelError

_DEVICE_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


class ChannelAccess(enum.Enum):
    """Whether a channel is only read (measurements, status) or is a setpoint controllers and commands write."""

    READ = "read"
    WRITE = "write"


@dataclass(frozen=True, slots=True)
class DynamicLimit:
    """A bound taken from one of the device's own input channels at validation time.

    The bound is `scale * value`; `scale=-1` turns a magnitude such as MaxChargePower into the lower
    bound of a signed setpoint.
    """

    channel: str
    scale: float = 1.0


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    name: str
    unit: str
    access: ChannelAccess
    description: str
    minimum: float | None = None
    maximum: float | None = None
    dynamic_min: DynamicLimit | None = None
    dynamic_max: DynamicLimit | None = None

    @property
    def writable(self) -> bool:
        return self.access is ChannelAccess.WRITE

    @property
    def category(self) -> Category:
        return Category.OUTPUT if self.writable else Category.INPUT


def validate_device_id(device_id: str) -> str:
    if _DEVICE_ID_RE.fullmatch(device_id) is None:
        raise ChannelError(f"invalid device id {device_id!r}: letters, digits, _ and -, starting alphanumeric")
    return device_id


class Device(ABC):
    """Base of every device. Subclasses set `type_name` and implement `channels`, `read` and `write`."""

    type_name: ClassVar[str]
    # Converts this device's ActivePower into power fed into the site bus: +1 for generation and battery
    # discharge, -1 for consumption, 0 for devices that do not take part in the power balance (meters).
    site_power_sign: ClassVar[int] = 0
    # Devices whose readings derive from other devices (a simulated meter) read in a later phase.
    read_phase: ClassVar[int] = 0

    def __init__(self, device_id: str) -> None:
        self.device_id = validate_device_id(device_id)

    @property
    @abstractmethod
    def channels(self) -> tuple[ChannelSpec, ...]: ...

    def address(self, local: str) -> str:
        return f"{self.device_id}/{local}"

    def declare(self, store: ChannelStore) -> None:
        for spec in self.channels:
            store.declare(self.address(spec.name), spec.category, spec.unit)

    @abstractmethod
    def read(self, store: ChannelStore, now: float) -> None:
        """Publish input channels for the cycle starting at `now` (epoch seconds). Must not block."""

    @abstractmethod
    def write(self, store: ChannelStore) -> None:
        """Apply output channels from the store. Must not block."""

    async def start(self) -> None:  # noqa: B027 (optional hook: a no-op unless the driver does I/O)
        """Start background work (I/O polling). Simulators have none."""

    async def stop(self) -> None:  # noqa: B027 (optional hook, like start)
        """Stop background work started by `start`."""

    def output_value(self, store: ChannelStore, local: str) -> float | None:
        """The numeric value of one of our output channels, or None when unset or not a finite number."""
        cv = store.get(self.address(local))
        if cv is None:
            return None
        value = cv.value
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return None
        return float(value)


def publish(store: ChannelStore, device: Device, values: dict[str, Number], now: float) -> None:
    """Write a device's inputs in one atomic step so no snapshot sees half a reading."""
    store.set_many({device.address(k): v for k, v in values.items()}, ts=now, category=Category.INPUT)
