"""EdgeLink ingest against real PostgreSQL: authentication, exactly-once storage, bad batches,
sessions, back-pressure and a database restart."""

from __future__ import annotations

import asyncio
import math
import time

import asyncpg
import grpc
import pytest
from emma.edge.v1 import edge_link_pb2
from grpc_status import rpc_status

from services.errors import error_info_of
from services.identity import revoke_edge_key
from tests.support.cloud import Host, new_edge
from tests.support.edge_client import EdgeStream, batch, hello
from tests.support.pg import SessionPostgres

STORED = edge_link_pb2.TELEMETRY_ACK_RESULT_STORED
DUPLICATE = edge_link_pb2.TELEMETRY_ACK_RESULT_DUPLICATE
REJECTED = edge_link_pb2.TELEMETRY_ACK_RESULT_REJECTED


async def _sample_count(db: asyncpg.Connection, edge_pk: int) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM telemetry.samples s JOIN telemetry.series r ON r.id = s.series_id "
            "WHERE r.edge_pk = $1",
            edge_pk,
        )
    )


async def _ended_with(stream: EdgeStream) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        while True:
            await stream.recv()
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    info = error_info_of(status)
    assert info is not None
    return caught.value.code(), info.reason


async def test_bad_and_revoked_keys_are_refused_and_store_nothing(host: Host, db: asyncpg.Connection) -> None:
    edge, pk, key = await new_edge(db, "auth")
    async with host(["edge"]) as (server, _):
        for bad_key, reason in ((key[:-3] + "xyz", "EDGE_KEY_INVALID"), ("not-a-key", "EDGE_KEY_INVALID")):
            stream = EdgeStream(server.port)
            await stream.send(hello(str(edge), bad_key))
            await stream.send(batch(1, time.time(), [(0, 0, 50.0)]))
            assert await _ended_with(stream) == (grpc.StatusCode.UNAUTHENTICATED, reason)
            await stream.close()
        key_id = key.split("_")[1]
        assert await revoke_edge_key(db, key_id)
        stream = EdgeStream(server.port)
        await stream.send(hello(str(edge), key))
        assert await _ended_with(stream) == (grpc.StatusCode.UNAUTHENTICATED, "EDGE_KEY_REVOKED")
        await stream.close()
    assert await _sample_count(db, pk) == 0
    assert await db.fetchval("SELECT count(*) FROM telemetry.batch_ledger WHERE edge_pk = $1", pk) == 0
    assert await db.fetchval("SELECT count(*) FROM app.edge_sessions WHERE edge_pk = $1", pk) == 0


async def test_first_message_must_be_hello_and_edge_must_match_key(host: Host, db: asyncpg.Connection) -> None:
    _, _, key = await new_edge(db, "handshake")
    async with host(["edge"]) as (server, _):
        stream = EdgeStream(server.port)
        await stream.send(batch(1, time.time(), [(0, 0, 1.0)]))
        assert await _ended_with(stream) == (grpc.StatusCode.FAILED_PRECONDITION, "HELLO_REQUIRED")
        await stream.close()
        stream = EdgeStream(server.port)
        await stream.send(hello("organizations/acme/sites/other/edges/other", key))
        assert await _ended_with(stream) == (grpc.StatusCode.PERMISSION_DENIED, "EDGE_MISMATCH")
        await stream.close()


async def test_batches_are_stored_once_and_resends_are_acked_without_writing(
    host: Host, db: asyncpg.Connection
) -> None:
    edge, pk, key = await new_edge(db, "exactly-once")
    now = time.time()
    produced = 0
    async with host(["edge"]) as (server, _):
        stream = EdgeStream(server.port)
        await stream.send(hello(str(edge), key))
        welcome = (await stream.recv()).welcome
        assert welcome.last_stored_batch_seq == 0
        assert welcome.max_unacked_batches >= 1
        for seq in range(1, 21):
            points = [(i % 3, 100 * i, float(seq * 10 + i)) for i in range(6)]
            produced += len(points)
            await stream.send(batch(seq, now - 60 + seq, points))
        acks = [await stream.recv_ack() for _ in range(20)]
        assert [a.batch_seq for a in acks] == list(range(1, 21))
        assert {a.result for a in acks} == {STORED}
        # The ack of 18..20 was "lost": the edge resends them on the same stream.
        for seq in (18, 19, 20):
            await stream.send(batch(seq, now - 60 + seq, [(0, 0, 1.0)]))
        assert [(a.batch_seq, a.result) for a in [await stream.recv_ack() for _ in range(3)]] == [
            (18, DUPLICATE),
            (19, DUPLICATE),
            (20, DUPLICATE),
        ]
        await stream.close()
        # And after a reconnect the Welcome says where to resume; a resend is again a duplicate.
        stream = EdgeStream(server.port)
        await stream.send(hello(str(edge), key))
        assert (await stream.recv()).welcome.last_stored_batch_seq == 20
        await stream.send(batch(20, now, [(0, 0, 1.0)]))
        assert (await stream.recv_ack()).result == DUPLICATE
        await stream.close()
    assert await _sample_count(db, pk) == produced
    latest = await db.fetch(
        "SELECT r.channel, l.value FROM telemetry.latest l JOIN telemetry.series r ON r.id = l.series_id "
        "WHERE r.edge_pk = $1 ORDER BY 1",
        pk,
    )
    # Batch 20's points: i = 0..5 on channel i % 3; the latest per channel is the one with the largest offset.
    assert [(r["channel"], r["value"]) for r in latest] == [
        ("battery_1/ActivePower", 204.0),
        ("battery_1/Soc", 203.0),
        ("meter/GridPower", 205.0),
    ]


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (
            lambda now: batch(1, now, [(0, 0, 1.0)]).telemetry_batch.__class__(
                batch_seq=1, channel_indexes=[0, 1], time_offsets_ms=[0], values=[1.0, 2.0]
            ),
            "BATCH_LENGTH_MISMATCH",
        ),
        (lambda now: batch(1, now, [(7, 0, 1.0)]).telemetry_batch, "BATCH_UNKNOWN_CHANNEL"),
        (lambda now: batch(1, now, [(0, 0, math.nan)]).telemetry_batch, "BATCH_VALUE_NOT_FINITE"),
        (lambda now: batch(1, now, [(0, 0, math.inf)]).telemetry_batch, "BATCH_VALUE_NOT_FINITE"),
        (lambda now: batch(1, now + 3600, [(0, 0, 1.0)]).telemetry_batch, "BATCH_TIME_OUT_OF_RANGE"),
        (lambda now: batch(1, now - 40 * 86400, [(0, 0, 1.0)]).telemetry_batch, "BATCH_TIME_OUT_OF_RANGE"),
        (lambda now: batch(0, now, [(0, 0, 1.0)]).telemetry_batch, "BATCH_SEQ_INVALID"),
    ],
    ids=["length", "unknown-channel", "nan", "inf", "future", "past", "seq-zero"],
)
async def test_malformed_batches_are_rejected_with_a_reason_and_the_stream_survives(
    host: Host, db: asyncpg.Connection, make: object, reason: str
) -> None:
    edge, pk, key = await new_edge(db, f"bad-{reason.lower().replace('_', '-')}-{time.monotonic_ns() % 10**6}")
    now = time.time()
    async with host(["edge"]) as (server, _):
        stream = EdgeStream(server.port)
        await stream.send(hello(str(edge), key))
        await stream.recv()
        bad = make(now)  # type: ignore[operator]
        await stream.send(edge_link_pb2.ConnectRequest(telemetry_batch=bad))
        ack = await stream.recv_ack()
        assert (ack.result, ack.reason) == (REJECTED, reason)
        assert ack.message
        await stream.send(batch(2, now, [(0, 0, 42.0)]))
        ack = await stream.recv_ack()
        assert (ack.batch_seq, ack.result) == (2, STORED)
        await stream.close()
    assert await _sample_count(db, pk) == 1
    events = await db.fetch("SELECT kind, details->>'reason' AS reason FROM app.edge_events WHERE edge_pk = $1", pk)
    assert ("BATCH_REJECTED", reason) in {(e["kind"], e["reason"]) for e in events}


async def test_sessions_heartbeats_offline_and_clock_drift(host: Host, db: asyncpg.Connection) -> None:
    edge, pk, key = await new_edge(db, "session")
    async with host(["edge"], offline_after_s=1.0, heartbeat_interval_s=0.3) as (server, runtime):
        stream = EdgeStream(server.port)
        await stream.send(hello(str(edge), key, clock_offset_s=5.0))
        welcome = (await stream.recv()).welcome
        assert welcome.heartbeat_interval.ToMilliseconds() == 300
        row = await db.fetchrow("SELECT * FROM app.edge_sessions WHERE edge_pk = $1", pk)
        assert row["online"]
        assert row["replica_id"] == runtime.replica_id
        assert row["agent_version"] == "test"
        assert 4000 < row["clock_offset_ms"] < 6000
        await stream.send(
            edge_link_pb2.ConnectRequest(heartbeat=edge_link_pb2.Heartbeat(edge_time=hello("", "").hello.edge_time))
        )
        assert (await stream.recv()).WhichOneof("message") == "heartbeat_ack"
        # Heartbeats stop (the stream stays open, as with a hung edge): offline within ~1 s.
        deadline = time.monotonic() + 10
        while (
            await db.fetchval("SELECT online FROM app.edge_sessions WHERE edge_pk = $1", pk)
        ) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not await db.fetchval("SELECT online FROM app.edge_sessions WHERE edge_pk = $1", pk)
        # A heartbeat (or a reconnect) makes it online again.
        await stream.send(edge_link_pb2.ConnectRequest(heartbeat=edge_link_pb2.Heartbeat()))
        await stream.recv()
        assert await db.fetchval("SELECT online FROM app.edge_sessions WHERE edge_pk = $1", pk)
        await stream.close()
    kinds = [r["kind"] for r in await db.fetch("SELECT kind FROM app.edge_events WHERE edge_pk = $1 ORDER BY id", pk)]
    assert kinds[:3] == ["CONNECTED", "CLOCK_DRIFT", "OFFLINE"]
    assert kinds[-1] == "DISCONNECTED"


async def test_a_newer_stream_takes_over_the_session(host: Host, db: asyncpg.Connection) -> None:
    edge, _, key = await new_edge(db, "takeover")
    async with host(["edge"]) as (server, _):
        old = EdgeStream(server.port)
        await old.send(hello(str(edge), key))
        await old.recv()
        new = EdgeStream(server.port)
        await new.send(hello(str(edge), key))
        await new.recv()
        # The older stream ends by itself (nothing is sent on it: a write racing the server's status
        # makes the gRPC client report its own INTERNAL instead of that status).
        assert await _ended_with(old) == (grpc.StatusCode.ABORTED, "SESSION_REPLACED")
        await new.send(edge_link_pb2.ConnectRequest(heartbeat=edge_link_pb2.Heartbeat()))
        assert (await new.recv()).WhichOneof("message") == "heartbeat_ack"
        await old.close()
        await new.close()


async def test_postgres_restart_mid_ingest_loses_nothing(
    host: Host, db: asyncpg.Connection, postgres: SessionPostgres, migrated_url: str
) -> None:
    edge, pk, key = await new_edge(db, "pg-restart")
    now = time.time()
    async with host(["edge"]) as (server, _):
        stream = EdgeStream(server.port)
        await stream.send(hello(str(edge), key))
        await stream.recv()
        sender_done = asyncio.Event()

        async def send_all() -> None:
            for seq in range(1, 61):
                await stream.send(batch(seq, now - 100 + seq, [(0, 0, float(seq)), (1, 10, -float(seq))]))
                await asyncio.sleep(0.02)
            sender_done.set()

        sender = asyncio.create_task(send_all())
        acks = [await stream.recv_ack(timeout=60) for _ in range(10)]
        await postgres.restart()
        acks += [await stream.recv_ack(timeout=60) for _ in range(50)]
        await sender
        await stream.close()
    assert [a.batch_seq for a in acks] == list(range(1, 61))
    assert {a.result for a in acks} == {STORED}
    check = await asyncpg.connect(migrated_url)  # the fixture's connection died with the restart
    try:
        assert await _sample_count(check, pk) == 120
    finally:
        await check.close()
