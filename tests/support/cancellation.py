"""Tests that a task ends when stopped or cancelled a chosen number of loop steps after what it awaits
completed (asyncio.wait_for on Python 3.11 dropped such a cancellation and shutdowns hung forever;
the architecture tests forbid it outside tests/). Each check gives up after `timeout` seconds and
cancels the task again so the test itself always ends, then reports the hang as False."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import asyncpg
import pytest


async def loop_steps(n: int) -> None:
    """Let the event loop run `n` steps."""
    for _ in range(n):
        await asyncio.sleep(0)


async def cancel_ends(task: asyncio.Task[Any], timeout: float = 10.0) -> bool:
    """Cancel `task`: True when it ended cancelled within `timeout`."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return False
    return task.cancelled()


async def stop_ends(stop: Coroutine[Any, Any, Any], task: asyncio.Task[Any] | None, timeout: float = 10.0) -> bool:
    """Run `stop` (e.g. `device.stop()`) for the worker `task`: True when it returned within `timeout`."""
    stopping = asyncio.create_task(stop)
    done, _ = await asyncio.wait({stopping}, timeout=timeout)
    if not done and task is not None:
        task.cancel()
        await asyncio.gather(stopping, return_exceptions=True)
    return stopping in done


def remember_connections(monkeypatch: pytest.MonkeyPatch) -> list[asyncpg.Connection]:
    """Every connection `asyncpg.connect` makes from now on, in order (the real connection, only
    remembered), so a test can terminate the one a listener holds."""
    connections: list[asyncpg.Connection] = []
    connect = asyncpg.connect

    async def recording_connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
        conn: asyncpg.Connection = await connect(*args, **kwargs)
        connections.append(conn)
        return conn

    monkeypatch.setattr(asyncpg, "connect", recording_connect)
    return connections
