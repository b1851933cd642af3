"""Stopping background tasks (pollers, schedulers, engines, listeners) so that they really end."""

from __future__ import annotations

import asyncio
from typing import Any

# How long to wait for a cancelled task before cancelling it again.
RECANCEL_AFTER_S = 0.1


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` (None: nothing to stop) and return once it has ended, so a caller's stop() returns
    only when the loop can no longer touch what the caller is about to close.

    One cancel() is not enough: library code the task awaits may swallow a cancellation. pymodbus, for
    one, awaits each response with asyncio.wait_for, which on Python 3.11 drops a cancellation that
    arrives together with the response; the task then polls on and `await task` never returns (seen as a
    300 s hang of an edge test in CI). So the task is cancelled again until it is done.

    An error the task ended with is raised here; the caller's own cancellation propagates.
    """
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_AFTER_S)
    if not task.cancelled():
        task.result()


async def stop_tasks(tasks: list[asyncio.Task[Any]]) -> None:
    """`stop_task` for each of `tasks` at once. Errors they ended with are dropped: the caller is
    stopping them because something else already ended, and that is the reason it reports."""
    await asyncio.gather(*(stop_task(task) for task in tasks), return_exceptions=True)
