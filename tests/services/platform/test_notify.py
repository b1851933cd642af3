"""The LISTEN connection's task (services/platform/notify.py) ends when stopped, whatever it was doing."""

from __future__ import annotations

import pytest

from services.platform.notify import Listener
from tests.support.cancellation import loop_steps, remember_connections, stop_ends


async def test_a_stopped_listener_ends_even_when_its_connection_was_lost_in_the_same_loop_steps(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker's stop() stops its listener at any moment, also a few loop steps after the connection was
    # lost: that cancellation must end the task (asyncio.wait_for on Python 3.11 dropped it when the
    # awaited loss had just been signalled, and the listener reconnected while stop() waited forever).
    connections = remember_connections(monkeypatch)
    for steps in range(8):  # the stop 0..7 loop steps after the connection's loss
        listener = Listener(database_url, ["emma_test_channel"], lambda _channel, _payload: None)
        await listener.start()
        await listener.connected.wait()  # the task now waits for the loss
        connections[-1].terminate()  # its termination listener signals the loss in the next loop step
        await loop_steps(steps)
        ended = await stop_ends(listener.stop(), listener._task)
        if not ended:  # a listener that outlived its stop may have reconnected
            for conn in connections:
                conn.terminate()
        assert ended, f"the listener outlived its stop {steps} steps after the connection was lost"
