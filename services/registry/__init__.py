"""Registry: sites, edges, devices and device profiles, and the inventory an edge reports."""

from __future__ import annotations

from typing import Any

from emma.registry.v1 import registry_pb2, registry_pb2_grpc

from services.platform.registration import ServiceSpec, service_spec
from services.platform.runtime import Runtime
from services.registry.device_profiles import channel_spec
from services.registry.edges import (
    edge_name,
    edge_names,
    edge_pk,
    edge_with_time_zone,
    edges_of_organization,
    edges_of_site,
)
from services.registry.inventory import device_inventory, edge_inventory, store_inventory
from services.registry.ports import EdgeConnection, EdgeConnections, EdgeDataEraser, RegistryPorts, use_ports
from services.registry.provisioning import ensure_edge
from services.registry.sites import site_location, site_time_zone

# What other packages may use of the registry; everything else in services/registry/ is private.
__all__ = [
    "DEPENDS_ON",
    "SERVICES",
    "TABLES",
    "EdgeConnection",
    "EdgeConnections",
    "EdgeDataEraser",
    "RegistryPorts",
    "channel_spec",
    "device_inventory",
    "edge_inventory",
    "edge_name",
    "edge_names",
    "edge_pk",
    "edge_with_time_zone",
    "edges_of_organization",
    "edges_of_site",
    "ensure_edge",
    "site_location",
    "site_time_zone",
    "store_inventory",
    "use_ports",
]

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
