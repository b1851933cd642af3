"""Registry: sites, edges, devices and device profiles, and the inventory an edge reports."""

from __future__ import annotations

from typing import Any

from emma.registry.v1 import registry_pb2, registry_pb2_grpc

from services.platform.registration import ServiceSpec, service_spec
from services.platform.runtime import Runtime

# The services this domain may import (their package faces); see docs/architecture.md.
DEPENDS_ON = ("identity",)
# The tables (and SQL functions) this domain alone reads and writes; other domains go through this package or its RPCs.
TABLES = (
    "app.sites",
    "app.edges",
    "app.devices",
    "app.device_profiles",
    "app.device_profile_channels",
    "app.edge_inventory",
)


def _registry(runtime: Runtime) -> Any:
    from services.registry.servicer import RegistryServicer

    return RegistryServicer(runtime)


# The gRPC services this domain serves (services/catalog.py hosts them).
SERVICES: tuple[ServiceSpec, ...] = (
    service_spec(
        "registry", registry_pb2, "RegistryService", registry_pb2_grpc.add_RegistryServiceServicer_to_server, _registry
    ),
)
