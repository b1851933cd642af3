"""The LISTEN connection's task (services/platform/notify.py) ends when stopped, whatever it was doing."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from services.platform.notify import Listener


async def test_a_stopped_listener_ends_even_when_its_connection_was_lost_in_the_same_loop_steps(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker's stop() stops its listener at any moment, also a few loop steps after the connection was
    # lost: that cancellation must end the task (asyncio.wait_for on Python 3.11 dropped it when the
    # awaited loss had just been signalled, and the listener reconnected while stop() waited forever).
    connections: list[asyncpg.Connection] = []
    connect = asyncpg.connect

    async def recording_connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
        conn: asyncpg.Connection = await connect(*args, **kwargs)
        connections.append(conn)
        return conn

    monkeypatch.setattr(asyncpg, "connect", recording_connect)  # the real connection, only remembered
    for steps in range(8):  # the stop 0..7 loop steps after the connection's loss
        listener = Listener(database_url, ["emma_test_channel"], lambda _channel, _payload: None)
        await listener.start()
        await listener.connected.wait()  # the task now waits for the loss
        connections[-1].terminate()  # its termination listener signals the loss in the next loop step
        for _ in range(steps):
            await asyncio.sleep(0)
        stopping = asyncio.create_task(listener.stop())
        done, _ = await asyncio.wait({stopping}, timeout=10)
        if not done:  # let the test end either way, then fail
            assert listener._task is not None
            listener._task.cancel()
            await asyncio.gather(stopping, return_exceptions=True)
            for conn in connections:
                conn.terminate()
        assert stopping in done, f"the listener outlived its stop {steps} steps after the connection was lost"
