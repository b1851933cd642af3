"""After its Welcome a stream is attached to the command and schedule relays (commands in flight, the
queue, the plan in force) beside its acks, not before them: a stream's first acks do not wait for those
statements (a fleet's Hellos keep the shared pool busy), and the commands in flight still come (real
EdgeLink and CommandService over real PostgreSQL, a protocol-level edge)."""

from __future__ import annotations

import time

import asyncpg
from emma.command.v1 import command_pb2_grpc

from tests.services.command.test_commands import create, online_edge
from tests.support.cloud import Host, new_edge
from tests.support.edge_client import CHANNELS, EdgeStream, batch, battery_inventory, hello
from tests.support.identity import authed_channel

SETPOINT = "battery_1/SetActivePower"


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
        blocker = await asyncpg.connect(migrated_url)
        try:
            locked = blocker.transaction()
            await locked.start()
            await blocker.execute("LOCK TABLE app.commands IN ACCESS EXCLUSIVE MODE")
            again = EdgeStream(server.port)
            await again.send(hello(str(edge), key, CHANNELS, devices=[battery_inventory()]))
            await again.recv_kind("welcome")
            await again.send(batch(2, time.time(), [(0, 0, 1.0)]))
            assert (await again.recv_ack()).batch_seq == 2  # while the attach still waits
            await locked.rollback()
        finally:
            await blocker.close()
        # Then the attach goes on: the command in flight is sent again.
        assert (await again.recv_kind("command")).command.name == name
        await again.close()
