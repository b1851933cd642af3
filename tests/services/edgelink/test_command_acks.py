"""Command acks on an edge's stream: queued off the reader, applied several per database call, in the
order the edge sent them, and not lost when the stream ends right after them (real EdgeLink and
CommandService over real PostgreSQL, a protocol-level edge)."""

from __future__ import annotations

import asyncio
import time

import asyncpg
from emma.command.v1 import command_pb2, command_pb2_grpc
from emma.edge.v1 import edge_link_pb2

from services.command import states
from tests.services.command.test_commands import ack, create, online_edge
from tests.support.cloud import Host, new_edge
from tests.support.identity import authed_channel

SETPOINT = "battery_1/SetActivePower"


async def final_states(db: asyncpg.Connection, names: list[str], timeout: float = 15) -> list[str]:
    """The commands' states once none is in flight any more (or the timeout passed)."""
    ids = [n.rsplit("/", 1)[1] for n in names]
    deadline = time.monotonic() + timeout
    while True:
        rows = await db.fetch("SELECT id::text, state FROM app.commands WHERE id::text = ANY($1::text[])", ids)
        found = {r["id"]: r["state"] for r in rows}
        if all(found.get(i) in states.FINAL for i in ids) or time.monotonic() > deadline:
            return [found.get(i, "") for i in ids]
        await asyncio.sleep(0.05)


async def test_a_burst_of_acks_is_applied_in_the_order_the_edge_sent_it(
    host: Host, db: asyncpg.Connection, token: str
) -> None:
    edge, _, key = await new_edge(db, "acks-burst")
    async with host(["edge", "command"]) as (server, _), authed_channel(server.port, token) as ch:
        stub = command_pb2_grpc.CommandServiceStub(ch)
        stream = await online_edge(server.port, edge, key)
        names = [(await stub.CreateCommand(create(edge, SETPOINT, -100.0 - i))).name for i in range(6)]
        delivered = [(await stream.recv_kind("command")).command.name for _ in names]
        assert delivered == names  # FIFO
        for i, name in enumerate(names):
            await ack(stream, name, edge_link_pb2.COMMAND_ACK_STATUS_RECEIVED)
            if i % 2:
                await ack(stream, name, edge_link_pb2.COMMAND_ACK_STATUS_EXECUTED, applied=-100.0 - i)
            else:
                await ack(stream, name, edge_link_pb2.COMMAND_ACK_STATUS_REJECTED, reason="NOPE")
            await ack(stream, name, edge_link_pb2.COMMAND_ACK_STATUS_RECEIVED)  # late: refused, no event
        assert await final_states(db, names) == [
            states.REJECTED_BY_EDGE if i % 2 == 0 else states.EXECUTED for i in range(len(names))
        ]
        for i, name in enumerate(names):
            command = await stub.GetCommand(command_pb2.GetCommandRequest(name=name))
            assert [command_pb2.CommandState.Name(t.to_state) for t in command.transitions][2:] == [
                "COMMAND_STATE_RECEIVED",
                "COMMAND_STATE_EXECUTED" if i % 2 else "COMMAND_STATE_REJECTED_BY_EDGE",
            ]
            assert command.applied_value == (-100.0 - i if i % 2 else 0.0)
        await stream.close()


async def test_acks_sent_just_before_the_stream_ends_are_applied(
    host: Host, db: asyncpg.Connection, token: str
) -> None:
    edge, _, key = await new_edge(db, "acks-close")
    async with host(["edge", "command"]) as (server, _), authed_channel(server.port, token) as ch:
        stub = command_pb2_grpc.CommandServiceStub(ch)
        stream = await online_edge(server.port, edge, key)
        names = [(await stub.CreateCommand(create(edge, SETPOINT, -200.0 - i))).name for i in range(3)]
        for _ in names:
            await stream.recv_kind("command")
        for name in names:
            await ack(stream, name, edge_link_pb2.COMMAND_ACK_STATUS_RECEIVED)
            await ack(stream, name, edge_link_pb2.COMMAND_ACK_STATUS_EXECUTED, applied=-1.0)
        # Half-close right behind the acks: the server reads them, then the end of the stream.
        await stream.send(None)  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert await final_states(db, names) == [states.EXECUTED] * len(names)
        await stream.close()


async def test_a_received_ack_with_no_final_ack_behind_it_is_applied_on_its_own(
    host: Host, db: asyncpg.Connection, token: str
) -> None:
    # The ack loop waits a moment for a final ack to apply with a RECEIVED (an edge that executes on
    # arrival); an edge that executes at a later control cycle still has its RECEIVED stored meanwhile.
    edge, _, key = await new_edge(db, "acks-received")
    async with host(["edge", "command"]) as (server, _), authed_channel(server.port, token) as ch:
        stub = command_pb2_grpc.CommandServiceStub(ch)
        stream = await online_edge(server.port, edge, key)
        name = (await stub.CreateCommand(create(edge, SETPOINT, -300.0))).name
        await stream.recv_kind("command")
        await ack(stream, name, edge_link_pb2.COMMAND_ACK_STATUS_RECEIVED)
        command_id = name.rsplit("/", 1)[1]
        deadline = time.monotonic() + 15
        state = ""
        while state != states.RECEIVED and time.monotonic() < deadline:
            state = await db.fetchval("SELECT state FROM app.commands WHERE id::text = $1", command_id)
            await asyncio.sleep(0.05)
        assert state == states.RECEIVED
        await ack(stream, name, edge_link_pb2.COMMAND_ACK_STATUS_EXECUTED, applied=-300.0)
        assert await final_states(db, [name]) == [states.EXECUTED]
        command = await stub.GetCommand(command_pb2.GetCommandRequest(name=name))
        assert [command_pb2.CommandState.Name(t.to_state) for t in command.transitions][2:] == [
            "COMMAND_STATE_RECEIVED",
            "COMMAND_STATE_EXECUTED",
        ]
        await stream.close()
