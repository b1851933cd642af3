"""Register values <-> numbers: data types, word order, scaling. Pure functions, no I/O.

Modbus registers are 16-bit and big-endian inside (the byte order is fixed by the standard); what
devices disagree on is the order of the words of a 32/64-bit value, hence `word_order`: "big" puts
the most significant word first (the Modbus convention, SunSpec), "little" the least significant.
"""

from __future__ import annotations

import enum
import math
import struct
from typing import Final

from edge_daemon.channels import Scalar
from edge_daemon.errors import EdgeError


class DataType(enum.Enum):
    U16 = "u16"
    S16 = "s16"
    U32 = "u32"
    S32 = "s32"
    U64 = "u64"
    S64 = "s64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"
    BOOL = "bool"  # coils and discrete inputs: one bit each

    @property
    def words(self) -> int:
        """Registers taken by one value (strings: per configured length instead)."""
        return _WORDS[self]

    @property
    def is_integer(self) -> bool:
        return self in _INT_FORMATS


_WORDS: Final = {
    DataType.U16: 1,
    DataType.S16: 1,
    DataType.U32: 2,
    DataType.S32: 2,
    DataType.U64: 4,
    DataType.S64: 4,
    DataType.FLOAT32: 2,
    DataType.FLOAT64: 4,
    DataType.STRING: 1,
    DataType.BOOL: 1,
}
_INT_FORMATS: Final = {
    DataType.U16: ">H",
    DataType.S16: ">h",
    DataType.U32: ">I",
    DataType.S32: ">i",
    DataType.U64: ">Q",
    DataType.S64: ">q",
}
_FLOAT_FORMATS: Final = {DataType.FLOAT32: ">f", DataType.FLOAT64: ">d"}


class EncodeError(EdgeError, ValueError):
    """A value cannot be represented in the register type (out of range, not finite)."""


def _to_bytes(registers: list[int] | tuple[int, ...], word_order: str) -> bytes:
    words = registers if word_order == "big" else registers[::-1]
    return b"".join(w.to_bytes(2, "big") for w in words)


def _to_registers(data: bytes, word_order: str) -> list[int]:
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return words if word_order == "big" else words[::-1]


def decode_raw(dtype: DataType, registers: list[int] | tuple[int, ...], word_order: str = "big") -> int | float | str:
    """The raw (unscaled) value of `registers`, exactly as many as the type takes."""
    if dtype is DataType.STRING:
        # Devices pad with NULs or spaces; a NUL ends the text (C strings in firmware).
        text = b"".join(w.to_bytes(2, "big") for w in registers).split(b"\0", 1)[0]
        return text.decode("latin-1").strip()
    if dtype is DataType.BOOL:
        return int(bool(registers[0]))
    data = _to_bytes(registers, word_order)
    fmt = _INT_FORMATS.get(dtype)
    if fmt is not None:
        value: int = struct.unpack(fmt, data)[0]
        return value
    number: float = struct.unpack(_FLOAT_FORMATS[dtype], data)[0]
    return number


def encode_raw(dtype: DataType, raw: int | float, word_order: str = "big") -> list[int]:
    """Registers holding the raw value `raw` (an int for integer types)."""
    fmt = _INT_FORMATS.get(dtype)
    try:
        if fmt is not None:
            return _to_registers(struct.pack(fmt, int(raw)), word_order)
        if dtype in _FLOAT_FORMATS:
            if not math.isfinite(raw):
                raise EncodeError(f"{raw} is not a finite number")
            return _to_registers(struct.pack(_FLOAT_FORMATS[dtype], float(raw)), word_order)
    except struct.error:
        raise EncodeError(f"{raw:g} does not fit in {dtype.value}") from None
    raise EncodeError(f"cannot write {dtype.value} values")


def scaled(raw: int | float, scale: float, exponent: int, offset: float) -> int | float:
    """Engineering value = raw * scale * 10**exponent + offset; ints stay ints when nothing scales."""
    if scale == 1 and exponent == 0 and offset == 0:
        return raw
    factor = scale * 10.0**exponent
    value = raw * factor + offset
    # 10**-1 is not exact in binary; round to the precision the register can carry so 2305 * 0.1 is
    # published as 230.5, not 230.50000000000003.
    digits = max(0, -math.floor(math.log10(abs(factor)))) + 3 if factor else 0
    return round(value, digits)


def unscaled(value: float, dtype: DataType, scale: float, exponent: int, offset: float) -> int | float:
    """The raw value to write for engineering value `value` (the inverse of `scaled`)."""
    if not math.isfinite(value):
        raise EncodeError(f"{value} is not a finite number")
    raw = (value - offset) / (scale * 10.0**exponent)
    return round(raw) if dtype.is_integer else raw


def bit_of(raw: int | float | str, bit: int) -> Scalar:
    """One bit of an integer register value, as 0/1 (alarm and status words)."""
    if not isinstance(raw, int):
        raise TypeError("bits can only be taken from integer types")
    return (raw >> bit) & 1
