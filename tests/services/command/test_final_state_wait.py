"""CreateCommand with final_state_wait: one call that answers with the command's outcome.

Real PostgreSQL, real EdgeLink and Command servers (one process, or two replicas over one database), and
a protocol-level edge whose acks the test sends, so every outcome of the wait can be driven exactly.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import grpc
import pytest
from emma.command.v1 import command_pb2, command_pb2_grpc
from emma.edge.v1 import edge_link_pb2
from google.protobuf import duration_pb2
from grpc_status import rpc_status

from services.command.validation import MAX_FINAL_STATE_WAIT
from services.errors import error_info_of
from services.names import EdgeName
from tests.services.command.test_commands import ack, create, online_edge, reason_of
from tests.support.cloud import Host, new_edge
from tests.support.edge_client import EdgeStream
from tests.support.identity import authed_channel

S = command_pb2
RECEIVED = edge_link_pb2.COMMAND_ACK_STATUS_RECEIVED
EXECUTED = edge_link_pb2.COMMAND_ACK_STATUS_EXECUTED
REJECTED = edge_link_pb2.COMMAND_ACK_STATUS_REJECTED


def waiting(
    edge: EdgeName, value: float, wait_s: float, request_id: str | None = None
) -> command_pb2.CreateCommandRequest:
    request = create(edge, "battery_1/SetActivePower", value, request_id)
    request.final_state_wait.FromNanoseconds(int(wait_s * 1e9))
    return request


def states_of(command: command_pb2.Command) -> list[str]:
    return [S.CommandState.Name(t.to_state).removeprefix("COMMAND_STATE_") for t in command.transitions]


async def answer(stream: EdgeStream, *statuses: int, applied: float = 0.0, reason: str = "") -> str:
    """Take the next command off the edge's stream and acknowledge it with `statuses`; its name."""
    name = (await stream.recv_kind("command")).command.name
    for status in statuses:
        await ack(stream, name, status, applied=applied, reason=reason)
    return name


async def test_the_call_answers_with_the_executed_command(host: Host, db: asyncpg.Connection, token: str) -> None:
    edge, _, key = await new_edge(db, "wait-exec")
    async with host(["edge", "command"]) as (server, _), authed_channel(server.port, token) as ch:
        stub = command_pb2_grpc.CommandServiceStub(ch)
        stream = await online_edge(server.port, edge, key)
        edge_side = asyncio.create_task(answer(stream, RECEIVED, EXECUTED, applied=-2500.0))
        command = await stub.CreateCommand(waiting(edge, -2500.0, 10))
        assert await edge_side == command.name
        assert command.state == S.COMMAND_STATE_EXECUTED and command.applied_value == -2500.0
        assert states_of(command) == ["QUEUED", "DELIVERED", "RECEIVED", "EXECUTED"]
        # The answer is what the database holds, transition for transition.
        stored = await stub.GetCommand(S.GetCommandRequest(name=command.name))
        assert stored.state == command.state and states_of(stored) == states_of(command)
        assert [t.transition_time for t in stored.transitions] == [t.transition_time for t in command.transitions]
        # A refusal by the edge is a final state too: answered with its reason, not as an error.
        edge_side = asyncio.create_task(answer(stream, RECEIVED, REJECTED, reason="device busy"))
        rejected = await stub.CreateCommand(waiting(edge, 1000.0, 10))
        await edge_side
        assert (rejected.state, rejected.state_reason) == (S.COMMAND_STATE_REJECTED_BY_EDGE, "device busy")
        await stream.close()


async def test_a_wait_that_elapses_answers_with_the_current_state(
    host: Host, db: asyncpg.Connection, token: str
) -> None:
    edge, _, key = await new_edge(db, "wait-elapses")
    async with host(["edge", "command"]) as (server, _), authed_channel(server.port, token) as ch:
        stub = command_pb2_grpc.CommandServiceStub(ch)
        stream = await online_edge(server.port, edge, key)
        edge_side = asyncio.create_task(answer(stream, RECEIVED))  # and never a final ack
        command = await stub.CreateCommand(waiting(edge, 1200.0, 1.0))
        assert await edge_side == command.name
        assert states_of(command) == ["QUEUED", "DELIVERED", "RECEIVED"]
        assert command.state == S.COMMAND_STATE_RECEIVED
        # An edge that is offline: the wait ends with the command still queued.
        await stream.close()
        queued = await stub.CreateCommand(waiting(edge, 1300.0, 0.5))
        assert states_of(queued) == ["QUEUED"]
        # A call's deadline shorter than the wait ends the wait before it: the caller gets the command.
        early = await stub.CreateCommand(waiting(edge, 1400.0, 20), timeout=1.5)
        assert early.state == S.COMMAND_STATE_QUEUED and early.name.startswith(f"{edge}/commands/")


@pytest.mark.parametrize(
    ("site", "wait_s"), [("wait-too-long", MAX_FINAL_STATE_WAIT.total_seconds() + 0.001), ("wait-negative", -1.0)]
)
async def test_a_wait_outside_zero_to_the_maximum_is_refused_and_nothing_is_stored(
    host: Host, db: asyncpg.Connection, token: str, site: str, wait_s: float
) -> None:
    edge, pk, key = await new_edge(db, site)
    async with host(["edge", "command"]) as (server, _), authed_channel(server.port, token) as ch:
        stub = command_pb2_grpc.CommandServiceStub(ch)
        stream = await online_edge(server.port, edge, key)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateCommand(waiting(edge, 1000.0, wait_s))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_status.from_call(refused.value)  # type: ignore[arg-type]
        assert status is not None
        info = error_info_of(status)
        assert info is not None and info.reason == "FIELD_INVALID"
        assert info.metadata["field"] == "final_state_wait"
        assert "30 s" in (refused.value.details() or "")
        assert await db.fetchval("SELECT count(*) FROM app.commands WHERE edge_pk = $1", pk) == 0
        # The maximum itself is allowed.
        request = create(edge, "battery_1/SetMode", 1.0)
        request.final_state_wait.CopyFrom(duration_pb2.Duration(seconds=int(MAX_FINAL_STATE_WAIT.total_seconds())))
        edge_side = asyncio.create_task(answer(stream, RECEIVED, EXECUTED, applied=1.0))
        assert (await stub.CreateCommand(request)).state == S.COMMAND_STATE_EXECUTED
        await edge_side
        await stream.close()


async def test_a_retried_request_waits_for_the_original_command(host: Host, db: asyncpg.Connection, token: str) -> None:
    edge, pk, key = await new_edge(db, "wait-retry")
    async with host(["edge", "command"]) as (server, _), authed_channel(server.port, token) as ch:
        stub = command_pb2_grpc.CommandServiceStub(ch)
        stream = await online_edge(server.port, edge, key)
        request_id = str(uuid.uuid4())
        edge_side = asyncio.create_task(answer(stream, RECEIVED))
        first = await stub.CreateCommand(waiting(edge, 900.0, 0.5, request_id))
        await edge_side
        assert first.state == S.COMMAND_STATE_RECEIVED
        # The retry (the caller gave up on the first answer, say) waits for the same command's outcome.
        retry = asyncio.ensure_future(stub.CreateCommand(waiting(edge, 900.0, 10, request_id)))
        await asyncio.sleep(0.3)  # time for the retry to arrive; it must not answer while the command is RECEIVED
        assert not retry.done()
        await ack(stream, first.name, EXECUTED, applied=900.0)
        retried = await retry
        assert retried.name == first.name
        assert (retried.state, retried.applied_value) == (S.COMMAND_STATE_EXECUTED, 900.0)
        assert states_of(retried) == ["QUEUED", "DELIVERED", "RECEIVED", "EXECUTED"]
        # A retry of a command already final answers with it at once; only one command was ever stored.
        again = await stub.CreateCommand(waiting(edge, 900.0, 10, request_id))
        assert (again.name, again.state) == (first.name, S.COMMAND_STATE_EXECUTED)
        assert await db.fetchval("SELECT count(*) FROM app.commands WHERE edge_pk = $1", pk) == 1
        # The same request_id with another value is still refused, wait or not.
        with pytest.raises(grpc.aio.AioRpcError) as reused:
            await stub.CreateCommand(waiting(edge, 901.0, 10, request_id))
        assert reason_of(reused.value) == "REQUEST_ID_REUSED"
        await stream.close()


async def test_the_wait_follows_a_command_delivered_through_another_replica(
    host: Host, db: asyncpg.Connection, token: str
) -> None:
    edge, _, key = await new_edge(db, "wait-replicas")
    async with (
        host(["command"]) as (commands, _),
        host(["edge"]) as (link, _),
        authed_channel(commands.port, token) as ch,
    ):
        stub = command_pb2_grpc.CommandServiceStub(ch)
        stream = await online_edge(link.port, edge, key)
        # The command service's process holds no stream: replica B delivers after A's NOTIFY, and its
        # acks reach A's waiting call through PostgreSQL's notifications alone.
        edge_side = asyncio.create_task(answer(stream, RECEIVED, EXECUTED, applied=700.0))
        command = await stub.CreateCommand(waiting(edge, 700.0, 10))
        assert await edge_side == command.name
        assert (command.state, command.applied_value) == (S.COMMAND_STATE_EXECUTED, 700.0)
        assert states_of(command) == ["QUEUED", "DELIVERED", "RECEIVED", "EXECUTED"]
        await stream.close()
