"""Registry: sites, edges, devices and device profiles, and the inventory an edge reports."""

from __future__ import annotations

from typing import Any

from emma.registry.v1 import registry_pb2, registry_pb2_grpc

from services.identity import Access
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
from services.registry.inventory import edge_inventory, edge_with_device, store_inventories, store_inventory
from services.registry.ports import (
    EdgeConnection,
    EdgeConnections,
    EdgeDataEraser,
    RegistryPorts,
    edge_connections,
    use_ports,
)
from services.registry.provisioning import ensure_edge
from services.registry.sites import SiteProfile, all_sites, site_location, site_profile, site_time_zone

# What other packages may use of the registry; everything else in services/registry/ is private.
__all__ = [
    "DEPENDS_ON",
    "POLICY",
    "SERVICES",
    "TABLES",
    "EdgeConnection",
    "EdgeConnections",
    "EdgeDataEraser",
    "RegistryPorts",
    "SiteProfile",
    "all_sites",
    "channel_spec",
    "edge_connections",
    "edge_inventory",
    "edge_name",
    "edge_names",
    "edge_pk",
    "edge_with_device",
    "edge_with_time_zone",
    "edges_of_organization",
    "edges_of_site",
    "ensure_edge",
    "site_location",
    "site_profile",
    "site_time_zone",
    "store_inventories",
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


_REG = "/emma.registry.v1.RegistryService/"
# The minimum role of each RPC (services.identity.Access); the catalog registers it with the interceptor.
POLICY: dict[str, Access] = {
    _REG + "GetOrganization": Access.VIEWER,
    _REG + "ListOrganizations": Access.USER,
    _REG + "CreateOrganization": Access.PLATFORM_ADMIN,
    _REG + "UpdateOrganization": Access.ADMIN,
    _REG + "DeleteOrganization": Access.PLATFORM_ADMIN,
    _REG + "GetSite": Access.VIEWER,
    _REG + "ListSites": Access.VIEWER,
    _REG + "CreateSite": Access.ADMIN,
    _REG + "UpdateSite": Access.ADMIN,
    _REG + "DeleteSite": Access.ADMIN,
    _REG + "GetEdge": Access.VIEWER,
    _REG + "ListEdges": Access.VIEWER,
    _REG + "CreateEdge": Access.ADMIN,
    _REG + "UpdateEdge": Access.ADMIN,
    _REG + "DeleteEdge": Access.ADMIN,
    _REG + "GetDevice": Access.VIEWER,
    _REG + "ListDevices": Access.VIEWER,
    _REG + "CreateDevice": Access.ADMIN,
    _REG + "UpdateDevice": Access.ADMIN,
    _REG + "DeleteDevice": Access.ADMIN,
    _REG + "GetDeviceProfile": Access.VIEWER,
    _REG + "ListDeviceProfiles": Access.VIEWER,
    _REG + "CreateDeviceProfile": Access.ADMIN,
    _REG + "UpdateDeviceProfile": Access.ADMIN,
    _REG + "DeleteDeviceProfile": Access.ADMIN,
    _REG + "BulkProvision": Access.ADMIN,
    _REG + "EraseSite": Access.ADMIN,
}
