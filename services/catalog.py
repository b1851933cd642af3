"""The services a cloud process can host, by short name: the one list of domains.

A new domain is one line in DOMAINS (its package face exports SERVICES; docs/contributing.md).
A service whose servicer factory is None is still served: every RPC answers UNIMPLEMENTED with
ErrorInfo reason METHOD_NOT_IMPLEMENTED and a message naming the method, so clients get a clear
answer instead of a connection error, and reflection already shows the full contract.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from emma.common.v1 import errors_pb2
from google.protobuf import descriptor as pb_descriptor

from services import alarm, command, edgelink, forecast, identity, market, optimizer, registry, telemetry
from services.errors import ApiError, ConfigError
from services.platform.registration import ServiceSpec
from services.platform.runtime import Runtime

__all__ = ["DOMAINS", "SERVICES", "ServiceSpec", "add_services", "resolve", "unimplemented_servicer"]

# Every domain whose services a cloud process can host, in the order `emma serve all` adds them.
DOMAINS = (edgelink, telemetry, command, registry, identity, market, forecast, optimizer, alarm)

SERVICES: dict[str, ServiceSpec] = {spec.key: spec for domain in DOMAINS for spec in domain.SERVICES}

# Every hosted RPC's minimum role, from the domain that serves it (deny by default for the rest).
for _domain in DOMAINS:
    identity.register_policy(_domain.POLICY)


def unimplemented_servicer(spec: ServiceSpec) -> Any:
    """A servicer whose every method answers UNIMPLEMENTED with a message naming the method."""

    def make(method: pb_descriptor.MethodDescriptor) -> Callable[..., Any]:
        async def handler(self: Any, request: Any, context: Any) -> Any:
            raise ApiError(
                grpc.StatusCode.UNIMPLEMENTED,
                errors_pb2.ERROR_REASON_METHOD_NOT_IMPLEMENTED,
                f"{spec.full_name}/{method.name} is part of the v1 contract but not implemented in this release",
                metadata={"method": f"{spec.full_name}/{method.name}"},
            )

        return handler

    namespace = {m.name: make(m) for m in spec.descriptor.methods}
    return type(f"Unimplemented{spec.descriptor.name}", (), namespace)()


def resolve(keys: list[str]) -> list[ServiceSpec]:
    """Service short names (or "all") -> specs, with a clear error for unknown names."""
    if not keys or "all" in keys:
        return list(SERVICES.values())
    unknown = [k for k in keys if k not in SERVICES]
    if unknown:
        raise ConfigError(f"unknown service {', '.join(unknown)}; choose from {', '.join(SERVICES)} or all")
    return [SERVICES[k] for k in dict.fromkeys(keys)]


def add_services(server: grpc.aio.Server, specs: list[ServiceSpec], runtime: Runtime) -> list[Any]:
    """Add each service's servicer (or its UNIMPLEMENTED stand-in); returns the servicers."""
    servicers = []
    for spec in specs:
        servicer = spec.factory(runtime) if spec.factory else unimplemented_servicer(spec)
        spec.add_to_server(servicer, server)
        servicers.append(servicer)
    return servicers
