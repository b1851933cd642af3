"""EdgeLinkService: the cloud end of each edge's one bidirectional stream (sessions, events, ingest)."""

from __future__ import annotations

from typing import Any

from emma.edge.v1 import edge_link_pb2, edge_link_pb2_grpc

from services.edgelink.connections import edge_connections
from services.identity import Access
from services.platform.registration import ServiceSpec, service_spec
from services.platform.runtime import Runtime

# What other packages may use of EdgeLink; everything else in services/edgelink/ is private.
__all__ = ["DEPENDS_ON", "POLICY", "SERVICES", "TABLES", "edge_connections"]

# The services this domain may import (their package faces); see docs/architecture.md.
# The optimizer for its schedules, delivered like commands through a relay of the producing domain.
DEPENDS_ON = ("identity", "registry", "telemetry", "command", "optimizer")
# The tables (and SQL functions) this domain alone reads and writes; other domains go through this package or its RPCs.
TABLES = ("app.edge_sessions", "app.edge_events")


def _edge_link(runtime: Runtime) -> Any:
    from services.edgelink.servicer import EdgeLinkServicer

    return EdgeLinkServicer(runtime)


# The gRPC services this domain serves (services/catalog.py hosts them).
SERVICES: tuple[ServiceSpec, ...] = (
    service_spec(
        "edge", edge_link_pb2, "EdgeLinkService", edge_link_pb2_grpc.add_EdgeLinkServiceServicer_to_server, _edge_link
    ),
)

# The minimum role of each RPC (services.identity.Access); the catalog registers it with the interceptor.
# The edge stream is authenticated by the API key inside its Hello.
POLICY: dict[str, Access] = {"/emma.edge.v1.EdgeLinkService/Connect": Access.EDGE}
