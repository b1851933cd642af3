"""PostgreSQL LISTEN/NOTIFY on a dedicated connection that comes back after the database does.

Replicas tell each other things through PostgreSQL (a new command for an edge, a command's new state,
a revoked session) instead of through a broker. A notification can be lost while the connection is
down, so every user also gets `on_reconnect` to resynchronise from the tables, or `on_lost` to tell
its own users that something may be missing (Fanout).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Generic, TypeVar

import asyncpg
import grpc
from emma.common.v1 import errors_pb2

from core.tasks import stop_task
from services.errors import ApiError

log = logging.getLogger("emma.notify")

Handler = Callable[[str, str], None]  # (channel, payload)
T = TypeVar("T")


class Listener:
    def __init__(
        self,
        dsn: str,
        channels: Sequence[str],
        on_notify: Handler,
        on_reconnect: Callable[[], Awaitable[None]] | None = None,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        """`on_reconnect` runs after every reconnection (not the first connection), `on_lost` as soon as
        a connection that listened is lost (not on stop)."""
        self._dsn = dsn
        self._channels = list(channels)
        self._on_notify = on_notify
        self._on_reconnect = on_reconnect
        self._on_lost = on_lost
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
                listened = self.connected.is_set()
                self.connected.clear()
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)
            # Here only when the connection was lost (stop() cancels, which skips this).
            if listened and self._on_lost:
                self._on_lost()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            first = False


class Gap(enum.Enum):
    """Why a Fanout subscriber's queue ended: what it was sent next is not in it."""

    BEHIND = "behind"  # the subscriber fell a whole queue behind
    LOST = "lost"  # the LISTEN connection was lost: notifications sent meanwhile reached nobody


def watch_gap(gap: Gap, queue: str, reread: str) -> ApiError:
    """The error that ends a watch stream at `gap`: ABORTED with WATCH_INTERRUPTED, so its client watches
    again and `reread`s (re-lists) what it shows; `queue` names the queue's size ("1000 changes")."""
    if gap is Gap.BEHIND:
        why = f"the stream fell more than {queue} behind"
    else:
        why = "the server lost its database notifications"
    message = f"{why}; watch again and {reread}"
    return ApiError(grpc.StatusCode.ABORTED, errors_pb2.ERROR_REASON_WATCH_INTERRUPTED, message)


class Fanout(Generic[T]):
    """One LISTEN per process on `channel`, fanned out to every subscriber (a Watch… stream each).

    A subscriber never misses a notification silently: its queue ends with a Gap when it falls `size`
    items behind, and when the LISTEN connection is lost, since PostgreSQL does not keep what it
    announced while nobody listened. The stream then ends with an error telling its client to watch
    again and re-read. `parse` turns a payload into an item (None: not one of ours, dropped).
    """

    def __init__(self, dsn: str, channel: str, parse: Callable[[str], T | None], size: int) -> None:
        self._queues: set[asyncio.Queue[T | Gap]] = set()
        self._parse = parse
        self._size = size
        self._listener = Listener(dsn, [channel], self._on_notify, on_lost=self._on_lost)

    async def start(self) -> None:
        await self._listener.start()

    async def stop(self) -> None:
        await self._listener.stop()

    async def wait_connected(self) -> None:
        await self._listener.connected.wait()

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[T | Gap]]:
        """A queue of what is announced from now on, ended by a Gap; subscribe, then wait_connected."""
        queue: asyncio.Queue[T | Gap] = asyncio.Queue(self._size)
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)

    def _on_notify(self, _channel: str, payload: str) -> None:
        item = self._parse(payload)
        if item is None:
            return
        for queue in list(self._queues):
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:
                self._end(queue, Gap.BEHIND)

    def _on_lost(self) -> None:
        for queue in list(self._queues):
            self._end(queue, Gap.LOST)

    def _end(self, queue: asyncio.Queue[T | Gap], gap: Gap) -> None:
        """No more items for `queue`: the subscriber reads what it has, then `gap` (room made for it)."""
        self._queues.discard(queue)
        if queue.full():
            queue.get_nowait()
        queue.put_nowait(gap)
