"""Stopping the background tasks the domains' workers run (schedulers, engines, listeners)."""

from __future__ import annotations

import asyncio
import contextlib


async def stop_task(task: asyncio.Task[None] | None) -> None:
    """Cancel `task` (None: nothing to stop) and wait until it has ended, so a worker's stop() returns
    only when its loop can no longer touch the pool it is about to lose."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
