"""Device profiles: a register map in TOML, in its own file or inline in the site configuration.

A profile describes a device *model* (the same file serves every site with that inverter); the site
configuration says where the device is (host, unit id) and may override the request limits, which
sometimes depend on the gateway in between. See docs/device-profiles.md for the format.
"""

from __future__ import annotations

import dataclasses
import tomllib

from edge_daemon.devices.base import ChannelAccess, DynamicLimit
from edge_daemon.drivers.modbus.codec import DataType
from edge_daemon.drivers.modbus.registers import (
    MAX_BITS_PER_READ,
    MAX_REGISTERS_PER_READ,
    Function,
    Point,
    RegisterMap,
)
from edge_daemon.drivers.params import DeviceReader

WORD_ORDERS = ("big", "little")
# Keys that may appear in a profile's [profile] table and, overriding it, in the device's table.
LIMIT_KEYS = ("word_order", "max_registers_per_read", "max_bits_per_read", "max_gap", "write_multiple")
_REGISTER_KEYS = frozenset(
    {"name", "address", "function", "type", "length", "word_order", "scale", "scale_register", "offset",
     "bit", "unit", "access", "description", "min", "max", "min_from", "max_from", "invalid", "static"}
)  # fmt: skip


def parse_register_map(device: DeviceReader) -> RegisterMap:
    """The device's map: from `profile = "file.toml"` or from inline `[[devices.registers]]`."""
    if device.has("profile"):
        if device.has("registers"):
            raise device.error("registers", "give either profile or registers, not both")
        path = device.path_value("profile")
        try:
            with path.open("rb") as f:
                doc = tomllib.load(f)
        except OSError as exc:
            raise device.error("profile", f"cannot read {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise device.error("profile", f"{path}: invalid TOML: {exc}") from None
        profile = DeviceReader(doc, path, "", device.device_id)
        settings = profile.sub("profile")
        settings.get_optional_str("name")
        settings.get_optional_str("description")
        defaults = _limits(settings, {})
        settings.finish()
        entries = profile.device_subs("registers")
        result = _build(profile, entries, _limits(device, defaults))
        profile.finish()
        return result
    return _build(device, device.device_subs("registers"), _limits(device, {}))


def _limits(r: DeviceReader, base: dict[str, object]) -> dict[str, object]:
    out = dict(base)
    if r.has("word_order"):
        out["word_order"] = r.get_choice("word_order", WORD_ORDERS)
    if r.has("max_registers_per_read"):
        out["max_registers_per_read"] = r.get_int("max_registers_per_read", minimum=1, maximum=MAX_REGISTERS_PER_READ)
    if r.has("max_bits_per_read"):
        out["max_bits_per_read"] = r.get_int("max_bits_per_read", minimum=1, maximum=MAX_BITS_PER_READ)
    if r.has("max_gap"):
        out["max_gap"] = r.get_int("max_gap", minimum=0, maximum=MAX_REGISTERS_PER_READ)
    if r.has("write_multiple"):
        out["write_multiple"] = r.get_bool("write_multiple")
    r.mark_used(*LIMIT_KEYS)
    return out


def _build(owner: DeviceReader, entries: list[DeviceReader], limits: dict[str, object]) -> RegisterMap:
    if not entries:
        raise owner.error("registers", "a register map needs at least one [[registers]] entry")
    word_order = str(limits.get("word_order", "big"))
    max_regs = int(str(limits.get("max_registers_per_read", MAX_REGISTERS_PER_READ)))
    points: list[Point] = []
    readers: dict[str, DeviceReader] = {}
    for r in entries:
        p = _point(r, word_order, max_regs)
        if p.name in readers:
            raise r.error("name", f"duplicate register name {p.name!r}")
        readers[p.name] = r
        points.append(p)
        r.finish()
    by_name = {p.name: p for p in points}
    scale_points = {p.scale_register for p in points if p.scale_register}
    for p in points:
        if p.scale_register is None:
            continue
        sf = by_name.get(p.scale_register)
        r = readers[p.name]
        if sf is None:
            raise r.error("scale_register", f"no register named {p.scale_register!r} in this map")
        if sf.access is not ChannelAccess.READ or not sf.dtype.is_integer or sf.scale_register or sf.bit is not None:
            raise r.error("scale_register", f"{p.scale_register!r} must be a readable integer register")
    for i, p in enumerate(points):
        points[i] = _dynamic_limits(readers[p.name], p, by_name, scale_points)
    # A register used only as a scale factor is not a channel of its own.
    final = tuple(dataclasses.replace(p, channel=False) if p.name in scale_points else p for p in points)
    return RegisterMap(
        final,
        max_registers_per_read=max_regs,
        max_bits_per_read=int(str(limits.get("max_bits_per_read", MAX_BITS_PER_READ))),
        max_gap=int(str(limits.get("max_gap", 0))),
        write_multiple=bool(limits.get("write_multiple", False)),
    )


def _dynamic_limits(r: DeviceReader, p: Point, by_name: dict[str, Point], scale_points: set[str]) -> Point:
    """`max_from = "Name"` / `min_from = "-Name"`: a setpoint's limits read from other entries of the
    map when a setpoint is checked: positive values at most Name's value, negative ones at least minus
    Name's value (a BMS's allowed discharge and charge power for a power that is negative when
    charging). Both the edge and the cloud check setpoints against them (the contract's
    dynamic_max_channel and dynamic_min_channel, the latter compared with the absolute value, hence
    the required minus), and refuse one while a limit is missing or stale."""
    found: dict[str, DynamicLimit] = {}
    for key in ("min_from", "max_from"):
        text = r.get_optional_str(key)
        if text is None:
            continue
        if p.access is not ChannelAccess.WRITE:
            raise r.error(key, 'only a setpoint (access = "write") has limits')
        if text.startswith("-") != (key == "min_from"):
            form = '"-Name": negative setpoints at least minus its value' if key == "min_from" else '"Name"'
            raise r.error(key, f"must be {form}, got {text!r}")
        name = text.removeprefix("-")
        source = by_name.get(name)
        if source is None:
            raise r.error(key, f"no register named {name!r} in this map")
        numeric = source.dtype not in (DataType.STRING, DataType.BOOL) and source.bit is None
        if source.access is not ChannelAccess.READ or not numeric or name in scale_points:
            raise r.error(key, f"{name!r} must be a readable numeric register that is a channel itself")
        found[key] = DynamicLimit(name, -1.0 if text.startswith("-") else 1.0)
    if not found:
        return p
    return dataclasses.replace(p, dynamic_min=found.get("min_from"), dynamic_max=found.get("max_from"))


def _point(r: DeviceReader, word_order: str, max_regs: int) -> Point:
    unknown = sorted(set(r.table) - _REGISTER_KEYS)
    if unknown:
        raise r.error(unknown[0], "unknown key")
    name = r.get_channel_name("name")
    function = Function(r.get_choice("function", tuple(f.value for f in Function), "holding"))
    address = r.get_int("address", minimum=0, maximum=65535)
    access = ChannelAccess.WRITE if r.get_choice("access", ("read", "write"), "read") == "write" else ChannelAccess.READ
    if access is ChannelAccess.WRITE and not function.writable:
        raise r.error("access", f"{function.value} values are read-only in Modbus (use holding or coil)")
    if function.is_bit:
        dtype = DataType(r.get_choice("type", ("bool",), "bool"))
    else:
        names = tuple(t.value for t in DataType if t is not DataType.BOOL)
        dtype = DataType(r.get_choice("type", names))
    length = dtype.words
    if dtype is DataType.STRING:
        length = r.get_int("length", minimum=1, maximum=max_regs)
        if access is ChannelAccess.WRITE:
            raise r.error("access", "strings cannot be written")
    elif r.has("length"):
        raise r.error("length", "only strings have a length (in registers)")
    if address + length > 65536:
        raise r.error("address", f"{address} + {length} registers runs past 65535")
    bit = None
    if r.has("bit"):
        if not dtype.is_integer:
            raise r.error("bit", "bits can only be taken from integer types")
        bit = r.get_int("bit", minimum=0, maximum=16 * dtype.words - 1)
        if access is ChannelAccess.WRITE:
            raise r.error("bit", "single bits of a register cannot be written (use a coil)")
    scale = r.get_float("scale", 1.0)
    if scale == 0:
        raise r.error("scale", "must not be 0")
    scale_register = r.get_optional_str("scale_register")
    numeric_only = dtype in (DataType.STRING, DataType.BOOL) or bit is not None
    for key in ("scale", "offset", "scale_register", "min", "max", "min_from", "max_from"):
        if numeric_only and r.has(key):
            raise r.error(key, f"does not apply to {dtype.value if bit is None else 'bit'} values")
    minimum = r.get_optional_float("min")
    maximum = r.get_optional_float("max")
    if minimum is not None and maximum is not None and minimum > maximum:
        raise r.error("min", f"must not exceed max ({maximum:g})")
    invalid = r.get_int_list("invalid")
    r.mark_used("min_from", "max_from")  # read by _dynamic_limits, once every entry's name is known
    return Point(
        name=name,
        address=address,
        function=function,
        dtype=dtype,
        length=length,
        access=access,
        word_order=r.get_choice("word_order", WORD_ORDERS, word_order),
        scale=scale,
        offset=r.get_float("offset", 0.0),
        scale_register=scale_register,
        bit=bit,
        unit=r.get_str("unit", ""),
        description=r.get_str("description", ""),
        minimum=minimum,
        maximum=maximum,
        invalid=frozenset(invalid),
        static=r.get_bool("static", False),
    )
