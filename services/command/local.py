"""What the command servicer and the EdgeLink relay of one process tell each other in memory.

Replicas talk through PostgreSQL (NOTIFY), and that stays the rule: every change still commits its
notification. But when the caller's CommandService and the edge's stream live in the same process
(`emma up`, `emma serve edge command`), two round trips through the database are pure waiting: a new
command waits for its NOTIFY to come back before the relay delivers it, and WatchCommand waits for the
NOTIFY of each transition and then re-reads the command. Here CreateCommand, when the relay holds the
edge's stream, delivers the new command in its own call and hands it to the relay to send (migration
0026), and watchers get each transition the relay committed with its data.

A hub belongs to one pool (one database): tests host several clouds over several databases in one
process, and an edge pk means nothing across them. The hub holds the pool itself, so its id cannot be
reused while the hub exists; the relay and the watcher leave it when they stop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Change:
    """One committed transition of a command, as its event row and the command row now say."""

    command_id: uuid.UUID
    from_state: str
    to_state: str
    time: dt.datetime  # the event's time, which is also the command's update_time
    reason: str = ""
    message: str = ""
    applied_value: float | None = None  # the command's applied value after the change


class LocalDelivery(Protocol):
    """The relay of this process, as CreateCommand sees it."""

    def holds(self, edge_pk: int) -> bool:
        """Whether the edge's stream is held here (a hint: it may end at any time)."""
        ...

    def lock(self, edge_pk: int) -> asyncio.Lock:
        """Held from marking an edge's commands DELIVERED until they are handed to its stream, so two
        deliveries of one edge cannot overtake each other on the way to the edge."""
        ...

    async def send_delivered(
        self, edge_pk: int, rows: list[dict[str, Any]], before_logs: Callable[[], None] | None = None
    ) -> None:
        """Send commands just marked DELIVERED (oldest first) on the edge's stream; hold `lock(edge_pk)`.
        `before_logs` runs once they are on their way, before the delivery's own log lines."""
        ...


class LocalHub:
    def __init__(self, pool: Any) -> None:
        self.pool = pool
        # Set by the relay: delivery to the edge streams this process holds.
        self.delivery: LocalDelivery | None = None
        # Set by the watcher: a committed change for WatchCommand streams of this process; whether a
        # stream (or a CreateCommand waiting for the final state) watches that command.
        self.changed: Callable[[Change], bool] | None = None

    def empty(self) -> bool:
        return self.delivery is None and self.changed is None


_HUBS: dict[int, LocalHub] = {}


def hub(pool: Any) -> LocalHub:
    """This pool's hub (made on first use)."""
    found = _HUBS.get(id(pool))
    if found is None or found.pool is not pool:
        found = _HUBS[id(pool)] = LocalHub(pool)
    return found


def leave(pool: Any) -> None:
    """Forget the hub once neither side uses it any more."""
    found = _HUBS.get(id(pool))
    if found is not None and found.pool is pool and found.empty():
        del _HUBS[id(pool)]
