"""What the registry needs from the domains above it, declared here and supplied by the composition.

The registry sits below telemetry, command and edgelink, so it may not import them. An edge's
connection state lives in EdgeLink's sessions, and erasing an edge must reach data other domains
keep of it; the registry declares these as callables and services/cloud.py passes the
implementations (use_ports) before any servicer is built.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from services.platform.migrations import Conn


@dataclass(frozen=True)
class EdgeConnection:
    """An edge's connection as its last session recorded it."""

    online: bool
    last_seen_time: dt.datetime
    agent_version: str
    clock_offset_ms: float


class EdgeConnections(Protocol):
    """pk -> connection, for those of the edges that ever connected."""

    async def __call__(self, conn: Conn, edge_pks: Sequence[int]) -> dict[int, EdgeConnection]: ...


class EdgeDataEraser(Protocol):
    """Delete what a domain keeps of these edges beyond rows keyed by edge_pk (which the registry's
    erasure sweeps itself); returns rows deleted per table ("telemetry.samples")."""

    async def __call__(self, conn: Conn, edge_pks: Sequence[int]) -> dict[str, int]: ...


async def _never_connected(conn: Conn, edge_pks: Sequence[int]) -> dict[int, EdgeConnection]:
    return {}


@dataclass(frozen=True)
class RegistryPorts:
    edge_connections: EdgeConnections = _never_connected
    # Run in order, before the edges' rows are swept, inside the erasing transaction.
    edge_erasers: tuple[EdgeDataEraser, ...] = ()


_ports = RegistryPorts()


def use_ports(ports: RegistryPorts) -> None:
    """Called once by the composition (services/cloud.py) before servicers are built."""
    global _ports
    _ports = ports


def current_ports() -> RegistryPorts:
    return _ports


async def edge_connections(conn: Conn, edge_pks: Sequence[int]) -> dict[int, EdgeConnection]:
    """Read-only: each of the edges' connection as its last session recorded it (open or closed, last
    seen), for those that ever connected. The sessions are EdgeLink's; the registry reads them through
    the port the composition passed (use_ports), so a domain below EdgeLink (alarm's offline rules)
    learns that a stream closed without importing it."""
    return await _ports.edge_connections(conn, edge_pks)
