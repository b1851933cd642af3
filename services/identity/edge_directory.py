"""What identity needs to know about edges, which the registry owns: an edge's pk by name and back.

Identity sits below the registry, so it may not import it. An edge API key belongs to an edge pk; to
name that edge (the caller of an EdgeLink stream, an audit row) or to find the pk of a named edge
(the key RPCs), identity asks this directory, which the composition (services/cloud.py) supplies
with use_edge_directory before any call is served.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from services.names import EdgeName
from services.platform.migrations import Conn


class EdgeDirectory(Protocol):
    async def edge_pk(self, conn: Conn, name: EdgeName) -> int | None:
        """The edge's pk, or None when there is no such edge."""
        ...

    async def edge_name(self, conn: Conn, pk: int) -> EdgeName | None:
        """The name of the edge with this pk, or None when it does not exist (or was erased)."""
        ...

    async def edge_names(self, conn: Conn, pks: Sequence[int]) -> dict[int, EdgeName]:
        """pk -> name of those of `pks` that exist, in one statement."""
        ...


_directory: EdgeDirectory | None = None


def use_edge_directory(directory: EdgeDirectory) -> None:
    """Called by the composition (services/cloud.py) before servicers are built."""
    global _directory
    _directory = directory


def edge_directory() -> EdgeDirectory:
    if _directory is None:
        raise RuntimeError("no edge directory: the composition calls services.identity.use_edge_directory first")
    return _directory
