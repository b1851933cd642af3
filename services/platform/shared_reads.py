"""Concurrent reads done once (of the same thing, or of items of one group), never answering a call from
before it arrived.

Fifty dashboards (or a benchmark's fifty clients) asking for one site's latest values at once each made
the same query: PostgreSQL's CPU, the fetch and decoding of 50 rows and building the answer, per call.
A cache would share the work but serve values older than the call, which a value ingested through
another replica, or an edge deleted a moment ago, would show. Here calls share a read only when it
*starts after they arrived*:

- a call for a key nobody is reading starts a read at once;
- a call that arrives while a read of its key is running waits for the next read of that key, which
  starts when the running one ends, and which every call arriving meanwhile shares.

So every answer comes from a read that began after the call did: it sees every write committed before
the call, by any process, exactly as a read of its own would (read-your-writes and cross-replica
visibility as before; no invalidation, no validity window). At most two reads per key exist (one
running, one gathering), and under load one read answers all the calls that arrived during the
previous one. A call that is cancelled leaves the read running for the others (it is shielded).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Generic, TypeVar

from core.tasks import stop_tasks

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
I = TypeVar("I", bound=Hashable)  # noqa: E741 - the item, next to K(ey) and R(esult)
R = TypeVar("R")


class SharedReads(Generic[K, T]):
    """`get(key, read)`: the result of a `read()` that started after this call (see the module's docstring).
    Every `read` passed for one key must read the same thing: the gathering calls share one of them."""

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Task[T]] = {}
        # Calls waiting for the next read of a key: its future, and the read to run.
        self._gathering: dict[K, tuple[asyncio.Future[T], Callable[[], Awaitable[T]]]] = {}

    async def get(self, key: K, read: Callable[[], Awaitable[T]]) -> T:
        if key not in self._running:
            return await asyncio.shield(self._start(key, read))
        gathering = self._gathering.get(key)
        if gathering is None:
            gathering = self._gathering[key] = (asyncio.get_running_loop().create_future(), read)
        return await asyncio.shield(gathering[0])

    def _start(self, key: K, read: Callable[[], Awaitable[T]]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(read())
        self._running[key] = task
        task.add_done_callback(lambda done: self._finished(key, done))
        return task

    def _finished(self, key: K, task: asyncio.Task[T]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # marked retrieved: its callers got it, or all of them had left
        gathering = self._gathering.pop(key, None)
        if gathering is None:
            return
        future, read = gathering
        self._start(key, read).add_done_callback(lambda done: _settle(future, done))

    def __len__(self) -> int:
        """Keys being read now."""
        return len(self._running)

    async def stop(self) -> None:
        """End the reads still running (a server stopping); their callers see them cancelled."""
        for future, _ in self._gathering.values():
            future.cancel()
        self._gathering.clear()
        await stop_tasks(list(self._running.values()))


def _settle(future: asyncio.Future[T], done: asyncio.Task[T]) -> None:
    """The gathered callers' future takes the outcome of the read started for them."""
    if future.done():
        if not done.cancelled():
            done.exception()  # nobody waits any more (stopped): retrieved, not logged as lost
        return
    if done.cancelled():
        future.cancel()
    elif (error := done.exception()) is not None:
        future.set_exception(error)
    else:
        future.set_result(done.result())


# The outcome of one item: its result, or the exception its callers get.
Outcomes = Mapping[I, R | Exception]


class GatheredReads(Generic[K, I, R]):
    """`get(group, item)`: `item`'s outcome from a `read(group, items)` that started after this call.
    `read` must return an outcome for every item it is given.

    SharedReads shares a read among calls asking for the *same* thing. Here calls ask for different
    items of one group (one bidding zone each of one product's summary) that a single read fetches
    together at about the cost of one (three queries for 1 zone or 40): forty separate calls, each
    with a read of its own, queued behind one another on the event loop. It is SharedReads keyed by
    group, whose read takes the items gathered when it starts, so the rule is the same and no answer
    is older than its call:

    - a call for a group nobody is reading starts a read of its item at once;
    - a call that arrives while a read of its group runs adds its item to the group's next read, which
      starts when the running one ends and reads every item gathered meanwhile, whatever they are.

    The read returns, per item, its result or the exception for that item alone (one zone's bad data
    fails that zone's calls only); an exception raised by the read itself (the database) fails every
    call it gathered. A cancelled call leaves the read running for the others (it is shielded).
    """

    def __init__(self, read: Callable[[K, list[I]], Awaitable[Outcomes[I, R]]]) -> None:
        self._read = read
        self._reads: SharedReads[K, Outcomes[I, R]] = SharedReads()
        # Per group, the items waiting for its next read, in arrival order.
        self._next_items: dict[K, dict[I, None]] = {}

    async def get(self, group: K, item: I) -> R:
        self._next_items.setdefault(group, {})[item] = None
        outcome = (await self._reads.get(group, lambda: self._read_next(group)))[item]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _read_next(self, group: K) -> Awaitable[Outcomes[I, R]]:
        # Called as the read starts: it takes every item gathered until now, this call's among them.
        return self._read(group, list(self._next_items.pop(group, {})))

    def __len__(self) -> int:
        """Groups being read now."""
        return len(self._reads)

    async def stop(self) -> None:
        """End the reads still running (a server stopping); their callers see them cancelled."""
        self._next_items.clear()
        await self._reads.stop()
