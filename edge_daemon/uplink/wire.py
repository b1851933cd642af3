"""Conversions between the daemon's objects and emma.edge.v1 messages (no I/O, no state).

Channel addresses: the cloud accepts `device/Channel` with both parts `[A-Za-z0-9][A-Za-z0-9_.-]{0,62}`
(services/names.py). The daemon's own channels start with an underscore (`_cycle/LatenessMs`,
`_daemon/DroppedSamples`, `_schedule/InSafeMode`), which the cloud refuses, so on the wire such a
channel's device part is `edge.<name>`: `_cycle/LatenessMs` travels as `edge.cycle/LatenessMs`. Device
ids of the edge never contain a dot, so the mapped names cannot collide with a real device's channels.
A channel that cannot be expressed at all (deeper paths, over-long parts) is not telemetry on the wire:
`wire_channel` returns None and the batch builder leaves it out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Final

from emma.common.v1 import types_pb2
from emma.edge.v1 import edge_link_pb2
from google.protobuf import duration_pb2, timestamp_pb2

from edge_daemon.channel_registry import RegisteredChannel
from edge_daemon.channels import AckReason, Number
from edge_daemon.devices.base import Device

PROTOCOL_VERSION: Final = 1
INTERNAL_DEVICE_PREFIX: Final = "edge."
_PART = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
CLOUD_CHANNEL_RE: Final = re.compile(rf"({_PART})/({_PART})")

# Device kinds by driver type name; anything unknown is OTHER.
_KINDS: Final = (
    ("battery", types_pb2.DEVICE_KIND_BATTERY),
    ("pv", types_pb2.DEVICE_KIND_PV_INVERTER),
    ("grid_meter", types_pb2.DEVICE_KIND_GRID_METER),
    ("ev_charger", types_pb2.DEVICE_KIND_EV_CHARGER),
    ("flexible_load", types_pb2.DEVICE_KIND_FLEXIBLE_LOAD),
    ("load", types_pb2.DEVICE_KIND_LOAD),
)


def wire_channel(name: str) -> str | None:
    """The address the cloud knows `name` by, or None if it has none (see the module doc)."""
    if CLOUD_CHANNEL_RE.fullmatch(name):
        return name
    device, sep, channel = name.partition("/")
    if sep and device.startswith("_") and len(device) > 1:
        mapped = f"{INTERNAL_DEVICE_PREFIX}{device[1:]}/{channel}"
        if CLOUD_CHANNEL_RE.fullmatch(mapped):
            return mapped
    return None


def ack_reason_code(reason: str) -> edge_link_pb2.CommandAckReason.ValueType:
    """CommandAck.reason_code for a reason string the journal holds; UNSPECIFIED for "" (EXECUTED) and
    for strings no AckReason has (the string still travels in CommandAck.reason)."""
    try:
        member = AckReason(reason)
    except ValueError:
        return edge_link_pb2.COMMAND_ACK_REASON_UNSPECIFIED
    return edge_link_pb2.CommandAckReason.Value(f"COMMAND_ACK_REASON_{member.name}")


def wire_value(value: Number) -> float | None:
    """A sample value as the wire's double: bools as 0/1; None for NaN and infinities."""
    number = float(value)
    return number if math.isfinite(number) else None


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ns = round(seconds * 1e9)
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def timestamp_ms(ms: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def seconds(ts: timestamp_pb2.Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def duration_s(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


def channel_descriptors(entries: Iterable[RegisteredChannel]) -> list[edge_link_pb2.ChannelDescriptor]:
    """Registry entries as channel-table rows; entries without a wire address are left out."""
    out = []
    for entry in entries:
        address = wire_channel(entry.name)
        if address is not None:
            out.append(edge_link_pb2.ChannelDescriptor(index=entry.index, channel=address, unit=entry.unit))
    return out


def device_kind(type_name: str) -> types_pb2.DeviceKind.ValueType:
    for needle, kind in _KINDS:
        if needle in type_name:
            return kind
    return types_pb2.DEVICE_KIND_OTHER


def device_inventory(devices: Sequence[Device]) -> list[edge_link_pb2.DeviceInventoryItem]:
    items = []
    for device in devices:
        specs = []
        for spec in device.channels:
            writable = spec.writable
            cs = types_pb2.ChannelSpec(
                name=spec.name,
                unit=spec.unit,
                category=types_pb2.CHANNEL_CATEGORY_OUTPUT if writable else types_pb2.CHANNEL_CATEGORY_INPUT,
                access=types_pb2.CHANNEL_ACCESS_READ_WRITE if writable else types_pb2.CHANNEL_ACCESS_READ_ONLY,
                value_type=types_pb2.VALUE_TYPE_DOUBLE,
                description=spec.description,
            )
            if spec.minimum is not None:
                cs.min_value = spec.minimum
            if spec.maximum is not None:
                cs.max_value = spec.maximum
            # The edge's sign convention (> 0 discharging) puts the discharge limit on positive values.
            if spec.dynamic_max is not None:
                cs.dynamic_max_channel = spec.dynamic_max.channel
            if spec.dynamic_min is not None:
                cs.dynamic_min_channel = spec.dynamic_min.channel
            specs.append(cs)
        items.append(
            edge_link_pb2.DeviceInventoryItem(
                device_id=device.device_id,
                kind=device_kind(device.type_name),
                driver=device.type_name,
                channels=specs,
            )
        )
    return items
