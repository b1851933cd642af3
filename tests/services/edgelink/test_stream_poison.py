"""EdgeLink against input that used to stall an edge or answer INTERNAL: every batch ends acked or
rejected with a reason and the batches after it flow; bad Hellos and undecodable bytes are refused
with INVALID_ARGUMENT; a newer stream of an edge closes the older one; the end of a stream is
recorded even when the handler is cancelled. The limits are in docs/telemetry-store.md."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import asyncpg
import grpc
import pytest
from emma.command.v1 import command_pb2, command_pb2_grpc
from emma.common.v1 import types_pb2
from emma.edge.v1 import edge_link_pb2
from google.protobuf import timestamp_pb2
from grpc_status import rpc_status

from services.errors import error_info_of
from tests.support.cloud import Host, new_edge
from tests.support.edge_client import EdgeStream, batch, battery_inventory, hello
from tests.support.identity import authed_channel

STORED = edge_link_pb2.TELEMETRY_ACK_RESULT_STORED
DUPLICATE = edge_link_pb2.TELEMETRY_ACK_RESULT_DUPLICATE
REJECTED = edge_link_pb2.TELEMETRY_ACK_RESULT_REJECTED
CONNECT = "/emma.edge.v1.EdgeLinkService/Connect"


async def _ended_with(stream: EdgeStream) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        while True:
            await stream.recv()
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None, caught.value
    info = error_info_of(status)
    assert info is not None
    return caught.value.code(), info.reason, dict(info.metadata)


def _with_event(seq: int, now: float, event: edge_link_pb2.EdgeEvent) -> edge_link_pb2.ConnectRequest:
    request = batch(seq, now, [(0, 0, 1.0)])
    request.telemetry_batch.events.append(event)
    return request


def _far_timestamp(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


POISON = {
    # A newer edge's event kind: stored under its number, the batch is STORED.
    "unknown-event-kind": (
        lambda seq, now: _with_event(seq, now, edge_link_pb2.EdgeEvent(kind=77, message="from the future")),  # type: ignore[arg-type]
        STORED,
        "",
    ),
    "nul-in-event-device-id": (
        lambda seq, now: _with_event(
            seq, now, edge_link_pb2.EdgeEvent(kind=edge_link_pb2.EDGE_EVENT_KIND_DAEMON_STARTED, device_id="bat\x00")
        ),
        REJECTED,
        "FIELD_INVALID",
    ),
    "nul-in-event-message": (
        lambda seq, now: _with_event(
            seq, now, edge_link_pb2.EdgeEvent(kind=edge_link_pb2.EDGE_EVENT_KIND_DAEMON_STARTED, message="a\x00b")
        ),
        REJECTED,
        "FIELD_INVALID",
    ),
    "event-time-beyond-postgres": (
        lambda seq, now: _with_event(
            seq,
            now,
            edge_link_pb2.EdgeEvent(
                kind=edge_link_pb2.EDGE_EVENT_KIND_DAEMON_STARTED, event_time=_far_timestamp(2**62)
            ),
        ),
        REJECTED,
        "FIELD_INVALID",
    ),
    "batch-seq-2^63": (lambda seq, now: batch(2**63, now, [(0, 0, 1.0)]), REJECTED, "BATCH_SEQ_INVALID"),
    "batch-seq-2^64-1": (lambda seq, now: batch(2**64 - 1, now, [(0, 0, 1.0)]), REJECTED, "BATCH_SEQ_INVALID"),
    "base-time-overflows-int64": (
        lambda seq, now: edge_link_pb2.ConnectRequest(
            telemetry_batch=edge_link_pb2.TelemetryBatch(
                batch_seq=seq,
                base_time=_far_timestamp(2**62),
                channel_indexes=[0],
                time_offsets_ms=[0],
                values=[1.0],
            )
        ),
        REJECTED,
        "BATCH_TIME_OUT_OF_RANGE",
    ),
    "base-time-overflows-without-points": (
        lambda seq, now: edge_link_pb2.ConnectRequest(
            telemetry_batch=edge_link_pb2.TelemetryBatch(batch_seq=seq, base_time=_far_timestamp(-(2**62)))
        ),
        STORED,
        "",
    ),
}


@pytest.mark.parametrize("case", sorted(POISON))
async def test_poison_batches_end_acked_or_rejected_and_later_batches_flow(
    host: Host, db: asyncpg.Connection, case: str
) -> None:
    make, result, reason = POISON[case]
    edge, pk, key = await new_edge(db, f"poison-{case.replace('^', '-').lower()}")
    now = time.time()
    async with host(["edge"]) as (server, _):
        for attempt in range(2):  # the same batch again after a reconnect: the same answer
            stream = EdgeStream(server.port)
            await stream.send(hello(str(edge), key))
            await stream.recv_kind("welcome")
            poison = make(1, now)  # type: ignore[no-untyped-call]
            await stream.send(poison)
            ack = await stream.recv_ack()
            expected = DUPLICATE if result == STORED and attempt else result
            assert (ack.batch_seq, ack.result, ack.reason) == (poison.telemetry_batch.batch_seq, expected, reason), ack
            if result == REJECTED:
                assert ack.message
            await stream.send(batch(10 + attempt, now, [(0, 0, 42.0)]))
            ack = await stream.recv_ack()
            assert (ack.batch_seq, ack.result) == (10 + attempt, STORED)
            await stream.close()
    if case == "unknown-event-kind":
        kinds = {r["kind"] for r in await db.fetch("SELECT kind FROM app.edge_events WHERE edge_pk = $1", pk)}
        assert "77" in kinds


async def test_a_batch_before_any_channel_table_is_rejected(host: Host, db: asyncpg.Connection) -> None:
    edge, _, key = await new_edge(db, "no-channel-table")
    async with host(["edge"]) as (server, _):
        stream = EdgeStream(server.port)
        await stream.send(hello(str(edge), key, channels=[]))
        await stream.recv_kind("welcome")
        await stream.send(batch(1, time.time(), [(0, 0, 1.0)]))
        ack = await stream.recv_ack()
        assert (ack.result, ack.reason) == (REJECTED, "BATCH_UNKNOWN_CHANNEL")
        await stream.close()


async def test_a_batch_the_database_refuses_is_rejected_and_the_next_ones_flow(
    host: Host, db: asyncpg.Connection
) -> None:
    edge, pk, key = await new_edge(db, "unstorable")
    now = time.time()
    async with host(["edge"]) as (server, _):
        stream = EdgeStream(server.port)
        await stream.send(hello(str(edge), key))
        await stream.recv_kind("welcome")
        # The session's series vanish under it (an erasure racing the stream): the batch passes
        # every check and still cannot be stored.
        await db.execute("DELETE FROM telemetry.series WHERE edge_pk = $1", pk)
        await stream.send(batch(1, now, [(0, 0, 1.0)]))
        ack = await stream.recv_ack()
        assert (ack.batch_seq, ack.result, ack.reason) == (1, REJECTED, "UNSPECIFIED")
        assert ack.message
        # The edge declares its channels again; its next batches are stored.
        table = hello(str(edge), key).hello.channel_table
        await stream.send(
            edge_link_pb2.ConnectRequest(channel_table_append=edge_link_pb2.ChannelTableAppend(channels=table))
        )
        for seq in (2, 3):
            await stream.send(batch(seq, now, [(0, 0, 2.0)]))
            ack = await stream.recv_ack()
            assert (ack.batch_seq, ack.result) == (seq, STORED)
        await stream.close()


async def test_event_messages_are_truncated_to_the_limit(host: Host, db: asyncpg.Connection) -> None:
    from services.edgelink.batches import MAX_EVENT_MESSAGE_CHARS

    edge, pk, key = await new_edge(db, "long-event")
    now = time.time()
    async with host(["edge"]) as (server, _):
        stream = EdgeStream(server.port)
        await stream.send(hello(str(edge), key))
        await stream.recv_kind("welcome")
        long_message = "x" * 200_000
        event = edge_link_pb2.EdgeEvent(kind=edge_link_pb2.EDGE_EVENT_KIND_CYCLE_OVERRUN, message=long_message)
        await stream.send(_with_event(1, now, event))
        ack = await stream.recv_ack()
        assert ack.result == STORED
        await stream.close()
    row = await db.fetchrow(
        "SELECT message, details FROM app.edge_events WHERE edge_pk = $1 AND kind = 'CYCLE_OVERRUN'", pk
    )
    assert len(row["message"]) == MAX_EVENT_MESSAGE_CHARS
    assert row["message"].startswith("x" * 100)
    assert '"message_chars": 200000' in row["details"]


@pytest.mark.parametrize(
    ("field", "mutate"),
    [
        ("hello.agent_version", lambda h: setattr(h, "agent_version", "1.0\x00")),
        ("hello.devices[0].device_id", lambda h: setattr(h.devices[0], "device_id", "bat\x00tery")),
        ("hello.devices[0].model", lambda h: setattr(h.devices[0], "model", "\x00")),
        ("hello.devices[0].channels[1].name", lambda h: setattr(h.devices[0].channels[1], "name", "Max\x00")),
        ("hello.channel_table[2].channel", lambda h: setattr(h.channel_table[2], "channel", "meter/Grid\x00")),
        ("hello.channel_table[0].unit", lambda h: setattr(h.channel_table[0], "unit", "%\x00")),
        ("hello.channel_table[1].index", lambda h: setattr(h.channel_table[1], "index", 2**32 - 1)),
        (
            "hello.devices[0].kind",
            lambda h: setattr(h.devices[0], "kind", types_pb2.DEVICE_KIND_BATTERY),  # valid: a control case
        ),
    ],
    ids=["agent", "device-id", "model", "channel-spec", "channel", "unit", "huge-index", "control"],
)
async def test_hello_with_nul_characters_is_refused_naming_the_field(
    host: Host, db: asyncpg.Connection, field: str, mutate: object
) -> None:
    edge, pk, key = await new_edge(db, f"hello-{field.replace('.', '-').replace('[', '').replace(']', '').lower()}")
    async with host(["edge"]) as (server, _):
        stream = EdgeStream(server.port)
        request = hello(str(edge), key, devices=[battery_inventory()])
        mutate(request.hello)  # type: ignore[operator]
        await stream.send(request)
        if field.endswith(".kind"):
            assert (await stream.recv()).WhichOneof("message") == "welcome"
        else:
            code, reason, metadata = await _ended_with(stream)
            assert (code, reason, metadata.get("field")) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID", field)
        await stream.close()
    if not field.endswith(".kind"):
        assert await db.fetchval("SELECT count(*) FROM app.edge_inventory WHERE edge_pk = $1", pk) == 0


def _raw_stream(port: int) -> tuple[grpc.aio.Channel, grpc.aio.StreamStreamMultiCallable]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    call = channel.stream_stream(
        CONNECT,
        request_serializer=lambda raw: raw,
        response_deserializer=edge_link_pb2.ConnectResponse.FromString,
    )
    return channel, call


# Field 1 (hello), length 3: field 3 (agent_version, a string) of length 1 holding a byte that is not UTF-8.
NOT_UTF8 = b"\x0a\x03\x1a\x01\xff"
TRUNCATED = b"\x0a\x10\x1a"


@pytest.mark.parametrize("after_welcome", [False, True], ids=["first-message", "after-welcome"])
async def test_undecodable_bytes_answer_invalid_argument_with_one_warning(
    host: Host, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture, after_welcome: bool
) -> None:
    edge, _, key = await new_edge(db, f"undecodable-{after_welcome}".lower())
    caplog.set_level(logging.INFO)
    async with host(["edge"]) as (server, _):
        channel, connect = _raw_stream(server.port)
        try:
            for garbage in (NOT_UTF8, TRUNCATED, NOT_UTF8, TRUNCATED, NOT_UTF8):
                first = hello(str(edge), key).SerializeToString()
                messages = [first, garbage] if after_welcome else [garbage]

                async def requests(items: list[bytes] = messages) -> object:
                    for item in items:
                        yield item
                    await asyncio.sleep(30)  # keep our side open: the server must end the stream

                call = connect(requests())
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    async for _ in call:
                        pass
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
                status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
                assert status is not None
                info = error_info_of(status)
                assert info is not None and info.reason == "FIELD_INVALID"
        finally:
            await channel.close()
    records = [r for r in caplog.records if r.name.startswith("emma")]
    assert not [r for r in records if r.levelno >= logging.ERROR], [r.getMessage() for r in records]
    undecodable = [r for r in records if "undecodable" in r.getMessage()]
    # Five bad streams in a row: the first is logged, the rest fall in the rate limit's window.
    assert len(undecodable) == 1, [r.getMessage() for r in undecodable]
    assert undecodable[0].levelno == logging.WARNING


async def test_a_newer_stream_of_the_same_edge_closes_the_older_one(host: Host, db: asyncpg.Connection) -> None:
    edge, pk, key = await new_edge(db, "replaced")
    now = time.time()
    # Heartbeats far apart: the older stream must end because the newer one opened, not because a
    # heartbeat of it found the session taken over.
    async with host(["edge"], heartbeat_interval_s=600.0) as (server, _):
        older = EdgeStream(server.port)
        await older.send(hello(str(edge), key))
        await older.recv_kind("welcome")
        newer = EdgeStream(server.port)
        await newer.send(hello(str(edge), key))
        await newer.recv_kind("welcome")
        code, reason, _ = await _ended_with(older)
        assert (code, reason) == (grpc.StatusCode.ABORTED, "SESSION_REPLACED")
        await newer.send(batch(1, now, [(0, 0, 1.0)]))
        assert (await newer.recv_ack()).result == STORED
        session_id = await db.fetchval("SELECT session_id FROM app.edge_sessions WHERE edge_pk = $1", pk)
        assert await db.fetchval("SELECT online FROM app.edge_sessions WHERE edge_pk = $1", pk)
        await older.close()
        await newer.close()
    assert session_id is not None


async def test_long_command_names_in_acks_are_logged_truncated(
    host: Host, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    edge, _, key = await new_edge(db, "long-ack")
    caplog.set_level(logging.INFO)
    async with host(["edge"]) as (server, _):
        stream = EdgeStream(server.port)
        await stream.send(hello(str(edge), key))
        await stream.recv_kind("welcome")
        name = f"{edge}/commands/" + "c" * 100_000
        ack = edge_link_pb2.CommandAck(
            command=name, status=edge_link_pb2.COMMAND_ACK_STATUS_EXECUTED, message="m\x00" * 50_000
        )
        await stream.send(edge_link_pb2.ConnectRequest(command_ack=ack))
        await stream.send(edge_link_pb2.ConnectRequest(heartbeat=edge_link_pb2.Heartbeat()))
        assert (await stream.recv_kind("heartbeat_ack")).WhichOneof("message") == "heartbeat_ack"
        await stream.close()
    longest = max(len(r.getMessage()) + sum(len(str(v)) for v in vars(r).values()) for r in caplog.records)
    # The name and the message were 100,000 characters each; what is logged of them is a few hundred.
    assert longest < 5_000
    assert any("command ack" in r.getMessage() for r in caplog.records)


def _connect_handlers() -> list[asyncio.Task[object]]:
    """The server-side tasks of the open Connect calls (grpc.aio names each after its method)."""
    return [t for t in asyncio.all_tasks() if t.get_name() == f"HandleExceptions[{CONNECT}]" and not t.done()]


async def _wait_for_lock_waiter(db: asyncpg.Connection) -> None:
    for _ in range(200):
        if await db.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the closing UPDATE never waited for the row lock")


async def test_the_end_of_a_stream_is_recorded_when_its_handler_is_cancelled_twice(
    host: Host, db: asyncpg.Connection, migrated_url: str
) -> None:
    edge, pk, key = await new_edge(db, "shielded-close")
    blocker = await asyncpg.connect(migrated_url)
    try:
        async with host(["edge"], heartbeat_interval_s=600.0) as (server, _):
            stream = EdgeStream(server.port)
            await stream.send(hello(str(edge), key))
            await stream.recv_kind("welcome")
            [handler] = _connect_handlers()
            # The session row is locked, so the handler's closing UPDATE waits; a second cancellation
            # (a stopping server cancels what the first left running) arrives in the middle of it.
            async with blocker.transaction():
                await blocker.execute("SELECT 1 FROM app.edge_sessions WHERE edge_pk = $1 FOR UPDATE", pk)
                handler.cancel()
                await _wait_for_lock_waiter(db)
                handler.cancel()
                await asyncio.sleep(0)
            for _ in range(200):  # the lock is gone: the write finishes (or was lost)
                if await db.fetchval("SELECT NOT online FROM app.edge_sessions WHERE edge_pk = $1", pk):
                    break
                await asyncio.sleep(0.05)
            await stream.close()
    finally:
        await blocker.close()
    row = await db.fetchrow("SELECT online, disconnected_time FROM app.edge_sessions WHERE edge_pk = $1", pk)
    assert not row["online"]
    assert row["disconnected_time"] is not None
    kinds = [r["kind"] for r in await db.fetch("SELECT kind FROM app.edge_events WHERE edge_pk = $1 ORDER BY id", pk)]
    assert kinds[-1] == "DISCONNECTED"


async def test_the_end_of_a_stream_is_recorded_when_the_server_stops(
    host: Host, db: asyncpg.Connection, migrated_url: str
) -> None:
    edge, pk, key = await new_edge(db, "stopped-server")
    blocker = await asyncpg.connect(migrated_url)
    try:
        async with host(["edge"], heartbeat_interval_s=600.0) as (server, _):
            stream = EdgeStream(server.port)
            await stream.send(hello(str(edge), key))
            await stream.recv_kind("welcome")
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute("SELECT 1 FROM app.edge_sessions WHERE edge_pk = $1 FOR UPDATE", pk)

            async def release_when_closing() -> None:
                await _wait_for_lock_waiter(db)
                await tx.commit()

            releaser = asyncio.create_task(release_when_closing())
            # Leaving the block stops the server with the stream open (the edge never hangs up).
        await releaser
        await stream.close()
    finally:
        await blocker.close()
    row = await db.fetchrow("SELECT online, disconnected_time FROM app.edge_sessions WHERE edge_pk = $1", pk)
    assert not row["online"]
    kinds = [r["kind"] for r in await db.fetch("SELECT kind FROM app.edge_events WHERE edge_pk = $1 ORDER BY id", pk)]
    assert kinds[-1] == "DISCONNECTED"


async def test_a_command_ack_with_nul_characters_and_long_text_is_stored_cleaned(
    host: Host, db: asyncpg.Connection, token: str
) -> None:
    edge, _, key = await new_edge(db, "ack-text")
    async with host(["edge", "command"]) as (server, _), authed_channel(server.port, token) as channel:
        stub = command_pb2_grpc.CommandServiceStub(channel)
        stream = EdgeStream(server.port)
        await stream.send(hello(str(edge), key, devices=[battery_inventory()]))
        await stream.recv_kind("welcome")
        created = await stub.CreateCommand(
            command_pb2.CreateCommandRequest(
                parent=str(edge),
                request_id=str(uuid.uuid4()),
                command=command_pb2.Command(channel="battery_1/SetMode", value=1.0),
            )
        )
        delivered = (await stream.recv_kind("command")).command
        assert delivered.name == created.name
        for status, reason, message in (
            (edge_link_pb2.COMMAND_ACK_STATUS_RECEIVED, "", ""),
            (edge_link_pb2.COMMAND_ACK_STATUS_REJECTED, "NO\x00PE" * 100, "m\x00" * 5_000),
        ):
            ack = edge_link_pb2.CommandAck(command=delivered.name, status=status, reason=reason, message=message)
            await stream.send(edge_link_pb2.ConnectRequest(command_ack=ack))
        for _ in range(200):
            command = await stub.GetCommand(command_pb2.GetCommandRequest(name=created.name))
            if command.state == command_pb2.COMMAND_STATE_REJECTED_BY_EDGE:
                break
            await asyncio.sleep(0.05)
        assert command.state == command_pb2.COMMAND_STATE_REJECTED_BY_EDGE
        assert command.state_reason == ("NO\ufffdPE" * 100)[:100]
        # The stream lived through it.
        await stream.send(edge_link_pb2.ConnectRequest(heartbeat=edge_link_pb2.Heartbeat()))
        assert (await stream.recv_kind("heartbeat_ack")).HasField("heartbeat_ack")
        await stream.close()
    stored = await db.fetchval(
        "SELECT message FROM app.command_events WHERE command_id = $1::uuid AND to_state = 'REJECTED_BY_EDGE'",
        created.name.rsplit("/", 1)[1],
    )
    assert stored == ("m\ufffd" * 5_000)[:1_000]
