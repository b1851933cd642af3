"""The LISTEN connection's task (services/platform/notify.py) ends when stopped, whatever it was doing;
its fan-out to watch streams never leaves a silent gap."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from emma.common.v1 import errors_pb2

from core.status import reason_name
from services.platform.notify import Fanout, Gap, Listener, watch_gap
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


CHANNEL = "emma_test_fanout"


async def _notify(dsn: str, *payloads: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for payload in payloads:
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
    finally:
        await conn.close()


async def _terminate_listener(dsn: str) -> None:
    """What a database restart does to the LISTEN connection: its backend ends under it."""
    conn = await asyncpg.connect(dsn)
    try:
        pids = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query = $1",
            f'LISTEN "{CHANNEL}"',
        )
        assert len(pids) == 1, pids
        await conn.execute("SELECT pg_terminate_backend($1)", pids[0]["pid"])
    finally:
        await conn.close()


async def _get(queue: asyncio.Queue[int | Gap]) -> int | Gap:
    async with asyncio.timeout(10):
        return await queue.get()


def _number(payload: str) -> int | None:
    return int(payload) if payload.isdigit() else None


@contextlib.asynccontextmanager
async def _running(dsn: str, size: int) -> AsyncIterator[Fanout[int]]:
    fanout = Fanout(dsn, CHANNEL, _number, size)
    await fanout.start()
    try:
        yield fanout
    finally:
        await fanout.stop()


async def test_a_fanout_gives_every_subscriber_each_item_and_drops_what_it_cannot_parse(database_url: str) -> None:
    async with _running(database_url, 10) as fanout:
        with fanout.subscribe() as first, fanout.subscribe() as second:
            await fanout.wait_connected()
            await _notify(database_url, "1", "not ours", "2")
            assert [await _get(first), await _get(first)] == [1, 2]
            assert [await _get(second), await _get(second)] == [1, 2]
        with fanout.subscribe() as later:  # a new subscriber gets what comes after it subscribed
            await _notify(database_url, "3")
            assert await _get(later) == 3
            assert first.empty() and second.empty()


async def test_a_subscriber_a_whole_queue_behind_is_ended_with_a_gap_not_skipped(database_url: str) -> None:
    async with _running(database_url, 2) as fanout:
        with fanout.subscribe() as slow, fanout.subscribe() as quick:
            await fanout.wait_connected()
            await _notify(database_url, "1", "2")
            assert [await _get(quick), await _get(quick)] == [1, 2]
            await _notify(database_url, "3", "4")  # slow's queue was full at 3
            assert [await _get(quick), await _get(quick)] == [3, 4]
            assert [await _get(slow), await _get(slow)] == [2, Gap.BEHIND]  # room made for the gap
            assert slow.empty()  # nothing after the gap: the subscriber is out
            error = watch_gap(Gap.BEHIND, "2 changes", "re-list")
            assert error.code == grpc.StatusCode.ABORTED
            assert error.reason == reason_name(errors_pb2.ERROR_REASON_WATCH_INTERRUPTED)
            assert error.message == "the stream fell more than 2 changes behind; watch again and re-list"


async def test_a_lost_listen_connection_ends_every_subscriber_with_a_gap_then_serves_new_ones(
    database_url: str,
) -> None:
    # PostgreSQL does not keep what it announced while nobody listened: a subscriber that went on
    # waiting after the loss would silently miss it.
    async with _running(database_url, 10) as fanout:
        with fanout.subscribe() as before:
            await fanout.wait_connected()
            await _notify(database_url, "1")
            await _terminate_listener(database_url)
            assert [await _get(before), await _get(before)] == [1, Gap.LOST]
            error = watch_gap(Gap.LOST, "10 changes", "re-list")
            assert error.code == grpc.StatusCode.ABORTED
            assert error.reason == reason_name(errors_pb2.ERROR_REASON_WATCH_INTERRUPTED)
            assert "lost its database notifications; watch again and re-list" in error.message
        with fanout.subscribe() as after:
            async with asyncio.timeout(10):
                await fanout.wait_connected()  # reconnected
            await _notify(database_url, "2")
            assert await _get(after) == 2
