"""The revocation listener's task (services/identity/state.py) ends when stopped, whatever it was doing."""

from __future__ import annotations

import asyncpg
import pytest

from services.identity.state import AuthState
from tests.support.cancellation import loop_steps, remember_connections, stop_ends
from tests.support.identity import auth_config


async def test_a_stopped_auth_listener_ends_even_when_its_connection_was_lost_in_the_same_loop_steps(
    migrated_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server's shutdown stops the listener at any moment, also a few loop steps after its connection
    # was lost: that cancellation must end the task (asyncio.wait_for on Python 3.11 dropped it when the
    # awaited loss had just been signalled, and the listener reconnected while stop() waited forever).
    connections = remember_connections(monkeypatch)
    pool = await asyncpg.create_pool(migrated_url, min_size=1, max_size=1)
    try:
        for steps in range(8):  # the stop 0..7 loop steps after the connection's loss
            state = AuthState(pool, auth_config(), migrated_url)
            await state.start()
            assert state.listening  # the task now waits for the loss (no edge streams to re-check first)
            connections[-1].terminate()  # its termination listener signals the loss in the next loop step
            await loop_steps(steps)
            ended = await stop_ends(state.stop(), state._task)
            assert ended, f"the listener outlived its stop {steps} steps after the connection was lost"
    finally:
        for conn in connections:
            conn.terminate()
        await pool.close()
