"""The revocation listener's task (services/identity/state.py) ends when stopped, whatever it was doing."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from services.identity.state import AuthState
from tests.support.identity import auth_config


async def test_a_stopped_auth_listener_ends_even_when_its_connection_was_lost_in_the_same_loop_steps(
    migrated_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server's shutdown stops the listener at any moment, also a few loop steps after its connection
    # was lost: that cancellation must end the task (asyncio.wait_for on Python 3.11 dropped it when the
    # awaited loss had just been signalled, and the listener reconnected while stop() waited forever).
    connections: list[asyncpg.Connection] = []
    connect = asyncpg.connect

    async def recording_connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
        conn: asyncpg.Connection = await connect(*args, **kwargs)
        connections.append(conn)
        return conn

    monkeypatch.setattr(asyncpg, "connect", recording_connect)  # the real connection, only remembered
    pool = await asyncpg.create_pool(migrated_url, min_size=1, max_size=1)
    try:
        for steps in range(8):  # the stop 0..7 loop steps after the connection's loss
            state = AuthState(pool, auth_config(), migrated_url)
            await state.start()
            assert state.listening  # the task now waits for the loss (no edge streams to re-check first)
            connections[-1].terminate()  # its termination listener signals the loss in the next loop step
            for _ in range(steps):
                await asyncio.sleep(0)
            stopping = asyncio.create_task(state.stop())
            done, _ = await asyncio.wait({stopping}, timeout=10)
            if not done:  # let the test end either way, then fail
                assert state._task is not None
                state._task.cancel()
                await asyncio.gather(stopping, return_exceptions=True)
            assert stopping in done, f"the listener outlived its stop {steps} steps after the connection was lost"
    finally:
        for conn in connections:
            conn.terminate()
        await pool.close()
