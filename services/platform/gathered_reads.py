"""Calls for items of one kind that arrive while a read of that kind runs, answered by ONE next read.

SharedReads (services/telemetry/shared_read.py) shares a read among calls asking for the *same* thing.
Here calls ask for different items of one group (one bidding zone each of one product's summary) that
a single read can fetch together at the cost of about one (three queries for 1 zone or 40). Forty
separate calls each running their own read queue behind one another on the event loop; gathered,
they cost about one batched read. The rule is SharedReads' rule, so no answer is older than its call:

- a call for a group nobody is reading starts a read of its item at once;
- a call that arrives while a read of its group runs adds its item to the group's next read, which
  starts when the running one ends and reads every item gathered meanwhile, whatever they are.

Every answer thus comes from a read that began after the call arrived: no cache, no validity window.
The read returns, per item, its result or the exception for that item alone (one zone's bad data
fails that zone's calls only); an exception raised by the read itself (the database) fails every
call it gathered. A cancelled call leaves the read running for the others (it is shielded).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Generic, TypeVar

from core.tasks import stop_tasks

K = TypeVar("K", bound=Hashable)
I = TypeVar("I", bound=Hashable)  # noqa: E741 - the item, next to K(ey) and R(esult)
R = TypeVar("R")

# The outcome of one item: its result, or the exception its callers get.
Outcomes = Mapping[I, R | Exception]


class GatheredReads(Generic[K, I, R]):
    """`get(group, item)`: `item`'s outcome from a `read(group, items)` that started after this call.
    `read` must return an outcome for every item it is given."""

    def __init__(self, read: Callable[[K, list[I]], Awaitable[Outcomes[I, R]]]) -> None:
        self._read = read
        self._running: dict[K, asyncio.Task[Outcomes[I, R]]] = {}
        # Per group, the items waiting for its next read (in arrival order) and the future they share.
        self._gathering: dict[K, tuple[dict[I, None], asyncio.Future[Outcomes[I, R]]]] = {}

    async def get(self, group: K, item: I) -> R:
        if group not in self._running:
            outcomes = await asyncio.shield(self._start(group, [item]))
        else:
            gathering = self._gathering.get(group)
            if gathering is None:
                gathering = self._gathering[group] = ({}, asyncio.get_running_loop().create_future())
            gathering[0][item] = None
            outcomes = await asyncio.shield(gathering[1])
        outcome = outcomes[item]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _start(self, group: K, items: list[I]) -> asyncio.Task[Outcomes[I, R]]:
        task = asyncio.ensure_future(self._read(group, items))
        self._running[group] = task
        task.add_done_callback(lambda done: self._finished(group, done))
        return task

    def _finished(self, group: K, task: asyncio.Task[Outcomes[I, R]]) -> None:
        if self._running.get(group) is task:
            del self._running[group]
        if not task.cancelled():
            task.exception()  # marked retrieved: its callers got it, or all of them had left
        gathering = self._gathering.pop(group, None)
        if gathering is None:
            return
        items, future = gathering
        self._start(group, list(items)).add_done_callback(lambda done: _settle(future, done))

    def __len__(self) -> int:
        """Groups being read now."""
        return len(self._running)

    async def stop(self) -> None:
        """End the reads still running (a server stopping); their callers see them cancelled."""
        for _, future in self._gathering.values():
            future.cancel()
        self._gathering.clear()
        await stop_tasks(list(self._running.values()))


def _settle(future: asyncio.Future[Outcomes[I, R]], done: asyncio.Task[Outcomes[I, R]]) -> None:
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
