"""PostgreSQL LISTEN/NOTIFY on a dedicated connection that comes back after the database does.

Replicas tell each other things through PostgreSQL (a new command for an edge, a command's new state,
a revoked session) instead of through a broker. A notification can be lost while the connection is
down, so every user also gets `on_reconnect` to resynchronise from the tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from core.tasks import stop_task

log = logging.getLogger("emma.notify")

Handler = Callable[[str, str], None]  # (channel, payload)


class Listener:
    def __init__(
        self,
        dsn: str,
        channels: Sequence[str],
        on_notify: Handler,
        on_reconnect: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._dsn = dsn
        self._channels = list(channels)
        self._on_notify = on_notify
        self._on_reconnect = on_reconnect
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"listen-{','.join(self._channels)}")

    async def stop(self) -> None:
        await stop_task(self._task)

    def _deliver(self, _conn: object, _pid: int, channel: str, payload: object) -> None:
        try:
            self._on_notify(channel, str(payload))
        except Exception:
            log.exception("notification handler failed", extra={"channel": channel})

    async def _run(self) -> None:
        delay = 0.1
        first = True
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._dsn)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                for channel in self._channels:
                    await conn.add_listener(channel, self._deliver)
                self.connected.set()
                delay = 0.1
                if not first and self._on_reconnect:
                    await self._on_reconnect()
                first = False
                # Ping now and then: a silently dead TCP connection would otherwise never be noticed.
                while not lost.is_set():
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns when the loss was
                    # signalled just as stop() cancelled this task and drops the cancellation; the task
                    # then reconnected and stop() waited for it forever.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(10):
                            await lost.wait()
                    if not lost.is_set():
                        await conn.execute("SELECT 1")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("LISTEN connection lost (%s); reconnecting in %.1f s", exc, delay)
            finally:
                self.connected.clear()
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            first = False
