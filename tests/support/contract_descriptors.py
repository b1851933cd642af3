"""The contract's descriptors, loaded from the generated modules (what the services and gateway use)."""

from __future__ import annotations

from collections.abc import Iterator

from emma.alarm.v1 import alarm_pb2
from emma.command.v1 import command_pb2
from emma.common.v1 import errors_pb2, types_pb2
from emma.edge.v1 import edge_link_pb2
from emma.forecast.v1 import forecast_pb2
from emma.identity.v1 import identity_pb2
from emma.market.v1 import market_pb2
from emma.optimizer.v1 import optimizer_pb2
from emma.registry.v1 import registry_pb2
from emma.telemetry.v1 import telemetry_pb2
from google.protobuf import descriptor as d

FILES = [
    types_pb2.DESCRIPTOR,
    errors_pb2.DESCRIPTOR,
    edge_link_pb2.DESCRIPTOR,
    telemetry_pb2.DESCRIPTOR,
    command_pb2.DESCRIPTOR,
    registry_pb2.DESCRIPTOR,
    identity_pb2.DESCRIPTOR,
    market_pb2.DESCRIPTOR,
    forecast_pb2.DESCRIPTOR,
    optimizer_pb2.DESCRIPTOR,
    alarm_pb2.DESCRIPTOR,
]


def services() -> Iterator[d.ServiceDescriptor]:
    for f in FILES:
        yield from f.services_by_name.values()


def methods() -> Iterator[d.MethodDescriptor]:
    for s in services():
        yield from s.methods


def messages() -> Iterator[d.Descriptor]:
    def walk(m: d.Descriptor) -> Iterator[d.Descriptor]:
        yield m
        for n in m.nested_types:
            yield from walk(n)

    for f in FILES:
        for m in f.message_types_by_name.values():
            yield from walk(m)
