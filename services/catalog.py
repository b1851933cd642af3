"""The services a cloud process can host, by short name, and how to build each one.

A service whose implementation has not landed yet is still served: every RPC answers UNIMPLEMENTED
with ErrorInfo reason METHOD_NOT_IMPLEMENTED and a message naming the method, so clients get a clear
answer instead of a connection error, and reflection already shows the full contract.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from emma.command.v1 import command_pb2, command_pb2_grpc
from emma.common.v1 import errors_pb2
from emma.edge.v1 import edge_link_pb2, edge_link_pb2_grpc
from emma.identity.v1 import identity_pb2, identity_pb2_grpc
from emma.registry.v1 import registry_pb2, registry_pb2_grpc
from emma.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from google.protobuf import descriptor as pb_descriptor

from services.errors import ApiError, ConfigError
from services.runtime import Runtime

ServicerFactory = Callable[[Runtime], Any]


@dataclass(frozen=True)
class ServiceSpec:
    """One gRPC service of the contract and, once implemented, the factory of its servicer."""

    key: str
    descriptor: pb_descriptor.ServiceDescriptor
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    factory: ServicerFactory | None
    issue: str

    @property
    def full_name(self) -> str:
        return str(self.descriptor.full_name)


def unimplemented_servicer(spec: ServiceSpec) -> Any:
    """A servicer whose every method answers UNIMPLEMENTED with a message naming the method."""

    def make(method: pb_descriptor.MethodDescriptor) -> Callable[..., Any]:
        async def handler(self: Any, request: Any, context: Any) -> Any:
            raise ApiError(
                grpc.StatusCode.UNIMPLEMENTED,
                errors_pb2.ERROR_REASON_METHOD_NOT_IMPLEMENTED,
                f"{spec.full_name}/{method.name} is part of the v1 contract but not implemented "
                f"in this release yet ({spec.issue})",
                metadata={"method": f"{spec.full_name}/{method.name}"},
            )

        return handler

    namespace = {m.name: make(m) for m in spec.descriptor.methods}
    return type(f"Unimplemented{spec.descriptor.name}", (), namespace)()


def _spec(
    key: str,
    file: Any,
    service: str,
    add: Callable[[Any, grpc.aio.Server], None],
    issue: str,
    factory: ServicerFactory | None = None,
) -> ServiceSpec:
    return ServiceSpec(key, file.DESCRIPTOR.services_by_name[service], add, factory, issue)


def _edge_link(runtime: Runtime) -> Any:
    from services.edgelink.servicer import EdgeLinkServicer

    return EdgeLinkServicer(runtime)


def _command(runtime: Runtime) -> Any:
    from services.command.servicer import CommandServicer

    return CommandServicer(runtime)


def _registry(runtime: Runtime) -> Any:
    from services.registry.servicer import RegistryServicer

    return RegistryServicer(runtime)


def _identity(runtime: Runtime) -> Any:
    from services.identity.servicer import IdentityServicer

    return IdentityServicer(runtime)


def _audit(runtime: Runtime) -> Any:
    from services.identity.audit import AuditServicer

    return AuditServicer(runtime)


def _telemetry(runtime: Runtime) -> Any:
    from services.telemetry.servicer import TelemetryServicer

    return TelemetryServicer(runtime)


# Implementations register themselves here as they land (see services/<domain>/).
SERVICES: dict[str, ServiceSpec] = {
    s.key: s
    for s in (
        _spec(
            "edge",
            edge_link_pb2,
            "EdgeLinkService",
            edge_link_pb2_grpc.add_EdgeLinkServiceServicer_to_server,
            "issue 4, cloud ingest",
            _edge_link,
        ),
        _spec(
            "telemetry",
            telemetry_pb2,
            "TelemetryService",
            telemetry_pb2_grpc.add_TelemetryServiceServicer_to_server,
            "issue 4, cloud ingest",
            _telemetry,
        ),
        _spec(
            "command",
            command_pb2,
            "CommandService",
            command_pb2_grpc.add_CommandServiceServicer_to_server,
            "issue 5, command dispatch",
            _command,
        ),
        _spec(
            "registry",
            registry_pb2,
            "RegistryService",
            registry_pb2_grpc.add_RegistryServiceServicer_to_server,
            "issue 6, tenancy and identity",
            _registry,
        ),
        _spec(
            "identity",
            identity_pb2,
            "IdentityService",
            identity_pb2_grpc.add_IdentityServiceServicer_to_server,
            "issue 6, tenancy and identity",
            _identity,
        ),
        _spec(
            "audit",
            identity_pb2,
            "AuditService",
            identity_pb2_grpc.add_AuditServiceServicer_to_server,
            "issue 6, tenancy and identity",
            _audit,
        ),
    )
}


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
