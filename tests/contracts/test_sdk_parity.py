"""Byte-for-byte and JSON parity between the betterproto2 SDK (emma_sdk) and protobuf (emma.*_pb2).

Three layers:

1. A hand-written corpus of (protobuf message, SDK message) pairs built independently from the same
   values: every ConnectRequest/ConnectResponse oneof variant, FleetDispatch targets (including oneof
   members set to their default value), the skipped_edges map, Timestamps and Durations at their
   bounds, negative and 64-bit integers at the int64/uint64 boundaries, packed repeated arrays, proto3
   optional fields set to 0.0 versus unset, known and unknown enum values, nested messages.
   `assert_parity` checks both directions of the binary encoding, byte equality against protobuf's
   deterministic encoding, and the proto3 canonical JSON both ways.
2. A hypothesis sweep over every message type of every contract file, with values drawn from the
   descriptor.
3. Pinned divergences: what betterproto2 0.10.0 does differently from protobuf, asserted exactly as it
   happens today (so a betterproto2 upgrade that changes any of it fails here and gets re-reviewed).
   The sweep in 2 keeps its values inside the domain where parity holds; every restriction it makes
   points at the test in 3 that pins what happens outside it.

Unknown fields: betterproto2 keeps them (Message._unknown_fields) and writes them back after the known
fields, which is exactly what protobuf does; section 3 pins the places where they are still lost.

Byte equality note: both libraries write fields in field-number order (the contracts declare every
message's fields in number order; `test_contract_fields_are_declared_in_number_order` guards that). The
one legitimate difference is map entry order: protobuf's deterministic mode uses its own key order
(upb's, which is not even lexicographic: "aa" sorts before "a"), the SDK writes dict insertion order.
Both are valid encodings of the same map; `test_map_entry_order_is_insertion_order` pins it.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import betterproto2
import pytest
from emma.command.v1 import command_pb2
from emma.common.v1 import errors_pb2, types_pb2
from emma.edge.v1 import edge_link_pb2
from emma.identity.v1 import identity_pb2
from emma.registry.v1 import registry_pb2
from emma.telemetry.v1 import telemetry_pb2
from emma_sdk.emma.command import v1 as sdk_command
from emma_sdk.emma.common import v1 as sdk_common
from emma_sdk.emma.edge import v1 as sdk_edge
from emma_sdk.emma.identity import v1 as sdk_identity  # noqa: F401 (registers the SDK classes)
from emma_sdk.emma.registry import v1 as sdk_registry
from emma_sdk.emma.telemetry import v1 as sdk_telemetry
from emma_sdk.message_pool import default_message_pool
from google.protobuf import descriptor, field_mask_pb2, json_format, message_factory
from google.protobuf import message as pb_message
from google.protobuf.unknown_fields import UnknownFieldSet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.wire import tag, varint

UTC = dt.UTC
FD = descriptor.FieldDescriptor
PB_MODULES = [types_pb2, errors_pb2, edge_link_pb2, telemetry_pb2, command_pb2, registry_pb2, identity_pb2]


def all_message_descriptors() -> list[descriptor.Descriptor]:
    found: list[descriptor.Descriptor] = []

    def walk(desc: descriptor.Descriptor) -> None:
        found.append(desc)
        for nested in desc.nested_types:
            if not nested.GetOptions().map_entry:
                walk(nested)

    for module in PB_MODULES:
        for desc in module.DESCRIPTOR.message_types_by_name.values():
            walk(desc)
    return found


ALL_MESSAGES = all_message_descriptors()


def sdk_class(desc: descriptor.Descriptor) -> type[betterproto2.Message]:
    return default_message_pool.url_to_type[f"type.googleapis.com/{desc.full_name}"]


def pb_class(desc: descriptor.Descriptor) -> type[pb_message.Message]:
    return message_factory.GetMessageClass(desc)


def ts(value: dt.datetime) -> dict[str, int]:
    """A datetime as Timestamp fields, computed with integers only."""
    delta = value - dt.datetime(1970, 1, 1, tzinfo=UTC)
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    seconds, micro = divmod(micros, 1_000_000)
    return {"seconds": seconds, "nanos": micro * 1000}


def canonical_json(message: pb_message.Message) -> dict[str, Any]:
    return json_format.MessageToDict(message)


# --------------------------------------------------------------------------------------------------
# The parity check
# --------------------------------------------------------------------------------------------------


def assert_parity(pb: pb_message.Message, sdk: betterproto2.Message, *, nan: bool = False) -> None:
    """`pb` and `sdk` are the same message: binary both ways, byte for byte, canonical JSON both ways.

    With nan=True the messages hold NaN, which is never equal to itself in protobuf's ==, so protobuf
    messages are compared by their deterministic encoding (the SDK's == treats NaN as equal to NaN).
    """
    pb_cls = type(pb)
    sdk_cls = type(sdk)
    pb_bytes = pb.SerializeToString(deterministic=True)

    def same_pb(a: pb_message.Message, b: pb_message.Message) -> None:
        assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)
        if not nan:
            assert a == b

    # protobuf bytes -> SDK: an equal object.
    from_pb = sdk_cls.parse(pb.SerializeToString())
    assert from_pb == sdk, f"{from_pb!r} != {sdk!r}"
    # SDK bytes -> protobuf: an equal message.
    same_pb(pb_cls.FromString(bytes(sdk)), pb)
    # Byte for byte against protobuf's deterministic encoding, and stable through an SDK round trip.
    assert bytes(sdk) == pb_bytes
    assert bytes(sdk_cls.parse(pb_bytes)) == pb_bytes
    assert sdk.SerializeToString() == pb_bytes

    # proto3 canonical JSON: int64 as strings, enums by name, Timestamps RFC 3339, lowerCamelCase names.
    expected_json = canonical_json(pb)
    assert sdk.to_dict() == expected_json
    assert json.loads(sdk.to_json()) == json.loads(json_format.MessageToJson(pb))
    # JSON back in: the SDK reads protobuf's JSON (camelCase and original names), protobuf reads the SDK's.
    assert sdk_cls.from_dict(expected_json) == sdk
    # (Not byte-compared: a JSON object's key order need not follow the map's deterministic order.)
    same_pb(pb_cls.FromString(bytes(sdk_cls.from_dict(expected_json))), pb)
    assert sdk_cls.from_json(json_format.MessageToJson(pb)) == sdk
    assert sdk_cls.from_dict(json_format.MessageToDict(pb, preserving_proto_field_name=True)) == sdk
    same_pb(json_format.ParseDict(sdk.to_dict(), pb_cls()), pb)
    same_pb(json_format.Parse(sdk.to_json(), pb_cls()), pb)


# --------------------------------------------------------------------------------------------------
# 1. The corpus
# --------------------------------------------------------------------------------------------------

T0 = dt.datetime(2025, 10, 26, 0, 59, 59, 999999, tzinfo=UTC)  # microsecond precision
T1 = dt.datetime(2025, 10, 26, 1, 0, 0, 1000, tzinfo=UTC)  # millisecond precision (3 digits in JSON)
T2 = dt.datetime(2025, 10, 26, 1, 0, 5, tzinfo=UTC)  # whole seconds (no fraction in JSON)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
BEFORE_EPOCH = dt.datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC)
MIN_TIME = dt.datetime(1, 1, 1, tzinfo=UTC)
MAX_TIME = dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
U64_MAX = 2**64 - 1
I64_MAX = 2**63 - 1
I64_MIN = -(2**63)
I32_MIN = -(2**31)
I32_MAX = 2**31 - 1
U32_MAX = 2**32 - 1


@dataclass(frozen=True)
class Case:
    id: str
    pb: pb_message.Message
    sdk: betterproto2.Message


def _hello_case() -> Case:
    pb = edge_link_pb2.ConnectRequest(
        hello=edge_link_pb2.Hello(
            edge="organizations/o1/sites/s1/edges/e1",
            api_key="ek_0123456789abcdef",
            agent_version="1.4.0+build.7",
            protocol_version=U32_MAX,
            edge_time=ts(T0),
            devices=[
                edge_link_pb2.DeviceInventoryItem(
                    device_id="battery_1",
                    kind=types_pb2.DEVICE_KIND_BATTERY,
                    driver="modbus-sunspec",
                    model="BYD HVS 10.2",
                    channels=[
                        types_pb2.ChannelSpec(
                            name="SetActivePower",
                            unit="W",
                            category=types_pb2.CHANNEL_CATEGORY_REQUEST,
                            access=types_pb2.CHANNEL_ACCESS_WRITE_ONLY,
                            value_type=types_pb2.VALUE_TYPE_DOUBLE,
                            min_value=-5000.0,
                            max_value=0.0,
                            dynamic_max_channel="battery_1/MaxChargePower",
                        ),
                        types_pb2.ChannelSpec(
                            name="Mode",
                            value_type=types_pb2.VALUE_TYPE_ENUM,
                            enum_values=[
                                types_pb2.EnumValue(number=I64_MIN, label="lowest"),
                                types_pb2.EnumValue(number=0, label="idle"),
                                types_pb2.EnumValue(number=I64_MAX, label="highest"),
                            ],
                            description="Betriebsmodus (Ladezustand ≥ 10 %)",
                        ),
                    ],
                ),
                edge_link_pb2.DeviceInventoryItem(device_id="meter", kind=types_pb2.DEVICE_KIND_GRID_METER),
            ],
            channel_table=[
                edge_link_pb2.ChannelDescriptor(index=0, channel="meter/ActivePower", unit="W"),
                edge_link_pb2.ChannelDescriptor(index=U32_MAX, channel="battery_1/Soc", unit="%"),
            ],
            last_batch_seq=U64_MAX,
        )
    )
    sdk = sdk_edge.ConnectRequest(
        hello=sdk_edge.Hello(
            edge="organizations/o1/sites/s1/edges/e1",
            api_key="ek_0123456789abcdef",
            agent_version="1.4.0+build.7",
            protocol_version=U32_MAX,
            edge_time=T0,
            devices=[
                sdk_edge.DeviceInventoryItem(
                    device_id="battery_1",
                    kind=sdk_common.DeviceKind.BATTERY,
                    driver="modbus-sunspec",
                    model="BYD HVS 10.2",
                    channels=[
                        sdk_common.ChannelSpec(
                            name="SetActivePower",
                            unit="W",
                            category=sdk_common.ChannelCategory.REQUEST,
                            access=sdk_common.ChannelAccess.WRITE_ONLY,
                            value_type=sdk_common.ValueType.DOUBLE,
                            min_value=-5000.0,
                            max_value=0.0,
                            dynamic_max_channel="battery_1/MaxChargePower",
                        ),
                        sdk_common.ChannelSpec(
                            name="Mode",
                            value_type=sdk_common.ValueType.ENUM,
                            enum_values=[
                                sdk_common.EnumValue(number=I64_MIN, label="lowest"),
                                sdk_common.EnumValue(number=0, label="idle"),
                                sdk_common.EnumValue(number=I64_MAX, label="highest"),
                            ],
                            description="Betriebsmodus (Ladezustand ≥ 10 %)",
                        ),
                    ],
                ),
                sdk_edge.DeviceInventoryItem(device_id="meter", kind=sdk_common.DeviceKind.GRID_METER),
            ],
            channel_table=[
                sdk_edge.ChannelDescriptor(index=0, channel="meter/ActivePower", unit="W"),
                sdk_edge.ChannelDescriptor(index=U32_MAX, channel="battery_1/Soc", unit="%"),
            ],
            last_batch_seq=U64_MAX,
        )
    )
    return Case("ConnectRequest.hello", pb, sdk)


# Varint length boundaries (1, 2, 3 and 5 bytes) in the packed uint32 columns.
PACKED_U32 = [0, 1, 127, 128, 16_383, 16_384, 2_097_151, U32_MAX]
PACKED_DOUBLES = [0.0, -0.0, 1.5, -1e-300, 1e300, 5e-324, -2.5, 230.125]


def _telemetry_batch_case() -> Case:
    pb = edge_link_pb2.ConnectRequest(
        telemetry_batch=edge_link_pb2.TelemetryBatch(
            batch_seq=U64_MAX - 1,
            base_time=ts(T1),
            channel_indexes=PACKED_U32,
            time_offsets_ms=list(reversed(PACKED_U32)),
            values=PACKED_DOUBLES,
            events=[
                edge_link_pb2.EdgeEvent(
                    kind=edge_link_pb2.EDGE_EVENT_KIND_TELEMETRY_GAP,
                    event_time=ts(BEFORE_EPOCH),
                    end_time=ts(T2),
                    device_id="meter",
                    first_batch_seq=1,
                    last_batch_seq=U64_MAX,
                    message="outbox overflow",
                ),
                edge_link_pb2.EdgeEvent(kind=edge_link_pb2.EDGE_EVENT_KIND_DAEMON_STARTED),
            ],
        )
    )
    sdk = sdk_edge.ConnectRequest(
        telemetry_batch=sdk_edge.TelemetryBatch(
            batch_seq=U64_MAX - 1,
            base_time=T1,
            channel_indexes=PACKED_U32,
            time_offsets_ms=list(reversed(PACKED_U32)),
            values=PACKED_DOUBLES,
            events=[
                sdk_edge.EdgeEvent(
                    kind=sdk_edge.EdgeEventKind.TELEMETRY_GAP,
                    event_time=BEFORE_EPOCH,
                    end_time=T2,
                    device_id="meter",
                    first_batch_seq=1,
                    last_batch_seq=U64_MAX,
                    message="outbox overflow",
                ),
                sdk_edge.EdgeEvent(kind=sdk_edge.EdgeEventKind.DAEMON_STARTED),
            ],
        )
    )
    return Case("ConnectRequest.telemetry_batch", pb, sdk)


def _connect_request_cases() -> list[Case]:
    e, s = edge_link_pb2, sdk_edge
    return [
        _hello_case(),
        _telemetry_batch_case(),
        Case(
            "ConnectRequest.command_ack",
            e.ConnectRequest(
                command_ack=e.CommandAck(
                    command="organizations/o1/sites/s1/edges/e1/commands/c1",
                    status=e.COMMAND_ACK_STATUS_REJECTED,
                    reason="VALUE_OUT_OF_RANGE",
                    message="-6000 W is below -5000 W",
                    applied_value=-3000.25,
                    ack_time=ts(T2),
                )
            ),
            s.ConnectRequest(
                command_ack=s.CommandAck(
                    command="organizations/o1/sites/s1/edges/e1/commands/c1",
                    status=s.CommandAckStatus.REJECTED,
                    reason="VALUE_OUT_OF_RANGE",
                    message="-6000 W is below -5000 W",
                    applied_value=-3000.25,
                    ack_time=T2,
                )
            ),
        ),
        Case(
            "ConnectRequest.heartbeat",
            e.ConnectRequest(
                heartbeat=e.Heartbeat(
                    edge_time=ts(T0),
                    outbox_batches=U64_MAX,
                    cycle_overruns=5,
                    cycle_lateness_p99_ms=12.75,
                )
            ),
            s.ConnectRequest(
                heartbeat=s.Heartbeat(
                    edge_time=T0, outbox_batches=U64_MAX, cycle_overruns=5, cycle_lateness_p99_ms=12.75
                )
            ),
        ),
        # A oneof member that is an empty message is still set: it is on the wire as tag + length 0.
        Case(
            "ConnectRequest.heartbeat(empty)",
            e.ConnectRequest(heartbeat=e.Heartbeat()),
            s.ConnectRequest(heartbeat=s.Heartbeat()),
        ),
        Case(
            "ConnectRequest.schedule_ack(defaults)",
            e.ConnectRequest(schedule_ack=e.ScheduleAck(schedule_id="", accepted=False)),
            s.ConnectRequest(schedule_ack=s.ScheduleAck(schedule_id="", accepted=False)),
        ),
        Case(
            "ConnectRequest.channel_table_append",
            e.ConnectRequest(
                channel_table_append=e.ChannelTableAppend(
                    channels=[e.ChannelDescriptor(index=7, channel="ev/SetCurrent", unit="A")]
                )
            ),
            s.ConnectRequest(
                channel_table_append=s.ChannelTableAppend(
                    channels=[s.ChannelDescriptor(index=7, channel="ev/SetCurrent", unit="A")]
                )
            ),
        ),
        Case("ConnectRequest(no member)", e.ConnectRequest(), s.ConnectRequest()),
    ]


def _connect_response_cases() -> list[Case]:
    e, s = edge_link_pb2, sdk_edge
    return [
        Case(
            "ConnectResponse.welcome",
            e.ConnectResponse(
                welcome=e.Welcome(
                    session_id="8d3c",
                    server_time=ts(T1),
                    last_stored_batch_seq=0,
                    heartbeat_interval={"seconds": 15},
                    max_batch_points=10_000,
                    max_unacked_batches=8,
                )
            ),
            s.ConnectResponse(
                welcome=s.Welcome(
                    session_id="8d3c",
                    server_time=T1,
                    heartbeat_interval=dt.timedelta(seconds=15),
                    max_batch_points=10_000,
                    max_unacked_batches=8,
                )
            ),
        ),
        Case(
            "ConnectResponse.telemetry_ack",
            e.ConnectResponse(
                telemetry_ack=e.TelemetryAck(
                    batch_seq=U64_MAX, result=e.TELEMETRY_ACK_RESULT_DUPLICATE, message="already stored"
                )
            ),
            s.ConnectResponse(
                telemetry_ack=s.TelemetryAck(
                    batch_seq=U64_MAX, result=s.TelemetryAckResult.DUPLICATE, message="already stored"
                )
            ),
        ),
        Case(
            "ConnectResponse.command",
            e.ConnectResponse(
                command=e.EdgeCommand(
                    name="organizations/o1/sites/s1/edges/e1/commands/c2",
                    channel="battery_1/SetActivePower",
                    value=-1e-3,
                    expire_time=ts(T2),
                    create_time=ts(T0),
                    traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                )
            ),
            s.ConnectResponse(
                command=s.EdgeCommand(
                    name="organizations/o1/sites/s1/edges/e1/commands/c2",
                    channel="battery_1/SetActivePower",
                    value=-1e-3,
                    expire_time=T2,
                    create_time=T0,
                    traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                )
            ),
        ),
        Case(
            "ConnectResponse.schedule",
            e.ConnectResponse(
                schedule=e.Schedule(
                    schedule_id="day-ahead-2025-10-26",
                    intervals=[
                        e.ScheduleInterval(
                            start_time=ts(T0),
                            end_time=ts(T1),
                            setpoints=[
                                e.ScheduleSetpoint(channel="battery_1/SetActivePower", value=-2000.0),
                                e.ScheduleSetpoint(channel="ev/SetCurrent", value=0.0),
                            ],
                        ),
                        e.ScheduleInterval(start_time=ts(T1), end_time=ts(T2)),
                    ],
                    expire_time=ts(MAX_TIME),
                    source="optimizer",
                )
            ),
            s.ConnectResponse(
                schedule=s.Schedule(
                    schedule_id="day-ahead-2025-10-26",
                    intervals=[
                        s.ScheduleInterval(
                            start_time=T0,
                            end_time=T1,
                            setpoints=[
                                s.ScheduleSetpoint(channel="battery_1/SetActivePower", value=-2000.0),
                                s.ScheduleSetpoint(channel="ev/SetCurrent", value=0.0),
                            ],
                        ),
                        s.ScheduleInterval(start_time=T1, end_time=T2),
                    ],
                    expire_time=MAX_TIME,
                    source="optimizer",
                )
            ),
        ),
        # A Duration set to zero is present (tag + empty message), unlike an unset one.
        Case(
            "ConnectResponse.config_update",
            e.ConnectResponse(
                config_update=e.ConfigUpdate(
                    telemetry_interval={"nanos": 250_000_000}, heartbeat_interval={"seconds": 0}
                )
            ),
            s.ConnectResponse(
                config_update=s.ConfigUpdate(
                    telemetry_interval=dt.timedelta(milliseconds=250), heartbeat_interval=dt.timedelta(0)
                )
            ),
        ),
        Case(
            "ConnectResponse.heartbeat_ack",
            e.ConnectResponse(heartbeat_ack=e.HeartbeatAck(edge_time=ts(EPOCH), server_time=ts(MIN_TIME))),
            s.ConnectResponse(heartbeat_ack=s.HeartbeatAck(edge_time=EPOCH, server_time=MIN_TIME)),
        ),
    ]


# Keys in this order are in protobuf's deterministic order too (no key is a prefix of another).
SKIPPED = {
    "organizations/o1/sites/s1/edges/e2": "no battery",
    "organizations/o1/sites/s1/edges/e3": "FIELD_INVALID: power_kw above the inverter's 5 kW",
    "organizations/o1/sites/s2/edges/ü": "",
}


def _fleet_dispatch_cases() -> list[Case]:
    c, s = command_pb2, sdk_command
    full_pb = c.FleetDispatch(
        name="organizations/o1/fleetDispatches/fd1",
        edges=c.EdgeList(edges=["organizations/o1/sites/s1/edges/e1", "organizations/o1/sites/s1/edges/e2"]),
        action=c.FLEET_ACTION_DISCHARGE,
        power_kw=12.5,
        ttl={"seconds": 300},
        commands=["organizations/o1/sites/s1/edges/e1/commands/c9"],
        status=c.FleetDispatchStatus(
            total_count=I32_MAX, pending_count=-1, executed_count=I32_MIN, skipped_edges=SKIPPED
        ),
        create_time=ts(T1),
        creator="users/u1",
    )
    full_sdk = s.FleetDispatch(
        name="organizations/o1/fleetDispatches/fd1",
        edges=s.EdgeList(edges=["organizations/o1/sites/s1/edges/e1", "organizations/o1/sites/s1/edges/e2"]),
        action=s.FleetAction.DISCHARGE,
        power_kw=12.5,
        ttl=dt.timedelta(minutes=5),
        commands=["organizations/o1/sites/s1/edges/e1/commands/c9"],
        status=s.FleetDispatchStatus(
            total_count=I32_MAX, pending_count=-1, executed_count=I32_MIN, skipped_edges=dict(SKIPPED)
        ),
        create_time=T1,
        creator="users/u1",
    )
    return [
        Case("FleetDispatch.edges(full)", full_pb, full_sdk),
        Case(
            "FleetDispatch.site",
            c.FleetDispatch(site="organizations/o1/sites/s1", action=c.FLEET_ACTION_HOLD),
            s.FleetDispatch(site="organizations/o1/sites/s1", action=s.FleetAction.HOLD),
        ),
        Case(
            "FleetDispatch.whole_organization",
            c.FleetDispatch(whole_organization=True, action=c.FLEET_ACTION_CHARGE, power_kw=0.5),
            s.FleetDispatch(whole_organization=True, action=s.FleetAction.CHARGE, power_kw=0.5),
        ),
        # Oneof members set to their default value are present: on the wire and in JSON.
        Case(
            "FleetDispatch.whole_organization=False",
            c.FleetDispatch(whole_organization=False),
            s.FleetDispatch(whole_organization=False),
        ),
        Case("FleetDispatch.site=''", c.FleetDispatch(site=""), s.FleetDispatch(site="")),
        Case(
            "FleetDispatch.edges(empty)",
            c.FleetDispatch(edges=c.EdgeList()),
            s.FleetDispatch(edges=s.EdgeList()),
        ),
        Case(
            "FleetDispatchStatus.map",
            c.FleetDispatchStatus(skipped_edges=SKIPPED, failed_count=3),
            s.FleetDispatchStatus(skipped_edges=dict(SKIPPED), failed_count=3),
        ),
    ]


def _integer_cases() -> list[Case]:
    cases = []
    for value in [I64_MAX, I64_MIN, -1, 0, 1, 2**31, -(2**31) - 1, 2**53 + 1]:
        cases.append(
            Case(
                f"HistoryPoint.sample_count={value}",
                telemetry_pb2.HistoryPoint(time=ts(T0), value=-0.5, sample_count=value),
                sdk_telemetry.HistoryPoint(time=T0, value=-0.5, sample_count=value),
            )
        )
    for samples, commands in [(I64_MAX, I64_MIN), (-1, 1), (2**53 + 1, -(2**53) - 1)]:
        cases.append(
            Case(
                f"EraseSiteResponse({samples},{commands})",
                registry_pb2.EraseSiteResponse(
                    deleted_sample_count=samples,
                    deleted_command_count=commands,
                    audit_entry="auditEntries/a1",
                ),
                sdk_registry.EraseSiteResponse(
                    deleted_sample_count=samples,
                    deleted_command_count=commands,
                    audit_entry="auditEntries/a1",
                ),
            )
        )
    for seq in [U64_MAX, U64_MAX - 1, 2**63, 2**63 - 1, 2**53 + 1]:
        cases.append(
            Case(
                f"TelemetryAck.batch_seq={seq}",
                edge_link_pb2.TelemetryAck(batch_seq=seq, result=edge_link_pb2.TELEMETRY_ACK_RESULT_STORED),
                sdk_edge.TelemetryAck(batch_seq=seq, result=sdk_edge.TelemetryAckResult.STORED),
            )
        )
    return cases


def _optional_and_enum_cases() -> list[Case]:
    t, s = types_pb2, sdk_common
    return [
        Case("ChannelSpec(min=0.0,max unset)", t.ChannelSpec(min_value=0.0), s.ChannelSpec(min_value=0.0)),
        Case("ChannelSpec(unset)", t.ChannelSpec(name="Soc"), s.ChannelSpec(name="Soc")),
        Case(
            "ChannelSpec(min=-0.0,max=0.0)",
            t.ChannelSpec(min_value=-0.0, max_value=0.0),
            s.ChannelSpec(min_value=-0.0, max_value=0.0),
        ),
        Case(
            "ChannelSpec(min=-inf,max=inf)",
            t.ChannelSpec(min_value=-math.inf, max_value=math.inf),
            s.ChannelSpec(min_value=-math.inf, max_value=math.inf),
        ),
        # proto3 enums are open: an unknown number is kept, and JSON writes it as a number.
        Case(
            "Command.state=99(unknown)",
            command_pb2.Command(name="c", state=99),  # type: ignore[arg-type]
            sdk_command.Command(name="c", state=sdk_command.CommandState(99)),
        ),
        Case(
            "Command.state=-1(unknown, negative)",
            command_pb2.Command(state=-1),  # type: ignore[arg-type]
            sdk_command.Command(state=sdk_command.CommandState(-1)),
        ),
    ]


def _command_cases() -> list[Case]:
    c, s = command_pb2, sdk_command
    return [
        Case(
            "Command(full, nested transitions)",
            c.Command(
                name="organizations/o1/sites/s1/edges/e1/commands/c1",
                channel="battery_1/SetActivePower",
                value=-2500.5,
                issued_time=ts(T0),
                ttl={"seconds": 86_400},
                expire_time=ts(T2),
                state=c.COMMAND_STATE_REJECTED_BY_EDGE,
                state_reason="VALUE_EXCEEDS_DYNAMIC_LIMIT",
                applied_value=0.0,
                create_time=ts(T1),
                update_time=ts(T2),
                creator="users/u1",
                fleet_dispatch="organizations/o1/fleetDispatches/fd1",
                transitions=[
                    c.CommandTransition(to_state=c.COMMAND_STATE_QUEUED, transition_time=ts(T1)),
                    c.CommandTransition(),  # an all-default element of a repeated message field
                    c.CommandTransition(
                        from_state=c.COMMAND_STATE_RECEIVED,
                        to_state=c.COMMAND_STATE_REJECTED_BY_EDGE,
                        transition_time=ts(T2),
                        reason="VALUE_EXCEEDS_DYNAMIC_LIMIT",
                        message="max charge power is 0 W at 100 % SoC",
                    ),
                ],
            ),
            s.Command(
                name="organizations/o1/sites/s1/edges/e1/commands/c1",
                channel="battery_1/SetActivePower",
                value=-2500.5,
                issued_time=T0,
                ttl=dt.timedelta(days=1),
                expire_time=T2,
                state=s.CommandState.REJECTED_BY_EDGE,
                state_reason="VALUE_EXCEEDS_DYNAMIC_LIMIT",
                create_time=T1,
                update_time=T2,
                creator="users/u1",
                fleet_dispatch="organizations/o1/fleetDispatches/fd1",
                transitions=[
                    s.CommandTransition(to_state=s.CommandState.QUEUED, transition_time=T1),
                    s.CommandTransition(),
                    s.CommandTransition(
                        from_state=s.CommandState.RECEIVED,
                        to_state=s.CommandState.REJECTED_BY_EDGE,
                        transition_time=T2,
                        reason="VALUE_EXCEEDS_DYNAMIC_LIMIT",
                        message="max charge power is 0 W at 100 % SoC",
                    ),
                ],
            ),
        ),
        Case(
            "Command(timestamp bounds)",
            c.Command(
                issued_time=ts(MIN_TIME),
                expire_time=ts(MAX_TIME),
                create_time=ts(EPOCH),
                update_time=ts(BEFORE_EPOCH),
                ttl={"seconds": 0, "nanos": 1000},
            ),
            s.Command(
                issued_time=MIN_TIME,
                expire_time=MAX_TIME,
                create_time=EPOCH,
                update_time=BEFORE_EPOCH,
                ttl=dt.timedelta(microseconds=1),
            ),
        ),
        Case(
            "CreateCommandRequest(nested message)",
            c.CreateCommandRequest(
                parent="organizations/o1/sites/s1/edges/e1",
                command=c.Command(channel="ev/SetCurrent", value=16.0),
                request_id="7b0d1f3e-52a1-4c55-9a53-2a4c2b9d7c11",
            ),
            s.CreateCommandRequest(
                parent="organizations/o1/sites/s1/edges/e1",
                command=s.Command(channel="ev/SetCurrent", value=16.0),
                request_id="7b0d1f3e-52a1-4c55-9a53-2a4c2b9d7c11",
            ),
        ),
        Case(
            "CreateCommandRequest(empty nested message)",
            c.CreateCommandRequest(command=c.Command()),
            s.CreateCommandRequest(command=s.Command()),
        ),
    ]


CORPUS = [
    *_connect_request_cases(),
    *_connect_response_cases(),
    *_fleet_dispatch_cases(),
    *_integer_cases(),
    *_optional_and_enum_cases(),
    *_command_cases(),
]


@pytest.mark.parametrize("case", CORPUS, ids=lambda c: c.id)
def test_corpus_parity(case: Case) -> None:
    assert_parity(case.pb, case.sdk)


def test_corpus_covers_every_oneof_member() -> None:
    seen: set[tuple[str, str]] = set()
    for case in CORPUS:
        for oneof in _real_oneofs(case.pb.DESCRIPTOR):
            member = case.pb.WhichOneof(oneof.name)
            sdk_member, _ = betterproto2.which_one_of(case.sdk, oneof.name)
            assert sdk_member == (member or "")
            if member:
                seen.add((case.pb.DESCRIPTOR.full_name, member))
    for desc in [
        edge_link_pb2.ConnectRequest.DESCRIPTOR,
        edge_link_pb2.ConnectResponse.DESCRIPTOR,
        command_pb2.FleetDispatch.DESCRIPTOR,
    ]:
        for oneof in desc.oneofs:
            assert {(desc.full_name, f.name) for f in oneof.fields} <= seen


AWARE_DATETIMES = st.datetimes(
    min_value=dt.datetime(1, 1, 1),
    max_value=dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
    timezones=st.just(UTC),
)
FINITE = st.floats(allow_nan=False)
NON_NEGATIVE_ZERO_FINITE = FINITE.filter(lambda x: not (x == 0.0 and math.copysign(1.0, x) < 0))


@settings(max_examples=60, deadline=None, database=None)
@given(
    seq=st.integers(0, U64_MAX),
    base=AWARE_DATETIMES,
    rows=st.lists(st.tuples(st.integers(0, U32_MAX), st.integers(0, U32_MAX), FINITE), max_size=40),
)
def test_telemetry_batch_built_on_both_sides(seq: int, base: dt.datetime, rows: list[tuple[int, int, float]]) -> None:
    """Packed columns, uint64 sequence numbers and Timestamps, built independently on both sides."""
    indexes, offsets, values = [list(column) for column in zip(*rows, strict=True)] if rows else ([], [], [])
    pb = edge_link_pb2.ConnectRequest(
        telemetry_batch=edge_link_pb2.TelemetryBatch(
            batch_seq=seq, base_time=ts(base), channel_indexes=indexes, time_offsets_ms=offsets, values=values
        )
    )
    sdk = sdk_edge.ConnectRequest(
        telemetry_batch=sdk_edge.TelemetryBatch(
            batch_seq=seq, base_time=base, channel_indexes=indexes, time_offsets_ms=offsets, values=values
        )
    )
    assert_parity(pb, sdk)


@settings(max_examples=60, deadline=None, database=None)
@given(time=AWARE_DATETIMES, value=NON_NEGATIVE_ZERO_FINITE, count=st.integers(I64_MIN, I64_MAX))
def test_history_point_built_on_both_sides(time: dt.datetime, value: float, count: int) -> None:
    pb = telemetry_pb2.HistoryPoint(time=ts(time), value=value, sample_count=count)
    sdk = sdk_telemetry.HistoryPoint(time=time, value=value, sample_count=count)
    assert_parity(pb, sdk)


@settings(max_examples=40, deadline=None, database=None)
@given(
    skipped=st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=5),
    target=st.sampled_from(["edges", "site", "whole_organization", None]),
    counts=st.lists(st.integers(I32_MIN, I32_MAX), min_size=5, max_size=5),
)
def test_fleet_dispatch_built_on_both_sides(skipped: dict[str, str], target: str | None, counts: list[int]) -> None:
    """Oneof targets and the map; the SDK's map is filled in protobuf's deterministic order so that
    the bytes can be compared (see test_map_entry_order_is_insertion_order).
    """
    status_pb = command_pb2.FleetDispatchStatus(
        total_count=counts[0],
        pending_count=counts[1],
        executed_count=counts[2],
        rejected_count=counts[3],
        failed_count=counts[4],
        skipped_edges=skipped,
    )
    # The key order of protobuf's deterministic encoding (the SDK parser keeps wire order; only the
    # order is taken from it, keys and values come from `skipped`).
    order = list(sdk_command.FleetDispatchStatus.parse(status_pb.SerializeToString(deterministic=True)).skipped_edges)
    assert sorted(order) == sorted(skipped)
    in_pb_order = {key: skipped[key] for key in order}
    status_sdk = sdk_command.FleetDispatchStatus(
        total_count=counts[0],
        pending_count=counts[1],
        executed_count=counts[2],
        rejected_count=counts[3],
        failed_count=counts[4],
        skipped_edges=in_pb_order,
    )
    targets_pb: dict[str, Any] = {}
    targets_sdk: dict[str, Any] = {}
    if target == "edges":
        targets_pb["edges"] = command_pb2.EdgeList(edges=sorted(skipped))
        targets_sdk["edges"] = sdk_command.EdgeList(edges=sorted(skipped))
    elif target == "site":
        targets_pb["site"] = targets_sdk["site"] = "organizations/o1/sites/s1"
    elif target == "whole_organization":
        targets_pb["whole_organization"] = targets_sdk["whole_organization"] = bool(counts[0] % 2)
    pb = command_pb2.FleetDispatch(status=status_pb, **targets_pb)
    sdk = sdk_command.FleetDispatch(status=status_sdk, **targets_sdk)
    assert_parity(pb, sdk)
    assert betterproto2.which_one_of(sdk, "targets")[0] == (pb.WhichOneof("targets") or "")


def test_canonical_json_spelled_out() -> None:
    """Parity is not enough if both were wrong: the proto3 JSON mapping, literally."""
    point = sdk_telemetry.HistoryPoint(time=T0, value=-0.5, sample_count=I64_MIN)
    assert point.to_dict() == {
        "time": "2025-10-26T00:59:59.999999Z",
        "value": -0.5,
        "sampleCount": str(I64_MIN),
    }
    ack = sdk_edge.ConnectResponse(
        telemetry_ack=sdk_edge.TelemetryAck(batch_seq=U64_MAX, result=sdk_edge.TelemetryAckResult.STORED)
    )
    assert json.loads(ack.to_json()) == {
        "telemetryAck": {"batchSeq": "18446744073709551615", "result": "TELEMETRY_ACK_RESULT_STORED"}
    }
    cfg = sdk_edge.ConfigUpdate(telemetry_interval=dt.timedelta(milliseconds=250), heartbeat_interval=dt.timedelta(0))
    assert cfg.to_dict() == {"telemetryInterval": "0.250s", "heartbeatInterval": "0s"}
    spec = sdk_common.ChannelSpec(min_value=0.0, max_value=math.inf)
    assert spec.to_dict() == {"minValue": 0.0, "maxValue": "Infinity"}
    stamps = sdk_command.Command(issued_time=MIN_TIME, expire_time=MAX_TIME, create_time=T1, update_time=T2)
    assert stamps.to_dict() == {
        "issuedTime": "0001-01-01T00:00:00Z",
        "expireTime": "9999-12-31T23:59:59.999999Z",
        "createTime": "2025-10-26T01:00:00.001Z",
        "updateTime": "2025-10-26T01:00:05Z",
    }
    assert sdk_command.FleetDispatch(whole_organization=False).to_dict() == {"wholeOrganization": False}


def test_non_finite_doubles() -> None:
    """NaN and the infinities: same bits on the wire, "NaN"/"Infinity"/"-Infinity" in JSON."""
    pb = command_pb2.Command(value=math.nan, applied_value=-math.inf)
    sdk = sdk_command.Command(value=math.nan, applied_value=-math.inf)
    assert_parity(pb, sdk, nan=True)
    assert sdk.to_dict() == {"value": "NaN", "appliedValue": "-Infinity"}

    batch_pb = edge_link_pb2.TelemetryBatch(channel_indexes=[0, 1, 2], values=[math.inf, -math.inf, math.nan])
    batch_sdk = sdk_edge.TelemetryBatch(channel_indexes=[0, 1, 2], values=[math.inf, -math.inf, math.nan])
    assert bytes(batch_sdk) == batch_pb.SerializeToString(deterministic=True)
    parsed = sdk_edge.TelemetryBatch.parse(batch_pb.SerializeToString())
    assert parsed.values[:2] == [math.inf, -math.inf]
    assert math.isnan(parsed.values[2])
    assert parsed.to_dict() == canonical_json(batch_pb)
    assert canonical_json(batch_pb)["values"] == ["Infinity", "-Infinity", "NaN"]


def test_unpacked_repeated_encoding_is_accepted() -> None:
    """Parsers must accept repeated scalars unpacked as well as packed; both libraries do."""
    unpacked = (
        b"\x18\x05\x18\x80\x01"  # channel_indexes (3) as two varint records: 5, 128
        + b"\x29"
        + struct.pack("<d", 1.5)  # values (5) as two fixed64 records
        + b"\x29"
        + struct.pack("<d", -2.0)
    )
    pb = edge_link_pb2.TelemetryBatch.FromString(unpacked)
    sdk = sdk_edge.TelemetryBatch.parse(unpacked)
    assert list(pb.channel_indexes) == sdk.channel_indexes == [5, 128]
    assert list(pb.values) == sdk.values == [1.5, -2.0]
    # Both re-encode packed, identically.
    assert bytes(sdk) == pb.SerializeToString(deterministic=True)
    assert bytes(sdk) == b"\x1a\x03\x05\x80\x01" + b"\x2a\x10" + struct.pack("<dd", 1.5, -2.0)


# --------------------------------------------------------------------------------------------------
# Unknown fields
# --------------------------------------------------------------------------------------------------


UNKNOWN_VARINT = tag(127, 0) + varint(150)
UNKNOWN_FIXED64 = tag(128, 1) + struct.pack("<d", -1.25)
UNKNOWN_LEN = tag(1001, 2) + varint(5) + b"hello"
UNKNOWN_FIXED32 = tag(2899, 5) + struct.pack("<f", 2.5)
UNKNOWN_ALL = UNKNOWN_VARINT + UNKNOWN_FIXED64 + UNKNOWN_LEN + UNKNOWN_FIXED32


def _wrap(field_number: int, payload: bytes) -> bytes:
    """A length-delimited field holding `payload`."""
    return tag(field_number, 2) + varint(len(payload)) + payload


def test_unknown_fields_survive_sdk_parse_then_serialize() -> None:
    """A newer sender's fields pass through an older SDK untouched, exactly as through protobuf."""
    known = command_pb2.Command(name="c1", value=1.5, create_time=ts(T1)).SerializeToString()
    raw = known + UNKNOWN_ALL
    sdk = sdk_command.Command.parse(raw)
    pb = command_pb2.Command.FromString(raw)

    assert sdk == sdk_command.Command(name="c1", value=1.5, create_time=T1)  # known fields read normally
    assert bytes(sdk) == raw
    assert pb.SerializeToString() == raw
    assert [(f.field_number, f.wire_type) for f in UnknownFieldSet(pb)] == [
        (127, 0),
        (128, 1),
        (1001, 2),
        (2899, 5),
    ]
    # Unknown fields are kept at every level of nesting (here inside FleetDispatch.status and inside a
    # oneof member), not only at the top.
    status = command_pb2.FleetDispatchStatus(total_count=2).SerializeToString() + UNKNOWN_LEN
    nested = _wrap(1, b"fd") + _wrap(3, b"s1") + _wrap(9, status) + UNKNOWN_VARINT
    dispatch = sdk_command.FleetDispatch.parse(nested)
    assert dispatch.site == "s1"
    assert dispatch.status == sdk_command.FleetDispatchStatus(total_count=2)
    assert bytes(dispatch) == nested == command_pb2.FleetDispatch.FromString(nested).SerializeToString()
    hello = edge_link_pb2.Hello(edge="e1").SerializeToString() + UNKNOWN_FIXED32
    request = _wrap(1, hello)
    assert bytes(sdk_edge.ConnectRequest.parse(request)) == request
    # An SDK object edited after parsing still carries them, after the (re-encoded) known fields.
    sdk.value = 2.0
    assert bytes(sdk) == command_pb2.Command(name="c1", value=2.0, create_time=ts(T1)).SerializeToString() + UNKNOWN_ALL


def test_unknown_fields_are_dropped_by_json_in_both_libraries() -> None:
    raw = command_pb2.Command(name="c1").SerializeToString() + UNKNOWN_ALL
    assert sdk_command.Command.parse(raw).to_dict() == canonical_json(command_pb2.Command.FromString(raw))
    assert sdk_command.Command.parse(raw).to_dict() == {"name": "c1"}


# --------------------------------------------------------------------------------------------------
# 2. Every message type, values drawn from the descriptor
# --------------------------------------------------------------------------------------------------

TIMESTAMP = "google.protobuf.Timestamp"
DURATION = "google.protobuf.Duration"
FIELD_MASK = "google.protobuf.FieldMask"
MAX_DEPTH = 3
MAX_ITEMS = 3
TS_MIN_S, TS_MAX_S = -62_135_596_800, 253_402_300_799  # 0001-01-01 .. 9999-12-31
# Restrictions that keep the sweep where parity holds; each one is pinned in section 3:
# - Timestamp/Duration nanos in whole microseconds (test_sub_microsecond_times_are_truncated);
# - Duration nanos in whole milliseconds (test_duration_json_with_micro_digits_is_not_canonical);
# - Durations non-negative (test_negative_durations_are_corrupted) and below 10**9 s, ~31 years
#   (test_huge_durations_lose_precision);
# - no -0.0 in singular double fields without presence (test_negative_zero_is_dropped);
# - FieldMask fields left unset (test_field_mask_json_is_not_canonical);
# - no NaN (protobuf's == never holds for NaN; test_non_finite_doubles covers NaN).
DURATION_MAX_S = 10**9 - 1
INT_RANGES = {
    FD.TYPE_INT32: (I32_MIN, I32_MAX),
    FD.TYPE_SINT32: (I32_MIN, I32_MAX),
    FD.TYPE_SFIXED32: (I32_MIN, I32_MAX),
    FD.TYPE_INT64: (I64_MIN, I64_MAX),
    FD.TYPE_SINT64: (I64_MIN, I64_MAX),
    FD.TYPE_SFIXED64: (I64_MIN, I64_MAX),
    FD.TYPE_UINT32: (0, U32_MAX),
    FD.TYPE_FIXED32: (0, U32_MAX),
    FD.TYPE_UINT64: (0, U64_MAX),
    FD.TYPE_FIXED64: (0, U64_MAX),
}


def _is_negative_zero(x: float) -> bool:
    return x == 0.0 and math.copysign(1.0, x) < 0


def _is_map(field: descriptor.FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _real_oneofs(desc: descriptor.Descriptor) -> list[descriptor.OneofDescriptor]:
    """Oneofs declared as such, without the synthetic ones proto3 `optional` creates."""
    return [o for o in desc.oneofs if not (len(o.fields) == 1 and o.name == f"_{o.fields[0].name}")]


def _scalar(field: descriptor.FieldDescriptor, *, implicit_presence: bool) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in INT_RANGES:
        low, high = INT_RANGES[kind]
        return st.integers(low, high)
    if kind == FD.TYPE_DOUBLE:
        doubles = st.floats(allow_nan=False)
        return doubles.filter(lambda x: not _is_negative_zero(x)) if implicit_presence else doubles
    if kind == FD.TYPE_FLOAT:
        floats = st.floats(width=32, allow_nan=False)
        return floats.filter(lambda x: not _is_negative_zero(x)) if implicit_presence else floats
    if kind == FD.TYPE_BOOL:
        return st.booleans()
    if kind == FD.TYPE_STRING:
        return st.text(max_size=12)
    if kind == FD.TYPE_BYTES:
        return st.binary(max_size=12)
    if kind == FD.TYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values]
        return st.sampled_from([*numbers, 99, -7])  # unknown values too: proto3 enums are open
    raise AssertionError(f"unhandled field type {kind} of {field.full_name}")


def _messages(desc: descriptor.Descriptor, depth: int) -> st.SearchStrategy[pb_message.Message]:
    cls = pb_class(desc)
    if desc.full_name == TIMESTAMP:
        return st.builds(
            lambda s, us: cls(seconds=s, nanos=us * 1000),
            st.integers(TS_MIN_S, TS_MAX_S),
            st.integers(0, 999_999),
        )
    if desc.full_name == DURATION:
        return st.builds(
            lambda s, ms: cls(seconds=s, nanos=ms * 1_000_000),
            st.integers(0, DURATION_MAX_S),
            st.integers(0, 999),
        )
    return _composite_message(desc, depth)


@st.composite
def _composite_message(draw: st.DrawFn, desc: descriptor.Descriptor, depth: int) -> pb_message.Message:
    message = pb_class(desc)()
    in_oneof: set[str] = set()
    for oneof in _real_oneofs(desc):
        in_oneof |= {f.name for f in oneof.fields}
        choices = [f for f in oneof.fields if f.message_type is None or depth < MAX_DEPTH]
        chosen = draw(st.sampled_from([None, *choices]))
        if chosen is not None:
            _set(message, chosen, draw(_value(chosen, depth, implicit_presence=False)))
    for field in desc.fields:
        if field.name in in_oneof:
            continue
        if field.message_type is not None and field.message_type.full_name == FIELD_MASK:
            continue
        if field.message_type is not None and not _is_map(field) and depth >= MAX_DEPTH:
            continue
        if _is_map(field):
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            entries = draw(
                st.dictionaries(
                    _scalar(key_field, implicit_presence=False),
                    _value(value_field, depth, implicit_presence=False),
                    max_size=MAX_ITEMS,
                )
            )
            target = getattr(message, field.name)
            for key, value in entries.items():
                if value_field.message_type is not None:
                    target[key].CopyFrom(value)
                else:
                    target[key] = value
        elif field.is_repeated:
            values = draw(st.lists(_value(field, depth, implicit_presence=False), max_size=MAX_ITEMS))
            target = getattr(message, field.name)
            for value in values:
                if field.message_type is not None:
                    target.add().CopyFrom(value)
                else:
                    target.append(value)
        elif field.has_presence:
            if draw(st.booleans()):
                _set(message, field, draw(_value(field, depth, implicit_presence=False)))
        else:
            _set(message, field, draw(_value(field, depth, implicit_presence=True)))
    return message


def _value(field: descriptor.FieldDescriptor, depth: int, *, implicit_presence: bool) -> st.SearchStrategy[Any]:
    if field.message_type is not None:
        return _messages(field.message_type, depth + 1)
    return _scalar(field, implicit_presence=implicit_presence)


def _set(message: pb_message.Message, field: descriptor.FieldDescriptor, value: Any) -> None:
    if field.message_type is not None:
        sub = getattr(message, field.name)
        sub.SetInParent()
        sub.CopyFrom(value)
    else:
        setattr(message, field.name, value)


def test_every_contract_message_has_an_sdk_class() -> None:
    assert len(ALL_MESSAGES) > 100
    for desc in ALL_MESSAGES:
        cls = sdk_class(desc)
        assert cls.__name__ == desc.name
        assert {m.number for m in cls._betterproto.meta_by_field_name.values()} == {f.number for f in desc.fields}


def test_contract_fields_are_declared_in_number_order() -> None:
    """The premise of byte equality: protobuf writes fields by number, the SDK in declaration order."""
    for desc in ALL_MESSAGES:
        numbers = [f.number for f in desc.fields]
        assert numbers == sorted(numbers), desc.full_name
        sdk_numbers = [m.number for m in sdk_class(desc)._betterproto.meta_by_field_name.values()]
        assert sdk_numbers == numbers, desc.full_name


@pytest.mark.parametrize("desc", ALL_MESSAGES, ids=lambda d: d.full_name)
def test_json_field_names_match_the_descriptor(desc: descriptor.Descriptor) -> None:
    """to_dict(include_default_values=True) names every field by its proto3 json_name."""
    names = set(sdk_class(desc)().to_dict(include_default_values=True))
    assert names == {f.json_name for f in desc.fields}


@pytest.mark.parametrize("desc", ALL_MESSAGES, ids=lambda d: d.full_name)
@settings(max_examples=20, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_message_type_round_trips(desc: descriptor.Descriptor, data: st.DataObject) -> None:
    pb = data.draw(_messages(desc, 0), label=desc.full_name)
    sdk_cls = sdk_class(desc)
    raw = pb.SerializeToString(deterministic=True)

    sdk = sdk_cls.parse(raw)
    assert bytes(sdk) == raw
    assert type(pb).FromString(bytes(sdk)) == pb
    expected_json = canonical_json(pb)
    assert sdk.to_dict() == expected_json
    again = sdk_cls.from_dict(expected_json)
    assert again == sdk
    assert type(pb).FromString(bytes(again)) == pb  # (map order follows the JSON object's key order)
    assert sdk_cls.from_dict(json_format.MessageToDict(pb, preserving_proto_field_name=True)) == sdk
    assert json_format.ParseDict(sdk.to_dict(), type(pb)()) == pb


# --------------------------------------------------------------------------------------------------
# 3. Pinned divergences of betterproto2 0.10.0 from protobuf
# --------------------------------------------------------------------------------------------------


def test_map_entry_order_is_insertion_order() -> None:
    """Legitimate difference: same map, different (valid) entry order; both parse to equal messages."""
    reverse = dict(reversed(list(SKIPPED.items())))
    sdk = sdk_command.FleetDispatchStatus(skipped_edges=reverse)
    pb = command_pb2.FleetDispatchStatus(skipped_edges=SKIPPED)

    assert bytes(sdk) != pb.SerializeToString(deterministic=True)
    assert sorted(bytes(sdk)) == sorted(pb.SerializeToString(deterministic=True))  # same entries
    assert command_pb2.FleetDispatchStatus.FromString(bytes(sdk)) == pb
    assert sdk_command.FleetDispatchStatus.parse(pb.SerializeToString()) == sdk
    assert sdk.to_dict() == canonical_json(pb)


def test_sub_microsecond_times_are_truncated() -> None:
    """Timestamps and Durations become datetime/timedelta, which stop at microseconds: a Timestamp's
    nanoseconds are truncated, a Duration's are rounded to the nearest microsecond.
    """
    pb = command_pb2.Command(
        issued_time={"seconds": 1_700_000_000, "nanos": 123_456_789},
        ttl={"seconds": 1, "nanos": 999},
        expire_time={"seconds": 1_700_000_000, "nanos": 999},
    )
    sdk = sdk_command.Command.parse(pb.SerializeToString())

    assert sdk.issued_time == dt.datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)
    assert sdk.expire_time == dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert sdk.ttl == dt.timedelta(seconds=1, microseconds=1)
    back = command_pb2.Command.FromString(bytes(sdk))
    assert (back.issued_time.seconds, back.issued_time.nanos) == (1_700_000_000, 123_456_000)
    assert (back.expire_time.seconds, back.expire_time.nanos) == (1_700_000_000, 0)
    assert (back.ttl.seconds, back.ttl.nanos) == (1, 1000)
    assert canonical_json(pb) == {
        "issuedTime": "2023-11-14T22:13:20.123456789Z",
        "ttl": "1.000000999s",
        "expireTime": "2023-11-14T22:13:20.000000999Z",
    }
    assert sdk.to_dict() == {
        "issuedTime": "2023-11-14T22:13:20.123456Z",
        "ttl": "1.000001s",
        "expireTime": "2023-11-14T22:13:20Z",
    }
    # JSON in loses the same digits.
    from_json = sdk_command.Command.from_dict(canonical_json(pb))
    assert from_json.issued_time == sdk.issued_time
    assert from_json.expire_time == sdk.expire_time
    assert from_json.ttl == dt.timedelta(seconds=1, microseconds=1)


def test_negative_durations_are_corrupted() -> None:
    """Duration.from_timedelta splits negative values wrongly: -1.5 s is written as (-1 s, +0.5 s),
    which protobuf reads as -0.5 s, and -0.5 s becomes +0.5 s. JSON in rejects a leading "-".
    """
    results = {}
    for seconds, nanos in [(-1, -500_000_000), (0, -500_000_000), (-5, 0)]:
        pb = command_pb2.Command(ttl={"seconds": seconds, "nanos": nanos})
        sdk = sdk_command.Command.parse(pb.SerializeToString())
        back = command_pb2.Command.FromString(bytes(sdk)).ttl
        results[(seconds, nanos)] = (sdk.ttl, (back.seconds, back.nanos), sdk.to_dict(), canonical_json(pb))

    # Reading is right: the timedelta is the true value.
    assert results[(-1, -500_000_000)][0] == dt.timedelta(seconds=-1.5)
    assert results[(0, -500_000_000)][0] == dt.timedelta(seconds=-0.5)
    # Writing is wrong whenever there is a fraction.
    assert results[(-1, -500_000_000)][1] == (
        -1,
        500_000_000,
    )  # not a valid Duration; -0.5 s for most readers
    assert results[(0, -500_000_000)][1] == (0, 500_000_000)  # the sign is lost
    assert results[(0, -500_000_000)][2] == {"ttl": "0.500s"}
    assert results[(0, -500_000_000)][3] == {"ttl": "-0.500s"}
    # Whole negative seconds survive.
    assert results[(-5, 0)][1] == (-5, 0)
    assert results[(-5, 0)][2] == results[(-5, 0)][3] == {"ttl": "-5s"}
    with pytest.raises(ValueError, match="Invalid duration string"):
        sdk_command.Command.from_dict({"ttl": "-1.500s"})


def test_huge_durations_lose_precision() -> None:
    """Durations go through float: writing loses fractions above 2**53 µs (~285 years), reading JSON
    ("<seconds>.<fraction>s" parsed with float()) already around 2**33 s (~272 years).
    """
    pb = command_pb2.Command(ttl={"seconds": 315_575_999_999, "nanos": 999_999_000})
    sdk = sdk_command.Command.parse(pb.SerializeToString())
    assert sdk.ttl == dt.timedelta(seconds=315_575_999_999, microseconds=999_999)  # read correctly
    back = command_pb2.Command.FromString(bytes(sdk)).ttl
    assert (back.seconds, back.nanos) == (315_576_000_000, 0)  # written rounded
    assert sdk_command.Command.from_dict({"ttl": "8589934592.001s"}).ttl == dt.timedelta(
        seconds=8_589_934_592, microseconds=999
    )
    # Below the sweep's limit durations are exact both ways.
    exact = command_pb2.Command(ttl={"seconds": DURATION_MAX_S, "nanos": 999_000_000})
    assert bytes(sdk_command.Command.parse(exact.SerializeToString())) == exact.SerializeToString()
    assert bytes(sdk_command.Command.from_dict(canonical_json(exact))) == exact.SerializeToString()


def test_duration_json_with_micro_digits_is_not_canonical() -> None:
    """The SDK writes Duration fractions with the trailing zeros stripped (padded to 3 digits only);
    proto3 JSON writes 0, 3, 6 or 9 digits. Still valid input for protobuf's parser.
    """
    pb = command_pb2.Command(ttl={"nanos": 120_000})
    sdk = sdk_command.Command.parse(pb.SerializeToString())
    assert canonical_json(pb) == {"ttl": "0.000120s"}
    assert sdk.to_dict() == {"ttl": "0.00012s"}
    assert json_format.ParseDict(sdk.to_dict(), command_pb2.Command()) == pb
    # Timestamps are fine here (the SDK pads them to 3 or 6 digits).
    stamp = command_pb2.Command(create_time={"seconds": 0, "nanos": 120_000})
    assert sdk_command.Command.parse(stamp.SerializeToString()).to_dict() == canonical_json(stamp)


def test_field_mask_json_is_not_canonical() -> None:
    """FieldMask has no special JSON in the SDK: {"paths": [...]} with snake_case paths instead of the
    proto3 form "displayName,location.latitudeDeg". Neither library reads the other's JSON.
    """
    pb = registry_pb2.UpdateSiteRequest(
        update_mask=field_mask_pb2.FieldMask(paths=["display_name", "location.latitude_deg"])
    )
    sdk = sdk_registry.UpdateSiteRequest.parse(pb.SerializeToString())

    # Binary is fine.
    assert bytes(sdk) == pb.SerializeToString(deterministic=True)
    assert sdk.update_mask is not None
    assert sdk.update_mask.paths == ["display_name", "location.latitude_deg"]
    # JSON is not.
    assert canonical_json(pb) == {"updateMask": "displayName,location.latitudeDeg"}
    assert sdk.to_dict() == {"updateMask": {"paths": ["display_name", "location.latitude_deg"]}}
    with pytest.raises(json_format.ParseError, match="FieldMask JSON value not a string"):
        json_format.ParseDict(sdk.to_dict(), registry_pb2.UpdateSiteRequest())
    with pytest.raises(AttributeError):
        sdk_registry.UpdateSiteRequest.from_dict(canonical_json(pb))


def test_negative_zero_is_dropped() -> None:
    """A singular double without presence holding -0.0: protobuf writes it (its bits are not zero),
    the SDK compares it equal to the 0.0 default and leaves it out, on the wire and in JSON.
    """
    pb = command_pb2.Command(value=-0.0)
    sdk = sdk_command.Command.parse(pb.SerializeToString())
    assert math.copysign(1.0, sdk.value) == -1.0  # read correctly
    assert pb.SerializeToString() == b"\x19" + struct.pack("<d", -0.0)
    assert bytes(sdk) == b""
    assert canonical_json(pb) == {"value": -0.0}
    assert sdk.to_dict() == {}
    # With presence (proto3 optional) and in repeated fields -0.0 is kept.
    assert bytes(sdk_common.ChannelSpec(min_value=-0.0)) == types_pb2.ChannelSpec(min_value=-0.0).SerializeToString()


def test_repeated_occurrences_of_a_message_field_replace_instead_of_merging() -> None:
    """Protobuf merges a singular message field that occurs twice (and concatenated messages merge);
    the SDK keeps only the last occurrence.
    """
    first = command_pb2.FleetDispatch(status=command_pb2.FleetDispatchStatus(total_count=3, skipped_edges={"a": "x"}))
    second = command_pb2.FleetDispatch(status=command_pb2.FleetDispatchStatus(failed_count=1))
    raw = first.SerializeToString() + second.SerializeToString()

    merged = command_pb2.FleetDispatch.FromString(raw)
    assert merged.status == command_pb2.FleetDispatchStatus(total_count=3, failed_count=1, skipped_edges={"a": "x"})
    sdk = sdk_command.FleetDispatch.parse(raw)
    assert sdk.status == sdk_command.FleetDispatchStatus(failed_count=1)


def test_a_oneof_that_occurs_twice_keeps_both_members() -> None:
    """Protobuf keeps the last oneof member on the wire; the SDK sets both, which_one_of then fails and
    both are written back (protobuf reading that resolves it to the last again).
    """
    raw = (
        command_pb2.FleetDispatch(site="organizations/o1/sites/s1").SerializeToString()
        + command_pb2.FleetDispatch(whole_organization=True).SerializeToString()
    )
    assert command_pb2.FleetDispatch.FromString(raw).WhichOneof("targets") == "whole_organization"

    sdk = sdk_command.FleetDispatch.parse(raw)
    assert (sdk.site, sdk.whole_organization) == ("organizations/o1/sites/s1", True)
    with pytest.raises(RuntimeError, match="more than one field set in oneof"):
        betterproto2.which_one_of(sdk, "targets")
    assert bytes(sdk) == raw
    # Same for the edge stream's envelope.
    envelope = (
        edge_link_pb2.ConnectRequest(hello=edge_link_pb2.Hello(edge="e1")).SerializeToString()
        + edge_link_pb2.ConnectRequest(heartbeat=edge_link_pb2.Heartbeat()).SerializeToString()
    )
    assert edge_link_pb2.ConnectRequest.FromString(envelope).WhichOneof("message") == "heartbeat"
    both = sdk_edge.ConnectRequest.parse(envelope)
    assert both.hello is not None
    assert both.heartbeat is not None


def test_oneof_exclusivity_is_not_enforced_when_building() -> None:
    """Protobuf clears the other members when one is set; SDK dataclasses accept several."""
    pb = command_pb2.FleetDispatch(site="s")
    pb.whole_organization = True
    assert pb.WhichOneof("targets") == "whole_organization"
    assert not pb.site

    sdk = sdk_command.FleetDispatch(site="s", whole_organization=True)
    assert sdk.site == "s"
    with pytest.raises(RuntimeError):
        betterproto2.which_one_of(sdk, "targets")
    # Both go on the wire; protobuf keeps the later one (by field number order).
    assert command_pb2.FleetDispatch.FromString(bytes(sdk)).WhichOneof("targets") == "whole_organization"


def test_unknown_fields_do_not_count_for_equality_and_copies_lose_them() -> None:
    raw = command_pb2.Command(name="c1").SerializeToString() + UNKNOWN_ALL
    sdk = sdk_command.Command.parse(raw)

    # SDK ==: unknown fields are ignored. protobuf ==: they count.
    assert sdk == sdk_command.Command(name="c1")
    assert command_pb2.Command.FromString(raw) != command_pb2.Command(name="c1")
    # copy, deepcopy and dataclasses.replace rebuild the dataclass from known fields only.
    assert bytes(copy.copy(sdk)) == bytes(copy.deepcopy(sdk)) == command_pb2.Command(name="c1").SerializeToString()
    assert bytes(dataclasses.replace(sdk, value=1.0)) == command_pb2.Command(name="c1", value=1.0).SerializeToString()
    # protobuf's copies keep them; pickling the SDK object (via bytes) keeps them too.
    pb_copy = command_pb2.Command()
    pb_copy.CopyFrom(command_pb2.Command.FromString(raw))
    assert pb_copy.SerializeToString() == raw
    rebuilt: Callable[..., Any]
    rebuilt, args = sdk.__reduce__()  # what pickle uses
    assert bytes(rebuilt(*args)) == raw


def test_unknown_fields_inside_timestamps_are_dropped() -> None:
    """Well-known types the SDK unwraps (Timestamp -> datetime, Duration -> timedelta) lose unknown fields."""
    stamp = b"\x08\x05" + UNKNOWN_VARINT  # Timestamp{seconds: 5} + field 127
    raw = _wrap(4, stamp)  # Command.issued_time
    assert command_pb2.Command.FromString(raw).SerializeToString() == raw
    sdk = sdk_command.Command.parse(raw)
    assert sdk.issued_time == dt.datetime(1970, 1, 1, 0, 0, 5, tzinfo=UTC)
    assert bytes(sdk) == _wrap(4, b"\x08\x05")


def test_unknown_group_fields_are_misread() -> None:
    """Parsers must skip unknown groups (wire types 3/4, e.g. from a proto2 sender). The SDK skips only
    the start/end tags and decodes the group's inner fields as fields of the enclosing message: here the
    group's field 1 (varint 1) lands in Command.name, an int in a str field, and serializing fails.
    """
    group = tag(100, 3) + tag(1, 0) + varint(1) + tag(100, 4)  # group 100 holding {1: varint 1}
    pb = command_pb2.Command.FromString(group)
    assert pb.name == ""
    assert pb.SerializeToString() == group

    sdk = sdk_command.Command.parse(group)
    assert sdk.name == 1  # type: ignore[comparison-overlap]
    assert sdk._unknown_fields == tag(100, 3) + tag(100, 4)
    with pytest.raises(AttributeError, match="'int' object has no attribute 'encode'"):
        bytes(sdk)


def test_include_default_values_writes_null_for_unset_fields_with_presence() -> None:
    """to_dict(include_default_values=True) writes null for unset messages, oneof members and proto3
    optional fields; protobuf (always_print_fields_with_no_presence) omits them. protobuf reads the
    nulls back as unset, so the JSON is still accepted.
    """
    sdk = sdk_command.FleetDispatch(site="s1")
    pb = command_pb2.FleetDispatch(site="s1")
    verbose = sdk.to_dict(include_default_values=True)
    canonical = json_format.MessageToDict(pb, always_print_fields_with_no_presence=True)

    assert {k: v for k, v in verbose.items() if v is not None} == canonical
    assert {k for k, v in verbose.items() if v is None} == {
        "edges",
        "wholeOrganization",
        "ttl",
        "status",
        "createTime",
    }
    assert json_format.ParseDict(verbose, command_pb2.FleetDispatch()) == pb
    spec = sdk_common.ChannelSpec().to_dict(include_default_values=True)
    assert (spec["minValue"], spec["maxValue"]) == (None, None)


def test_integer_ranges_are_not_checked() -> None:
    """protobuf refuses out-of-range values on assignment; the SDK encodes whatever int it holds, and
    the receiver silently reads something else: 2**63 in an int64 arrives as -2**63, -1 in a uint64 as
    2**64 - 1, 2**64 + 5 in a uint64 as 5; 2**70 makes a varint protobuf refuses to parse.
    """
    with pytest.raises(ValueError, match="out of range"):
        telemetry_pb2.HistoryPoint(sample_count=2**63)
    with pytest.raises(ValueError, match="out of range"):
        edge_link_pb2.TelemetryAck(batch_seq=-1)

    def received(sdk: betterproto2.Message, pb_cls: Any, name: str) -> int:
        return int(getattr(pb_cls.FromString(bytes(sdk)), name))

    assert (
        received(sdk_telemetry.HistoryPoint(sample_count=2**63), telemetry_pb2.HistoryPoint, "sample_count") == I64_MIN
    )
    assert received(sdk_edge.TelemetryAck(batch_seq=-1), edge_link_pb2.TelemetryAck, "batch_seq") == U64_MAX
    assert received(sdk_edge.TelemetryAck(batch_seq=2**64 + 5), edge_link_pb2.TelemetryAck, "batch_seq") == 5
    with pytest.raises(pb_message.DecodeError):
        edge_link_pb2.TelemetryAck.FromString(bytes(sdk_edge.TelemetryAck(batch_seq=2**70)))
