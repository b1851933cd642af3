"""Command dispatch against real PostgreSQL and real EdgeLink/Command servers, with a protocol-level edge.

The real edge daemon's side (dedup, applying to a device) is covered in tests/edge_daemon; here the edge is
a raw stream so every state and every rejection reason can be driven exactly.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid

import asyncpg
import grpc
import pytest
from emma.command.v1 import command_pb2, command_pb2_grpc
from emma.edge.v1 import edge_link_pb2
from google.protobuf import duration_pb2, timestamp_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.command import states, transitions
from services.errors import error_info_of
from services.names import EdgeName
from tests.support.cloud import Host, new_edge
from tests.support.edge_client import EdgeStream, batch, battery_inventory, hello
from tests.support.identity import authed_channel

# Channel table of the test edge: the battery's dynamic limits come first.
CHANNELS = [("battery_1/MaxDischargePower", "W"), ("battery_1/MaxChargePower", "W"), ("battery_1/Soc", "%")]
S = command_pb2


async def online_edge(port: int, edge: EdgeName, key: str, limits_age_s: float = 0.0) -> EdgeStream:
    """An edge that said Hello with a battery and reported its dynamic limits (4 kW each way)."""
    stream = EdgeStream(port)
    await stream.send(hello(str(edge), key, CHANNELS, devices=[battery_inventory()]))
    await stream.recv_kind("welcome")
    await stream.send(batch(1, time.time() - limits_age_s, [(0, 0, 4000.0), (1, 0, 4000.0), (2, 0, 50.0)]))
    await stream.recv_ack()
    return stream


def create(
    edge: EdgeName, channel: str, value: float, request_id: str | None = None, **command: object
) -> command_pb2.CreateCommandRequest:
    return S.CreateCommandRequest(
        parent=str(edge),
        request_id=request_id or str(uuid.uuid4()),
        command=S.Command(channel=channel, value=value, **command),  # type: ignore[arg-type]
    )


async def ack(stream: EdgeStream, name: str, status: int, applied: float = 0.0, reason: str = "") -> None:
    await stream.send(
        edge_link_pb2.ConnectRequest(
            command_ack=edge_link_pb2.CommandAck(command=name, status=status, applied_value=applied, reason=reason)
        )
    )  # type: ignore[arg-type]


async def wait_state(
    stub: command_pb2_grpc.CommandServiceStub, name: str, state: int, timeout: float = 15
) -> command_pb2.Command:
    deadline = time.monotonic() + timeout
    while True:
        command = await stub.GetCommand(S.GetCommandRequest(name=name))
        if command.state == state or time.monotonic() > deadline:
            assert S.CommandState.Name(command.state) == S.CommandState.Name(state), command
            return command
        await asyncio.sleep(0.05)


def reason_of(exc: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    assert status is not None
    info = error_info_of(status)
    assert info is not None
    return info.reason


async def test_a_command_travels_queued_delivered_received_executed(
    host: Host, db: asyncpg.Connection, token: str
) -> None:
    edge, _, key = await new_edge(db, "cmd-happy")
    async with host(["edge", "command"]) as (server, _), authed_channel(server.port, token) as ch:
        stub = command_pb2_grpc.CommandServiceStub(ch)
        stream = await online_edge(server.port, edge, key)
        created = await stub.CreateCommand(create(edge, "battery_1/SetActivePower", -3000.0))
        assert created.name.startswith(f"{edge}/commands/")
        watch = stub.WatchCommand(S.WatchCommandRequest(name=created.name))
        delivered = (await stream.recv_kind("command")).command
        assert (delivered.name, delivered.channel, delivered.value) == (
            created.name,
            "battery_1/SetActivePower",
            -3000.0,
        )
        await ack(stream, delivered.name, edge_link_pb2.COMMAND_ACK_STATUS_RECEIVED)
        await ack(stream, delivered.name, edge_link_pb2.COMMAND_ACK_STATUS_EXECUTED, applied=-3000.0)
        seen = [S.CommandState.Name(m.command.state) async for m in watch]
        assert seen[-1] == "COMMAND_STATE_EXECUTED"
        assert seen == sorted(seen, key=lambda s: states.ORDER[s.removeprefix("COMMAND_STATE_")])
        final = await stub.GetCommand(S.GetCommandRequest(name=created.name))
        assert final.applied_value == -3000.0
        assert [S.CommandState.Name(t.to_state).removeprefix("COMMAND_STATE_") for t in final.transitions] == [
            "QUEUED",
            "DELIVERED",
            "RECEIVED",
            "EXECUTED",
        ]
        await stream.close()


async def test_every_rejection_reason(host: Host, db: asyncpg.Connection, token: str) -> None:
    edge, pk, key = await new_edge(db, "cmd-reject")
    stale_edge, _, stale_key = await new_edge(db, "cmd-stale")
    async with host(["edge", "command"]) as (server, _), authed_channel(server.port, token) as ch:
        stub = command_pb2_grpc.CommandServiceStub(ch)
        stream = await online_edge(server.port, edge, key)
        stale = await online_edge(server.port, stale_edge, stale_key, limits_age_s=45)
        past = timestamp_pb2.Timestamp(seconds=int(time.time()) - 120)
        cases = [
            (create(edge, "battery_9/SetActivePower", 1.0), grpc.StatusCode.NOT_FOUND, "CHANNEL_NOT_FOUND"),
            (create(edge, "battery_1/Nope", 1.0), grpc.StatusCode.NOT_FOUND, "CHANNEL_NOT_FOUND"),
            (create(edge, "battery_1/Soc", 1.0), grpc.StatusCode.FAILED_PRECONDITION, "CHANNEL_NOT_WRITABLE"),
            (create(edge, "battery_1/SetActivePower", 9000.0), grpc.StatusCode.INVALID_ARGUMENT, "VALUE_OUT_OF_RANGE"),
            (create(edge, "battery_1/SetMode", 7.0), grpc.StatusCode.INVALID_ARGUMENT, "VALUE_NOT_IN_ENUM"),
            (
                create(edge, "battery_1/SetActivePower", 4500.0),
                grpc.StatusCode.FAILED_PRECONDITION,
                "VALUE_EXCEEDS_DYNAMIC_LIMIT",
            ),
            (
                create(stale_edge, "battery_1/SetActivePower", 100.0),
                grpc.StatusCode.FAILED_PRECONDITION,
                "TELEMETRY_STALE",
            ),
            (
                create(edge, "battery_1/SetActivePower", 100.0, issued_time=past),
                grpc.StatusCode.INVALID_ARGUMENT,
                "ISSUED_TIME_SKEW",
            ),
            (create(edge, "nonsense", 1.0), grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID"),
            (
                S.CreateCommandRequest(parent=str(edge), command=S.Command(channel="battery_1/SetActivePower")),
                grpc.StatusCode.INVALID_ARGUMENT,
                "FIELD_INVALID",
            ),
        ]
        for request, code, reason in cases:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CreateCommand(request)
            assert (caught.value.code(), reason_of(caught.value)) == (code, reason), request
        # Nothing of that was stored.
        assert await db.fetchval("SELECT count(*) FROM app.commands WHERE edge_pk = $1", pk) == 0

        # Rate limit: 10 per second per caller (all tests here call from 127.0.0.1: start a fresh second).
        await asyncio.sleep(1.1)
        results = await asyncio.gather(
            *(stub.CreateCommand(create(edge, "battery_1/SetActivePower", float(i))) for i in range(12)),
            return_exceptions=True,
        )
        limited = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert limited
        assert {reason_of(r) for r in limited} == {"RATE_LIMITED"}
        assert sum(isinstance(r, S.Command) for r in results) == 10

        # Queue cap: an edge with 10,000 queued commands takes no more.
        offline, offline_pk, _ = await new_edge(db, "cmd-full")
        await db.execute(
            "INSERT INTO app.edge_inventory (edge_pk, device_id, kind, channels) VALUES ($1, 'battery_1', 1, $2)",
            offline_pk,
            battery_inventory().SerializeToString(),
        )
        await db.execute(
            """INSERT INTO app.commands (id, edge_pk, channel, value, state, issued_time, expire_time, creator,
                   request_id, request_hash)
               SELECT gen_random_uuid(), $1, 'battery_1/SetMode', 0, 'QUEUED', now(), now() + interval '1 h',
                      'filler', 'fill-' || g, 'x' FROM generate_series(1, 10000) g""",
            offline_pk,
        )
        await asyncio.sleep(1.1)  # out of the previous second's rate window
        with pytest.raises(grpc.aio.AioRpcError) as full:
            await stub.CreateCommand(create(offline, "battery_1/SetMode", 1.0))
        assert (full.value.code(), reason_of(full.value)) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "EDGE_QUEUE_FULL")
        await stream.close()
        await stale.close()


async def test_a_repeated_request_id_returns_the_original_command(
    host: Host, db: asyncpg.Connection, token: str
) -> None:
    edge, pk, key = await new_edge(db, "cmd-idem")
    async with host(["edge", "command"]) as (server, _), authed_channel(server.port, token) as ch:
        stub = command_pb2_grpc.CommandServiceStub(ch)
        stream = await online_edge(server.port, edge, key)
        request = create(edge, "battery_1/SetActivePower", 1500.0, request_id="retry-me")
        first, second, third = await asyncio.gather(*(stub.CreateCommand(request) for _ in range(3)))
        assert first.name == second.name == third.name
        assert await db.fetchval("SELECT count(*) FROM app.commands WHERE edge_pk = $1", pk) == 1
        with pytest.raises(grpc.aio.AioRpcError) as reused:
            await stub.CreateCommand(create(edge, "battery_1/SetActivePower", 1600.0, request_id="retry-me"))
        assert reason_of(reused.value) == "REQUEST_ID_REUSED"
        await stream.close()


async def test_ttl_in_queue_fails_and_is_never_delivered(host: Host, db: asyncpg.Connection, token: str) -> None:
    edge, _, key = await new_edge(db, "cmd-ttl")
    async with host(["edge", "command"]) as (server, _), authed_channel(server.port, token) as ch:
        stub = command_pb2_grpc.CommandServiceStub(ch)
        stream = await online_edge(server.port, edge, key)
        await stream.close()  # the edge goes offline; its limits are fresh for 30 s
        short = await stub.CreateCommand(
            create(edge, "battery_1/SetActivePower", 500.0, ttl=duration_pb2.Duration(seconds=1))
        )
        long = await stub.CreateCommand(create(edge, "battery_1/SetActivePower", 600.0))
        failed = await wait_state(stub, short.name, S.COMMAND_STATE_FAILED)
        assert failed.state_reason == "TIMEOUT_IN_QUEUE"
        back = EdgeStream(server.port)
        await back.send(hello(str(edge), key, CHANNELS, devices=[battery_inventory()]))
        await back.recv_kind("welcome")
        delivered = (await back.recv_kind("command")).command
        assert delivered.name == long.name  # only the live one
        with pytest.raises(asyncio.TimeoutError):
            await back.recv_kind("command", timeout=1.5)
        await back.close()


async def test_no_final_ack_within_5_s_fails_with_edge_timeout_and_cancel_rules(
    host: Host, db: asyncpg.Connection, token: str
) -> None:
    edge, _, key = await new_edge(db, "cmd-timeout")
    async with host(["edge", "command"]) as (server, _), authed_channel(server.port, token) as ch:
        stub = command_pb2_grpc.CommandServiceStub(ch)
        stream = await online_edge(server.port, edge, key)
        created = await stub.CreateCommand(create(edge, "battery_1/SetActivePower", 700.0))
        await stream.recv_kind("command")
        await ack(stream, created.name, edge_link_pb2.COMMAND_ACK_STATUS_RECEIVED)
        with pytest.raises(grpc.aio.AioRpcError) as late_cancel:
            await stub.CancelCommand(S.CancelCommandRequest(name=created.name))
        assert reason_of(late_cancel.value) == "COMMAND_NOT_CANCELLABLE"
        failed = await wait_state(stub, created.name, S.COMMAND_STATE_FAILED, timeout=15)
        assert failed.state_reason == "EDGE_TIMEOUT"
        # A late EXECUTED changes nothing: FAILED is final.
        await ack(stream, created.name, edge_link_pb2.COMMAND_ACK_STATUS_EXECUTED, applied=700.0)
        await asyncio.sleep(0.5)
        assert (await stub.GetCommand(S.GetCommandRequest(name=created.name))).state == S.COMMAND_STATE_FAILED
        await stream.close()
        queued = await stub.CreateCommand(create(edge, "battery_1/SetActivePower", 800.0))
        cancelled = await stub.CancelCommand(S.CancelCommandRequest(name=queued.name))
        assert cancelled.state == S.COMMAND_STATE_CANCELLED
        assert (await stub.CancelCommand(S.CancelCommandRequest(name=queued.name))).state == S.COMMAND_STATE_CANCELLED


async def test_offline_edge_gets_its_queue_in_order_from_another_replica(
    host: Host, db: asyncpg.Connection, token: str
) -> None:
    edge, _, key = await new_edge(db, "cmd-replicas")
    async with (
        host(["edge", "command"]) as (a, _),
        host(["edge"]) as (b, _),
        authed_channel(a.port, token) as ch,
    ):
        stub = command_pb2_grpc.CommandServiceStub(ch)
        first = await online_edge(a.port, edge, key)
        await first.close()
        names = [
            (await stub.CreateCommand(create(edge, "battery_1/SetActivePower", float(100 * i)))).name
            for i in range(1, 6)
        ]
        listed = await stub.ListCommands(S.ListCommandsRequest(parent=str(edge), state=S.COMMAND_STATE_QUEUED))
        assert {c.name for c in listed.commands} == set(names)
        # The edge comes back on replica B; A took the commands, B delivers them in FIFO order.
        again = EdgeStream(b.port)
        await again.send(hello(str(edge), key, CHANNELS, devices=[battery_inventory()]))
        await again.recv_kind("welcome")
        delivered = [(await again.recv_kind("command")).command.name for _ in names]
        assert delivered == names
        # A new command while the edge is on B: A's NOTIFY reaches B at once.
        late = await stub.CreateCommand(create(edge, "battery_1/SetActivePower", 42.0))
        assert (await again.recv_kind("command", timeout=5)).command.name == late.name
        # The resend of an unacknowledged command after a reconnect (the edge deduplicates by name).
        await again.close()
        third = EdgeStream(b.port)
        await third.send(hello(str(edge), key, CHANNELS, devices=[battery_inventory()]))
        await third.recv_kind("welcome")
        redelivered = {(await third.recv_kind("command")).command.name for _ in range(len(names) + 1)}
        assert redelivered == {*names, late.name}
        await third.close()


async def test_command_service_restart_between_delivery_and_ack(host: Host, db: asyncpg.Connection, token: str) -> None:
    edge, _, key = await new_edge(db, "cmd-restart")
    async with host(["edge"]) as (link, _):
        stream = await online_edge(link.port, edge, key)
        async with host(["command"]) as (cmd, _), authed_channel(cmd.port, token) as ch:
            executed = await command_pb2_grpc.CommandServiceStub(ch).CreateCommand(
                create(edge, "battery_1/SetActivePower", 300.0)
            )
            silent = await command_pb2_grpc.CommandServiceStub(ch).CreateCommand(
                create(edge, "battery_1/SetActivePower", 200.0)
            )
            await stream.recv_kind("command")
            await stream.recv_kind("command")
        # The command service is down: the edge's acks still land (EdgeLink records them) ...
        await ack(stream, executed.name, edge_link_pb2.COMMAND_ACK_STATUS_EXECUTED, applied=300.0)
        await asyncio.sleep(6)  # ... and the silent one passes its 5 s deadline while nobody watches.
        async with host(["command"]) as (cmd, _), authed_channel(cmd.port, token) as ch:
            stub = command_pb2_grpc.CommandServiceStub(ch)
            assert (await wait_state(stub, executed.name, S.COMMAND_STATE_EXECUTED)).applied_value == 300.0
            assert (await wait_state(stub, silent.name, S.COMMAND_STATE_FAILED)).state_reason == "EDGE_TIMEOUT"
        await stream.close()


async def test_fleet_dispatch_creates_one_command_per_edge_and_reports_the_aggregate(
    host: Host, db: asyncpg.Connection, token: str
) -> None:
    edges = [await new_edge(db, f"fleet-{i}") for i in range(3)]
    async with host(["edge", "command"]) as (server, _), authed_channel(server.port, token) as ch:
        stub = command_pb2_grpc.CommandServiceStub(ch)
        streams = [await online_edge(server.port, e, k) for e, _, k in edges[:2]]
        lonely = EdgeStream(server.port)  # the third edge has no battery
        await lonely.send(hello(str(edges[2][0]), edges[2][2], CHANNELS))
        await lonely.recv_kind("welcome")
        request = S.CreateFleetDispatchRequest(
            parent="organizations/acme",
            request_id="vpp-1",
            fleet_dispatch=S.FleetDispatch(
                edges=S.EdgeList(edges=[str(e) for e, _, _ in edges]), action=S.FLEET_ACTION_CHARGE, power_kw=2.5
            ),
        )
        dispatch = await stub.CreateFleetDispatch(request)
        assert dispatch.status.total_count == 2
        assert list(dispatch.status.skipped_edges) == [str(edges[2][0])]
        assert "CHANNEL_NOT_FOUND" in dispatch.status.skipped_edges[str(edges[2][0])]
        for stream in streams:
            command = (await stream.recv_kind("command")).command
            assert (command.channel, command.value) == ("battery_1/SetActivePower", -2500.0)
            await ack(stream, command.name, edge_link_pb2.COMMAND_ACK_STATUS_EXECUTED, applied=-2500.0)
        deadline = time.monotonic() + 10
        while (
            status := (await stub.GetFleetDispatch(S.GetFleetDispatchRequest(name=dispatch.name))).status
        ).executed_count < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert (status.total_count, status.executed_count, status.pending_count) == (2, 2, 0)
        assert (await stub.CreateFleetDispatch(request)).name == dispatch.name  # idempotent
        listed = await stub.ListFleetDispatches(S.ListFleetDispatchesRequest(parent="organizations/acme"))
        assert dispatch.name in {d.name for d in listed.fleet_dispatches}
        with pytest.raises(grpc.aio.AioRpcError) as empty:
            await stub.CreateFleetDispatch(
                S.CreateFleetDispatchRequest(
                    parent="organizations/acme",
                    request_id="vpp-2",
                    fleet_dispatch=S.FleetDispatch(site="organizations/acme/sites/nowhere", action=S.FLEET_ACTION_HOLD),
                )
            )
        assert reason_of(empty.value) == "FLEET_TARGETS_EMPTY"
        for stream in [*streams, lonely]:
            await stream.close()


ATTEMPTS = st.lists(st.sampled_from(sorted(states.PREDECESSORS)), min_size=1, max_size=8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(ATTEMPTS, min_size=1, max_size=3))
async def test_state_machine_property_no_two_finals_and_never_backwards(
    db: asyncpg.Connection, migrated_url: str, batches: list[list[str]]
) -> None:
    """Random transition attempts, some concurrent, never break the state machine in the database."""
    _, pk, _ = await new_edge(db, "prop", time_zone="UTC")
    command_id = uuid.uuid4()
    await db.execute(
        """INSERT INTO app.commands (id, edge_pk, channel, value, state, issued_time, expire_time, creator,
               request_id, request_hash)
           VALUES ($1, $2, 'b/SetActivePower', 0, 'QUEUED', now(), now() + interval '1 h', 'p', $3, 'h')""",
        command_id,
        pk,
        str(command_id),
    )
    await db.execute(
        "INSERT INTO app.command_events (command_id, from_state, to_state) VALUES ($1, '', 'QUEUED')", command_id
    )
    pool = await asyncpg.create_pool(migrated_url, min_size=1, max_size=len(batches))
    assert pool is not None

    async def attempt(targets: list[str]) -> None:
        async with pool.acquire() as conn:
            for target in targets:
                await transitions.transition(conn, command_id, target)

    try:
        await asyncio.gather(*(attempt(b) for b in batches))
    finally:
        await pool.close()
    events = await db.fetch(
        "SELECT from_state, to_state FROM app.command_events WHERE command_id = $1 ORDER BY id", command_id
    )
    path = [e["to_state"] for e in events]
    assert sum(s in states.FINAL for s in path) <= 1
    assert all(states.ORDER[a] < states.ORDER[b] for a, b in itertools.pairwise(path))
    assert all(e["from_state"] == prev for e, prev in zip(events[1:], path, strict=False))
    assert await db.fetchval("SELECT state FROM app.commands WHERE id = $1", command_id) == path[-1]


async def test_a_fleet_dispatch_ttl_outside_one_second_to_a_day_is_refused_naming_the_field(
    host: Host, db: asyncpg.Connection, token: str
) -> None:
    """A dispatch's ttl obeys the same range as a command's; thousands of years used to overflow the expiry (500)."""
    edge, _, _ = await new_edge(db, "fleet-ttl")
    async with host(["command"]) as (server, _), authed_channel(server.port, token) as ch:
        stub = command_pb2_grpc.CommandServiceStub(ch)
        for seconds in (0, 86_401, 300_000_000_000):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.CreateFleetDispatch(
                    S.CreateFleetDispatchRequest(
                        parent="organizations/acme",
                        request_id=f"ttl-{seconds}",
                        fleet_dispatch=S.FleetDispatch(
                            edges=S.EdgeList(edges=[str(edge)]),
                            action=S.FLEET_ACTION_HOLD,
                            ttl=duration_pb2.Duration(seconds=seconds),
                        ),
                    )
                )
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert reason_of(refused.value) == "FIELD_INVALID"
            assert "fleet_dispatch.ttl" in (refused.value.details() or "")


async def test_an_address_with_a_trailing_newline_is_not_an_address(
    host: Host, db: asyncpg.Connection, token: str
) -> None:
    """`$` in a pattern also matches before a final newline; names end at the end of the string."""
    edge, _, _ = await new_edge(db, "cmd-newline")
    async with host(["command"]) as (server, _), authed_channel(server.port, token) as ch:
        stub = command_pb2_grpc.CommandServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateCommand(create(edge, "battery_1/SetActivePower\n", 100.0))
        assert reason_of(refused.value) == "FIELD_INVALID"
        with pytest.raises(grpc.aio.AioRpcError) as long_address:
            await stub.CreateCommand(create(edge, "x" * 100_000, 100.0))
        assert len(long_address.value.details() or "") < 300  # the refusal does not echo 100 KB back
