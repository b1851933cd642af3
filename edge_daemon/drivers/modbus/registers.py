"""A register map: which channel lives where on the device and how its value is encoded."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from edge_daemon.devices.base import ChannelAccess, ChannelSpec, DynamicLimit
from edge_daemon.drivers.modbus.codec import DataType

# Modbus limits per request (Modbus Application Protocol v1.1b3, 6.1-6.4): a device may allow fewer.
MAX_REGISTERS_PER_READ = 125
MAX_BITS_PER_READ = 2000


class Function(enum.Enum):
    HOLDING = "holding"
    INPUT = "input"
    COIL = "coil"
    DISCRETE = "discrete"

    @property
    def is_bit(self) -> bool:
        return self in (Function.COIL, Function.DISCRETE)

    @property
    def writable(self) -> bool:
        return self in (Function.HOLDING, Function.COIL)


@dataclass(frozen=True, slots=True)
class Point:
    """One value in the device: `length` registers (or one bit) at `address`.

    The engineering value is `raw * scale * 10**(exponent + SF) + offset`, where SF is the current raw
    value of the point named `scale_register` (SunSpec-style scale factors that the device may change)
    and `exponent` a fixed power of ten. Raw values in `invalid` (and NaN) mean "not available" and are
    not published.
    """

    name: str
    address: int
    function: Function
    dtype: DataType
    length: int
    access: ChannelAccess = ChannelAccess.READ
    word_order: str = "big"
    scale: float = 1.0
    exponent: int = 0
    offset: float = 0.0
    scale_register: str | None = None
    bit: int | None = None
    unit: str = ""
    description: str = ""
    minimum: float | None = None
    maximum: float | None = None
    # Limits read from the device's own channels when a setpoint is checked (a BMS's allowed power).
    dynamic_min: DynamicLimit | None = None
    dynamic_max: DynamicLimit | None = None
    invalid: frozenset[int | float | str] = frozenset()
    # Read once after each (re)connection instead of every poll: serial numbers, ratings, versions.
    static: bool = False
    # False for points that only serve as another point's scale factor.
    channel: bool = True

    @property
    def end(self) -> int:
        return self.address + self.length

    def spec(self) -> ChannelSpec:
        return ChannelSpec(
            self.name,
            self.unit,
            self.access,
            self.description or self.name,
            self.minimum,
            self.maximum,
            self.dynamic_min,
            self.dynamic_max,
        )


@dataclass(frozen=True, slots=True)
class RegisterMap:
    points: tuple[Point, ...]
    max_registers_per_read: int = MAX_REGISTERS_PER_READ
    max_bits_per_read: int = MAX_BITS_PER_READ
    # Unused registers a single read may span between two points. 0 = only adjacent points share a
    # request: many devices answer a read that touches an undefined register with an exception.
    max_gap: int = 0
    # Write single holding registers with function 16 instead of 6 (some devices only implement 16).
    write_multiple: bool = False

    def channel_specs(self) -> tuple[ChannelSpec, ...]:
        return tuple(p.spec() for p in self.points if p.channel)

    @property
    def read_points(self) -> tuple[Point, ...]:
        return tuple(p for p in self.points if p.access is ChannelAccess.READ)

    @property
    def write_points(self) -> dict[str, Point]:
        return {p.name: p for p in self.points if p.access is ChannelAccess.WRITE}
