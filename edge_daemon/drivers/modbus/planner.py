"""Grouping points into as few read requests as the device allows.

Points of one function are sorted by address and packed greedily into a block while the block stays
within the per-request limit and the hole before the next point is at most `max_gap` registers. When
the device refuses a block (an exception such as ILLEGAL DATA ADDRESS, typically because the block
crosses an undefined register), `split` breaks it into smaller ones: first at its holes, then into
single points, so one bad map entry costs one request instead of every value in its block.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from edge_daemon.drivers.modbus.registers import Function, Point, RegisterMap


@dataclass(frozen=True, slots=True)
class ReadBlock:
    function: Function
    address: int
    count: int
    points: tuple[Point, ...]

    @property
    def end(self) -> int:
        return self.address + self.count

    def describe(self) -> str:
        return f"{self.function.value} {self.address}..{self.end - 1}"


def plan(points: Iterable[Point], register_map: RegisterMap) -> list[ReadBlock]:
    by_function: dict[Function, list[Point]] = {}
    for p in points:
        by_function.setdefault(p.function, []).append(p)
    blocks: list[ReadBlock] = []
    for function in Function:
        group = sorted(by_function.get(function, ()), key=lambda p: (p.address, p.end))
        limit = register_map.max_bits_per_read if function.is_bit else register_map.max_registers_per_read
        blocks += _pack(function, group, limit, register_map.max_gap)
    return blocks


def _pack(function: Function, points: list[Point], limit: int, max_gap: int) -> list[ReadBlock]:
    blocks: list[ReadBlock] = []
    current: list[Point] = []
    start = end = 0
    for p in points:
        if current and p.address - end <= max_gap and max(end, p.end) - start <= limit:
            current.append(p)
            end = max(end, p.end)
            continue
        if current:
            blocks.append(ReadBlock(function, start, end - start, tuple(current)))
        current, start, end = [p], p.address, p.end
    if current:
        blocks.append(ReadBlock(function, start, end - start, tuple(current)))
    return blocks


def split(block: ReadBlock) -> list[ReadBlock]:
    """Smaller blocks covering the same points: contiguous runs if the block spans holes, else one per
    point. A single point cannot be split (returns it unchanged)."""
    runs = _pack(block.function, list(block.points), block.count, 0)
    if len(runs) > 1:
        return runs
    if len(block.points) == 1:
        return [block]
    # max_gap -1: only overlapping points (bits of one status word) stay together; they are one
    # register on the wire.
    return _pack(block.function, list(block.points), block.count, -1)
