"""How a domain offers its gRPC services to the process that hosts it.

Each domain's package face exports `SERVICES`, a tuple of ServiceSpec; services/catalog.py lists the
domains, so a new domain is one line there (docs/contributing.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor as pb_descriptor

from services.platform.runtime import Runtime

ServicerFactory = Callable[[Runtime], Any]


@dataclass(frozen=True)
class ServiceSpec:
    """One gRPC service of the contract and, once implemented, the factory of its servicer."""

    key: str  # the short name `emma serve <key>` takes
    descriptor: pb_descriptor.ServiceDescriptor
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    factory: ServicerFactory | None

    @property
    def full_name(self) -> str:
        return str(self.descriptor.full_name)


def service_spec(
    key: str,
    file: Any,
    service: str,
    add: Callable[[Any, grpc.aio.Server], None],
    factory: ServicerFactory | None = None,
) -> ServiceSpec:
    """A ServiceSpec from a generated *_pb2 module and the service's name in it."""
    return ServiceSpec(key, file.DESCRIPTOR.services_by_name[service], add, factory)
