"""Fan-out of command state changes to WatchCommand streams: one LISTEN per process, not per stream."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator

import asyncpg

from services.command.transitions import EVENTS_CHANNEL
from services.platform.notify import Listener

# Watchers also re-read on this period, so a notification lost while LISTEN reconnects costs a second.
FALLBACK_POLL_S = 1.0


class Subscription:
    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def notify(self) -> None:
        self._changed.set()

    async def wait_for_change(self) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._changed.wait(), FALLBACK_POLL_S)
        self._changed.clear()


class CommandWatcher:
    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self._subs: dict[uuid.UUID, set[Subscription]] = defaultdict(set)
        self._listener = Listener(dsn, [EVENTS_CHANNEL], self._on_notify, self._on_reconnect)

    async def start(self) -> None:
        await self._listener.start()

    async def stop(self) -> None:
        await self._listener.stop()

    def _on_notify(self, _channel: str, payload: str) -> None:
        try:
            command_id = uuid.UUID(payload)
        except ValueError:
            return
        for sub in self._subs.get(command_id, ()):
            sub.notify()

    async def _on_reconnect(self) -> None:
        for subs in self._subs.values():
            for sub in subs:
                sub.notify()

    @contextlib.asynccontextmanager
    async def subscribe(self, command_id: uuid.UUID) -> AsyncIterator[Subscription]:
        """Subscribe before reading the current state, so no change slips between read and wait."""
        sub = Subscription()
        self._subs[command_id].add(sub)
        try:
            yield sub
        finally:
            self._subs[command_id].discard(sub)
            if not self._subs[command_id]:
                del self._subs[command_id]
