"""Reading a register map: planned blocks -> registers -> channel values, and encoding writes.

Shared by the register-map driver and SunSpec (whose map comes from discovery). A block the device
refuses with an exception is split (see `planner.split`) and the split kept for later polls; the
refusal is logged once per block and code, counted, and its points are left out (so they keep their
old timestamp in the store) while every other block is still read.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

from edge_daemon.channels import Scalar
from edge_daemon.drivers.modbus.codec import DataType, EncodeError, bit_of, decode_raw, encode_raw, scaled, unscaled
from edge_daemon.drivers.modbus.link import ModbusDeviceError, ModbusLink, RetryPolicy
from edge_daemon.drivers.modbus.planner import ReadBlock, plan, split
from edge_daemon.drivers.modbus.registers import Function, Point, RegisterMap
from edge_daemon.errors import EdgeError

log = logging.getLogger(__name__)


class ScaleUnknownError(EdgeError):
    """A write needs a scale factor that has not been read (or is not implemented) yet."""


class RegisterReader:
    def __init__(
        self, device_id: str, link: ModbusLink, unit: int, register_map: RegisterMap, policy: RetryPolicy
    ) -> None:
        self.device_id = device_id
        self.link = link
        self.unit = unit
        self.map = register_map
        self.policy = policy
        self.exceptions = 0
        self._by_name = {p.name: p for p in register_map.points}
        read = register_map.read_points
        # Scale-factor points are read with the points they scale, also when only writes use them.
        needed = {p.scale_register for p in register_map.points if p.scale_register}
        dynamic = [p for p in read if not p.static or p.name in needed]
        self._blocks = plan(dynamic, register_map)
        self._static_blocks = plan([p for p in read if p.static and p.name not in needed], register_map)
        self._static_done = False
        self._reported: set[tuple[str, int]] = set()
        # Last raw value of every point read, for scale factors needed by writes.
        self.raw: dict[str, int | float | str] = {}

    @property
    def blocks(self) -> tuple[ReadBlock, ...]:
        return tuple(self._blocks)

    def reset(self) -> None:
        """After a reconnection: read static points again (the device may have been replaced)."""
        self._static_done = False

    async def read(self) -> dict[str, Scalar]:
        """Every readable point's value; raises CommunicationError when the device does not answer."""
        raw: dict[str, int | float | str] = {}
        if not self._static_done:
            self._static_blocks = await self._read_blocks(self._static_blocks, raw)
            self._static_done = True
        self._blocks = await self._read_blocks(self._blocks, raw)
        self.raw.update(raw)
        return self._values(raw)

    async def _read_blocks(self, blocks: list[ReadBlock], raw: dict[str, int | float | str]) -> list[ReadBlock]:
        """Reads `blocks` into `raw`; returns the blocks to use next time (refused ones split)."""
        out: list[ReadBlock] = []
        pending = list(blocks)
        while pending:
            block = pending.pop(0)
            try:
                registers = await self.link.read(self.unit, block.function, block.address, block.count, self.policy)
            except ModbusDeviceError as exc:
                self.exceptions += 1
                parts = split(block)
                if len(parts) > 1:
                    self._report(block, exc, "reading it in smaller parts")
                    pending[:0] = parts  # try the parts in this same poll
                    continue
                self._report(block, exc, "its points are left out")
                out.append(block)
                continue
            out.append(block)
            for p in block.points:
                offset = p.address - block.address
                raw[p.name] = decode_raw(p.dtype, registers[offset : offset + p.length], p.word_order)
        return out

    def _report(self, block: ReadBlock, exc: ModbusDeviceError, action: str) -> None:
        key = (block.describe(), exc.code)
        if key in self._reported:
            return
        self._reported.add(key)
        log.error(
            "device refused a read",
            extra={
                "device": self.device_id,
                "registers": block.describe(),
                "points": ", ".join(p.name for p in block.points),
                "error": str(exc),
                "action": action,
            },
        )

    def _values(self, raw: Mapping[str, int | float | str]) -> dict[str, Scalar]:
        values: dict[str, Scalar] = {}
        for name, r in raw.items():
            p = self._by_name[name]
            if not p.channel or _invalid(p, r):
                continue
            if p.dtype is DataType.BOOL:
                values[name] = bool(r)
                continue
            if p.bit is not None:
                values[name] = bit_of(r, p.bit)
                continue
            if isinstance(r, str):
                values[name] = r
                continue
            exponent = self._exponent(p, raw)
            if exponent is None:
                continue  # scale factor missing or "not implemented": the value means nothing
            values[name] = scaled(r, p.scale, exponent, p.offset)
        return values

    def _exponent(self, p: Point, raw: Mapping[str, int | float | str]) -> int | None:
        if p.scale_register is None:
            return p.exponent
        sf_point = self._by_name.get(p.scale_register)
        if sf_point is None:
            return None  # not in this device's map (a SunSpec model shorter than its definition)
        sf = raw.get(p.scale_register, self.raw.get(p.scale_register))
        if not isinstance(sf, int) or _invalid(sf_point, sf):
            return None
        return p.exponent + sf

    # -- writes ------------------------------------------------------------------------------------

    def encode(self, p: Point, value: float) -> list[int]:
        """Registers (or one 0/1 bit for a coil) that set `p` to the engineering value `value`."""
        if p.function is Function.COIL:
            return [1 if value else 0]
        exponent = self._exponent(p, self.raw)
        if exponent is None:
            raise ScaleUnknownError(f"{p.name}: scale factor {p.scale_register} not known yet")
        raw = unscaled(value, p.dtype, p.scale, exponent, p.offset)
        if p.dtype is DataType.STRING or p.bit is not None:
            raise EncodeError(f"{p.name}: cannot write {p.dtype.value} values")
        return encode_raw(p.dtype, raw, p.word_order)

    async def write(self, p: Point, value: float) -> None:
        registers = self.encode(p, value)
        if p.function is Function.COIL:
            await self.link.write_coil(self.unit, p.address, bool(registers[0]), self.policy)
        else:
            await self.link.write_registers(
                self.unit, p.address, registers, self.policy, multiple=self.map.write_multiple
            )


def _invalid(p: Point, raw: int | float | str) -> bool:
    if isinstance(raw, float) and math.isnan(raw):
        return True
    return raw in p.invalid
