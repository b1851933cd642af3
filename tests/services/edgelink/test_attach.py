"""After its Welcome a stream is attached to the command and schedule relays (commands in flight, the
queue, the plan in force) beside its acks, not before them: a stream's first acks do not wait for those
statements (a fleet's Hellos keep the shared pool busy), and the commands in flight still come (real
EdgeLink and CommandService over real PostgreSQL, a protocol-level edge)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from emma.command.v1 import command_pb2_grpc

from tests.services.command.test_commands import create, online_edge
from tests.support.cloud import Host, new_edge
from tests.support.edge_client import CHANNELS, EdgeStream, batch, battery_inventory, hello
from tests.support.identity import authed_channel

SETPOINT = "battery_1/SetActivePower"


@contextlib.asynccontextmanager
async def _commands_locked(url: str) -> AsyncIterator[None]:
    """Nobody may read app.commands until the block ends (its own connection's transaction holds the lock)."""
    blocker = await asyncpg.connect(url)
    try:
        locked = blocker.transaction()
        await locked.start()
        await blocker.execute("LOCK TABLE app.commands IN ACCESS EXCLUSIVE MODE")
        yield
        await locked.rollback()
    finally:
        await blocker.close()


async def test_acks_flow_while_the_commands_in_flight_are_still_being_read(
    host: Host, db: asyncpg.Connection, migrated_url: str, token: str
) -> None:
    edge, _, key = await new_edge(db, "attach-beside-acks")
    async with host(["edge", "command"]) as (server, _), authed_channel(server.port, token) as ch:
        stub = command_pb2_grpc.CommandServiceStub(ch)
        first = await online_edge(server.port, edge, key)
        name = (await stub.CreateCommand(create(edge, SETPOINT, -100.0))).name
        assert (await first.recv_kind("command")).command.name == name  # delivered, never acked: in flight
        await first.close()

        # Nobody may read the commands until this transaction ends: the reconnected stream's attach
        # (its commands in flight) waits for it.
        async with _commands_locked(migrated_url):
            again = EdgeStream(server.port)
            await again.send(hello(str(edge), key, CHANNELS, devices=[battery_inventory()]))
            await again.recv_kind("welcome")
            await again.send(batch(2, time.time(), [(0, 0, 1.0)]))
            assert (await again.recv_ack()).batch_seq == 2  # while the attach still waits
        # Then the attach goes on: the command in flight is sent again.
        assert (await again.recv_kind("command")).command.name == name
        await again.close()


async def test_an_attach_that_fails_ends_the_stream_with_an_error_and_its_end_is_recorded(
    host: Host, db: asyncpg.Connection, migrated_url: str
) -> None:
    """The attach runs beside the acks, in a task of its own; when its statement fails (here its
    connection is cut while it waits for a lock) the stream ends with that error, as when the handler
    made the statement itself, instead of going on without its commands."""
    edge, pk, key = await new_edge(db, "attach-fails")
    async with host(["edge", "command"], heartbeat_interval_s=600.0) as (server, _):
        async with _commands_locked(migrated_url):
            stream = EdgeStream(server.port)
            await stream.send(hello(str(edge), key, CHANNELS, devices=[battery_inventory()]))
            await stream.recv_kind("welcome")
            waiter = None
            for _ in range(200):  # the attach's read of the commands in flight waits for the lock
                waiter = await db.fetchval(
                    """SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'
                       AND query LIKE '%state IN (''DELIVERED'', ''RECEIVED'') ORDER BY seq%'"""
                )
                if waiter is not None:
                    break
                await asyncio.sleep(0.05)
            assert waiter is not None
            await db.execute("SELECT pg_terminate_backend($1)", waiter)
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                while True:
                    await stream.recv()
            # A cut connection is the database being unreachable, not a bug: retry with backoff.
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value
            assert ended.value.details() == "the database cannot be reached; retry with backoff"
            await stream.close()
        for _ in range(200):
            if await db.fetchval("SELECT NOT online FROM app.edge_sessions WHERE edge_pk = $1", pk):
                break
            await asyncio.sleep(0.05)
        kinds = [
            r["kind"] for r in await db.fetch("SELECT kind FROM app.edge_events WHERE edge_pk = $1 ORDER BY id", pk)
        ]
        assert kinds[-1] == "DISCONNECTED"
