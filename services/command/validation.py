"""Checks a new command must pass before it is stored, each failing with its ErrorInfo reason.

The channel declaration comes from what the edge reported in its Hello (app.edge_inventory): the
device's channels with units, static limits, enums, access and the input channels that carry its
dynamic limits. Dynamic limits come from the latest telemetry, which must be fresh.
"""

from __future__ import annotations

import datetime as dt
import math

import grpc
from emma.common.v1 import errors_pb2, types_pb2
from emma.edge.v1 import edge_link_pb2
from google.protobuf import duration_pb2

from services.errors import ApiError, invalid_field
from services.names import CHANNEL_ADDRESS

TELEMETRY_MAX_AGE = dt.timedelta(seconds=30)
ISSUED_TIME_SKEW = dt.timedelta(seconds=60)
QUEUE_CAP = 10_000
RATE_LIMIT_PER_S = 10
# How long a command (or each child of a fleet dispatch) may wait for delivery.
DEFAULT_TTL = dt.timedelta(minutes=5)
MIN_TTL = dt.timedelta(seconds=1)
MAX_TTL = dt.timedelta(hours=24)
# How long CreateCommand may wait for its command's final state (final_state_wait): long enough for an
# edge's control cycle and its acks, short enough that an answer never outlives a caller's patience.
MAX_FINAL_STATE_WAIT = dt.timedelta(seconds=30)
# An address is echoed in a refusal only up to this many characters (it may be huge).
_ECHO_CHARS = 80
WRITABLE = {types_pb2.CHANNEL_ACCESS_READ_WRITE, types_pb2.CHANNEL_ACCESS_WRITE_ONLY}


def _error(code: grpc.StatusCode, reason: int, message: str, **metadata: str) -> ApiError:
    return ApiError(code, reason, message, metadata=metadata)


def _clipped(text: str) -> str:
    return text if len(text) <= _ECHO_CHARS else text[:_ECHO_CHARS] + "…"


def ttl_of(ttl: duration_pb2.Duration | None, field: str) -> dt.timedelta:
    """A command's ttl (None: not set, the default), or FIELD_INVALID outside MIN_TTL..MAX_TTL.

    Both CreateCommand and CreateFleetDispatch use it: an unchecked ttl of thousands of years would
    overflow when the expiry is computed.
    """
    if ttl is None:
        return DEFAULT_TTL
    value = ttl.ToTimedelta()
    if not MIN_TTL <= value <= MAX_TTL:
        raise invalid_field(field, "must be between 1 s and 24 h")
    return value


def final_state_wait_of(wait: duration_pb2.Duration | None, field: str) -> dt.timedelta:
    """CreateCommand's final_state_wait (zero when not set: answer once stored), or FIELD_INVALID outside
    0..MAX_FINAL_STATE_WAIT."""
    if wait is None:
        return dt.timedelta(0)
    value = wait.ToTimedelta()
    if not dt.timedelta(0) <= value <= MAX_FINAL_STATE_WAIT:
        raise invalid_field(field, f"must be between 0 s and {MAX_FINAL_STATE_WAIT.seconds} s")
    return value


def check_address(address: str) -> str:
    """The device id of a `device/Channel` address, or FIELD_INVALID."""
    if not CHANNEL_ADDRESS.match(address):
        raise _error(
            grpc.StatusCode.INVALID_ARGUMENT,
            errors_pb2.ERROR_REASON_FIELD_INVALID,
            f"command.channel {_clipped(address)!r} is not a device/Channel address",
            field="command.channel",
        )
    return address.split("/", 1)[0]


def spec_in_inventory(inventory: bytes | None, address: str) -> types_pb2.ChannelSpec:
    """The declaration of `device/Channel` in the device's inventory entry, or CHANNEL_NOT_FOUND."""
    device_id, name = address.split("/", 1)
    if inventory is not None:
        item = edge_link_pb2.DeviceInventoryItem.FromString(bytes(inventory))
        for spec in item.channels:
            if spec.name == name:
                return spec
    raise _error(
        grpc.StatusCode.NOT_FOUND,
        errors_pb2.ERROR_REASON_CHANNEL_NOT_FOUND,
        f"the edge has no channel {address}" if inventory is not None else f"the edge has no device {device_id}",
        channel=address,
    )


def check_static(spec: types_pb2.ChannelSpec, address: str, value: float) -> None:
    if spec.access not in WRITABLE:
        raise _error(
            grpc.StatusCode.FAILED_PRECONDITION,
            errors_pb2.ERROR_REASON_CHANNEL_NOT_WRITABLE,
            f"{address} is read-only",
            channel=address,
        )
    if not math.isfinite(value):
        raise _error(
            grpc.StatusCode.INVALID_ARGUMENT,
            errors_pb2.ERROR_REASON_FIELD_INVALID,
            "command.value must be a finite number",
            field="command.value",
        )
    if spec.enum_values and int(value) not in {e.number for e in spec.enum_values}:
        allowed = ", ".join(f"{e.number} ({e.label})" for e in spec.enum_values)
        raise _error(
            grpc.StatusCode.INVALID_ARGUMENT,
            errors_pb2.ERROR_REASON_VALUE_NOT_IN_ENUM,
            f"{value:g} is not one of {allowed}",
            channel=address,
        )
    low = spec.min_value if spec.HasField("min_value") else -math.inf
    high = spec.max_value if spec.HasField("max_value") else math.inf
    if not low <= value <= high:
        raise _error(
            grpc.StatusCode.INVALID_ARGUMENT,
            errors_pb2.ERROR_REASON_VALUE_OUT_OF_RANGE,
            f"{value:g} {spec.unit} is outside {low:g}..{high:g} {spec.unit}",
            channel=address,
            min_value=f"{low:g}",
            max_value=f"{high:g}",
        )


Latest = dict[str, tuple[dt.datetime, float]]


def check_dynamic(latest: Latest, spec: types_pb2.ChannelSpec, address: str, value: float, now: dt.datetime) -> None:
    """Positive values are limited by dynamic_max_channel, negative ones by dynamic_min_channel.

    `latest`: the device's latest values (`device/Channel` -> (sample time, value)), read with the edge.
    """
    limit_name = spec.dynamic_max_channel if value > 0 else spec.dynamic_min_channel if value < 0 else ""
    if not limit_name:
        return
    device_id = address.split("/", 1)[0]
    limit_channel = f"{device_id}/{limit_name}"
    found = latest.get(limit_channel)
    if found is None or now - found[0] > TELEMETRY_MAX_AGE:
        age = "no telemetry" if found is None else f"telemetry {(now - found[0]).total_seconds():.0f} s old"
        raise _error(
            grpc.StatusCode.FAILED_PRECONDITION,
            errors_pb2.ERROR_REASON_TELEMETRY_STALE,
            f"cannot check {limit_channel}: {age} (at most {TELEMETRY_MAX_AGE.seconds} s)",
            limit_channel=limit_channel,
        )
    limit = found[1]
    if abs(value) > abs(limit):
        raise _error(
            grpc.StatusCode.FAILED_PRECONDITION,
            errors_pb2.ERROR_REASON_VALUE_EXCEEDS_DYNAMIC_LIMIT,
            f"|{value:g}| {spec.unit} exceeds {limit_channel} = {limit:g}",
            limit_channel=limit_channel,
            limit_value=f"{limit:g}",
        )


def check_issued_time(issued: dt.datetime, now: dt.datetime) -> None:
    if abs(issued - now) > ISSUED_TIME_SKEW:
        raise _error(
            grpc.StatusCode.INVALID_ARGUMENT,
            errors_pb2.ERROR_REASON_ISSUED_TIME_SKEW,
            f"issued_time is {(issued - now).total_seconds():+.0f} s from the server's clock "
            f"(at most {ISSUED_TIME_SKEW.seconds} s)",
        )


def rate_limited() -> ApiError:
    return _error(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        errors_pb2.ERROR_REASON_RATE_LIMITED,
        f"at most {RATE_LIMIT_PER_S} commands per second per caller",
        retry_after_ms="1000",
    )


def queue_full() -> ApiError:
    return _error(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        errors_pb2.ERROR_REASON_EDGE_QUEUE_FULL,
        f"the edge already has {QUEUE_CAP} queued commands",
    )
