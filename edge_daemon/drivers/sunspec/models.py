"""SunSpec model definitions, read from the JSON files that pysunspec2 ships (the SunSpec Alliance's
official models), turned into register points and channels.

Channel names are `<Prefix>_<Point>`: `Common_SN`, `Inverter_W`, `Storage_WChaMax`, `Battery_SoC`;
repeating MPPT modules are numbered from 1: `Mppt1_DCW`. The prefix keeps the models apart (inverter
and battery both have a `W`). Header points (ID, L), padding and scale factors (`*_SF`) are not
channels: scale factors are applied to the values they scale. Addresses are not known until discovery,
so points are built from a model's offsets and the address where discovery found it.

"Not implemented" raw values (0x8000 for int16, 0xFFFF for uint16/enum16/bitfield16, 0 for
accumulators, NaN for floats, an empty string, ...) come from pysunspec2's table as well; such values
are not published.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

from sunspec2 import mb as sunspec_mb  # type: ignore[import-untyped]

from edge_daemon.devices.base import ChannelAccess, ChannelSpec
from edge_daemon.drivers.modbus.codec import DataType
from edge_daemon.drivers.modbus.registers import Function, Point

PREFIXES: Final = {
    1: "Common",
    101: "Inverter",
    102: "Inverter",
    103: "Inverter",
    124: "Storage",
    160: "Mppt",
    802: "Battery",
}
SUPPORTED_MODELS: Final = tuple(PREFIXES)
# Points that describe the device rather than measure it: read once per connection.
STATIC_MODELS: Final = frozenset({1})

_TYPES: Final = {
    "int16": DataType.S16,
    "uint16": DataType.U16,
    "count": DataType.U16,
    "acc16": DataType.U16,
    "enum16": DataType.U16,
    "bitfield16": DataType.U16,
    "sunssf": DataType.S16,
    "int32": DataType.S32,
    "uint32": DataType.U32,
    "acc32": DataType.U32,
    "enum32": DataType.U32,
    "bitfield32": DataType.U32,
    "ipaddr": DataType.U32,
    "int64": DataType.S64,
    "uint64": DataType.U64,
    "acc64": DataType.U64,
    "float32": DataType.FLOAT32,
    "float64": DataType.FLOAT64,
    "string": DataType.STRING,
}
# Occupy registers but carry nothing a controller or dashboard could use.
_SKIPPED: Final = frozenset({"pad", "ipv6addr", "eui48"})


@dataclass(frozen=True, slots=True)
class SpecPoint:
    name: str
    type: str
    size: int
    offset: int  # registers from the start of its group (the model's ID register for top-level points)
    sf: str | int | None
    units: str
    access: str
    static: bool
    label: str


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    points: tuple[SpecPoint, ...]
    length: int


@dataclass(frozen=True, slots=True)
class ModelDef:
    id: int
    name: str
    fixed: Group  # includes ID and L
    repeating: Group | None

    @property
    def fixed_length(self) -> int:
        """Registers of the fixed part after ID and L (what L counts before any repeating group)."""
        return self.fixed.length - 2


def _group(doc: dict[str, Any]) -> Group:
    points: list[SpecPoint] = []
    offset = 0
    for p in doc.get("points", []):
        ptype = str(p["type"])
        size = int(p.get("size") or sunspec_mb.point_type_info[ptype].len)
        points.append(
            SpecPoint(
                name=str(p["name"]),
                type=ptype,
                size=size,
                offset=offset,
                sf=p.get("sf"),
                units=str(p.get("units", "")),
                access=str(p.get("access", "R")),
                static=p.get("static") == "S",
                label=str(p.get("label", p["name"])),
            )
        )
        offset += size
    return Group(str(doc["name"]), tuple(points), offset)


@functools.cache
def model_def(model_id: int) -> ModelDef:
    path = resources.files("sunspec2").joinpath("models", "json", f"model_{model_id}.json")
    doc = json.loads(path.read_text(encoding="utf-8"))
    top = doc["group"]
    groups = top.get("groups", [])
    if len(groups) > 1 or any(g.get("groups") for g in groups):
        raise ValueError(f"model {model_id}: nested or several repeating groups are not supported")
    return ModelDef(int(doc["id"]), str(top["name"]), _group(top), _group(groups[0]) if groups else None)


def unimplemented(ptype: str) -> frozenset[int | float | str]:
    value = sunspec_mb.unimpl_value[ptype]
    if ptype == "string":
        return frozenset({""})  # the codec drops NUL padding: an all-NUL string reads as ""
    if ptype in ("float32", "float64"):
        return frozenset()  # a NaN pattern; NaN is always "not available"
    return frozenset({int(value)})


def _channel(prefix: str, name: str) -> str:
    return f"{prefix}_{name}"


def _point_names(model: ModelDef, modules: int) -> list[tuple[str, SpecPoint, str]]:
    """(channel name, point, name of the prefix its scale factors live under) for every point."""
    prefix = PREFIXES[model.id]
    out = [(_channel(prefix, p.name), p, prefix) for p in model.fixed.points if p.name not in ("ID", "L")]
    if model.repeating is not None:
        for i in range(1, modules + 1):
            out += [(_channel(f"{prefix}{i}", p.name), p, prefix) for p in model.repeating.points]
    return out


def is_channel(p: SpecPoint) -> bool:
    return p.type not in _SKIPPED and p.type != "sunssf"


def channel_specs(models: tuple[int, ...], modules: int, writable: frozenset[str]) -> tuple[ChannelSpec, ...]:
    specs: dict[str, ChannelSpec] = {}
    for model_id in models:
        for name, p, _ in _point_names(model_def(model_id), modules):
            if is_channel(p) and name not in specs:
                access = ChannelAccess.WRITE if name in writable else ChannelAccess.READ
                specs[name] = ChannelSpec(name, p.units, access, p.label)
    return tuple(specs.values())


def writable_points(models: tuple[int, ...], modules: int) -> frozenset[str]:
    """Channel names of the points the models allow writing (access RW)."""
    return frozenset(
        name
        for model_id in models
        for name, p, _ in _point_names(model_def(model_id), modules)
        if is_channel(p) and p.access == "RW" and p.type != "string"
    )


def points_at(model_id: int, start: int, length: int, modules: int, writable: frozenset[str]) -> list[Point]:
    """Register points of model `model_id` found at `start` (its ID register) with length L.

    Points beyond L (an older, shorter revision of the model) are left out, and so are modules beyond
    what L holds or what the configuration declared channels for.
    """
    model = model_def(model_id)
    end = start + 2 + length
    prefix = PREFIXES[model_id]
    present = 0
    if model.repeating is not None and model.repeating.length:
        present = max(0, (length - model.fixed_length) // model.repeating.length)
    points: list[Point] = []
    for p in model.fixed.points:
        if p.name not in ("ID", "L"):
            points += _point(prefix, prefix, p, start + p.offset, end, writable, model_id)
    if model.repeating is not None:
        for i in range(1, min(present, modules) + 1):
            base = start + model.fixed.length + (i - 1) * model.repeating.length
            for p in model.repeating.points:
                points += _point(f"{prefix}{i}", prefix, p, base + p.offset, end, writable, model_id)
    return points


def _point(
    prefix: str, sf_prefix: str, p: SpecPoint, address: int, end: int, writable: frozenset[str], model_id: int
) -> list[Point]:
    if p.type in _SKIPPED or address + p.size > end:
        return []
    name = _channel(prefix, p.name)
    scale_register: str | None = None
    exponent = 0
    if isinstance(p.sf, str):
        # A module's scale factors are in the model's fixed part (e.g. MPPT DCA_SF).
        scale_register = _channel(sf_prefix, p.sf)
    elif isinstance(p.sf, int):
        exponent = p.sf
    dtype = _TYPES[p.type]
    return [
        Point(
            name=name,
            address=address,
            function=Function.HOLDING,
            dtype=dtype,
            length=p.size,
            access=ChannelAccess.WRITE if name in writable else ChannelAccess.READ,
            exponent=exponent,
            scale_register=scale_register,
            unit=p.units,
            description=p.label,
            invalid=unimplemented(p.type),
            static=model_id in STATIC_MODELS or p.static,
            channel=p.type != "sunssf",
        )
    ]
