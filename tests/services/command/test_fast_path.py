"""The command path's shortcuts keep every guarantee: create in one call, acks applied several per call,
delivery and the watch fed inside the process (services/command/local.py), against real PostgreSQL and
real EdgeLink/Command servers with a protocol-level edge."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import uuid
from typing import Any

import asyncpg
import grpc
import pytest
from emma.command.v1 import command_pb2, command_pb2_grpc
from emma.edge.v1 import edge_link_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.command import local, states, transitions, watch
from services.command.local import Change
from services.command.transitions import Ack
from tests.services.command.test_commands import ack, create, online_edge, reason_of
from tests.support.cancellation import cancel_ends, loop_steps
from tests.support.cloud import Host, new_edge
from tests.support.identity import authed_channel

S = command_pb2
SETPOINT = "battery_1/SetActivePower"


async def delivered_command(db: asyncpg.Connection, pk: int, state: str = states.DELIVERED) -> uuid.UUID:
    """A command of edge `pk` stored directly in `state`, with the events that lead there."""
    command_id = uuid.uuid4()
    await db.execute(
        """INSERT INTO app.commands (id, edge_pk, channel, value, state, issued_time, expire_time, creator,
               request_id, request_hash)
           VALUES ($1, $2, 'b/SetActivePower', 0, $3, now(), now() + interval '1 h', 'p', $4, 'h')""",
        command_id,
        pk,
        state,
        str(command_id),
    )
    path = [s for s in (states.QUEUED, states.DELIVERED, states.RECEIVED) if states.ORDER[s] <= states.ORDER[state]]
    for before, after in zip(["", *path], path, strict=False):
        await db.execute(
            "INSERT INTO app.command_events (command_id, from_state, to_state) VALUES ($1, $2, $3)",
            command_id,
            before,
            after,
        )
    return command_id


async def test_acks_in_one_call_apply_in_order_and_skip_what_the_state_machine_refuses(db: asyncpg.Connection) -> None:
    _, pk, _ = await new_edge(db, "acks-batch")
    first, second = await delivered_command(db, pk), await delivered_command(db, pk)
    batch = [
        Ack(first, states.RECEIVED),
        Ack(first, states.EXECUTED, applied_value=-42.0),
        Ack(first, states.EXECUTED, applied_value=-1.0),  # repeated: already final
        Ack(first, states.RECEIVED),  # late: goes backwards
        Ack(second, states.REJECTED_BY_EDGE, reason="LIMIT", message="too much"),
        Ack(uuid.uuid4(), states.RECEIVED),  # no such command
    ]
    applied = await transitions.apply_acks(db, batch, "replica-a")
    assert [(a.ack, a.from_state) for a in applied] == [
        (batch[0], states.DELIVERED),
        (batch[1], states.RECEIVED),
        (batch[4], states.DELIVERED),
    ]
    assert applied[1].applied_value == -42.0
    row = await db.fetchrow("SELECT state, applied_value, update_time FROM app.commands WHERE id = $1", first)
    assert (row["state"], row["applied_value"]) == (states.EXECUTED, -42.0)
    events = await db.fetch(
        "SELECT from_state, to_state, event_time, replica_id FROM app.command_events WHERE command_id = $1 ORDER BY id",
        first,
    )
    assert [(e["from_state"], e["to_state"]) for e in events] == [
        ("", states.QUEUED),
        (states.QUEUED, states.DELIVERED),
        (states.DELIVERED, states.RECEIVED),
        (states.RECEIVED, states.EXECUTED),
    ]
    # What the call returns is what a re-read shows: the watch builds on it.
    assert events[-1]["event_time"] == applied[1].event_time == row["update_time"]
    assert events[-1]["replica_id"] == "replica-a"
    rejected = await db.fetchrow("SELECT state, state_reason FROM app.commands WHERE id = $1", second)
    assert tuple(rejected) == (states.REJECTED_BY_EDGE, "LIMIT")
    assert await transitions.apply_acks(db, [], "replica-a") == []


async def _create(db: asyncpg.Connection, pk: int, deliver_limit: int, rate_limit: int = 10) -> Any:
    command_id = uuid.uuid4()
    created = await transitions.create_queued(
        db,
        command_id,
        pk,
        "b/SetActivePower",
        1.0,
        dt.datetime.now(dt.UTC),
        dt.timedelta(minutes=5),
        creator="users/deliver-test",
        request_id=str(command_id),
        digest="h",
        fleet_dispatch=None,
        traceparent="",
        replica_id="replica-a",
        rate_limit_per_s=rate_limit,
        queue_cap=10_000,
        deliver_limit=deliver_limit,
    )
    return command_id, created


async def test_create_with_a_delivery_limit_delivers_older_ones_first_and_tells_no_replica(
    db: asyncpg.Connection, migrated_url: str
) -> None:
    _, pk, _ = await new_edge(db, "create-deliver")
    older = await delivered_command(db, pk, states.QUEUED)
    heard: list[str] = []
    listener = await asyncpg.connect(migrated_url)
    await listener.add_listener(transitions.EDGE_CHANNEL, lambda *args: heard.append(args[3]))
    try:
        new_id, created = await _create(db, pk, deliver_limit=100)
        assert created.stored["r_create_time"] is not None and created.stored["r_earlier_id"] is None
        assert [d["id"] for d in created.delivered] == [older, new_id]  # oldest first
        assert created.delivered[0]["seq"] < created.delivered[1]["seq"]
        rows = await db.fetch("SELECT id, state, delivered_time FROM app.commands WHERE edge_pk = $1", pk)
        assert {r["id"]: r["state"] for r in rows} == {older: states.DELIVERED, new_id: states.DELIVERED}
        events = await db.fetch(
            "SELECT from_state, to_state, replica_id FROM app.command_events WHERE command_id = $1 ORDER BY id", new_id
        )
        assert [(e["from_state"], e["to_state"]) for e in events] == [
            ("", states.QUEUED),
            (states.QUEUED, states.DELIVERED),
        ]
        # Refused by a limit: nothing stored, nothing delivered.
        _, refused = await _create(db, pk, deliver_limit=100, rate_limit=0)
        assert refused.stored["r_create_time"] is None and refused.delivered == []
        # Without a limit the command stays QUEUED and the replicas are told; the delivered one told none.
        plain_id, plain = await _create(db, pk, deliver_limit=0)
        assert plain.delivered == [] and plain.stored["r_create_time"] is not None
        assert await db.fetchval("SELECT state FROM app.commands WHERE id = $1", plain_id) == states.QUEUED
        deadline = asyncio.get_running_loop().time() + 5
        while not heard and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        assert heard == [str(pk)]  # notifications arrive in commit order: only the plain create's
    finally:
        await listener.close()


ACKS = st.lists(st.sampled_from([states.RECEIVED, states.EXECUTED, states.REJECTED_BY_EDGE, states.FAILED]), max_size=4)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(ACKS, min_size=1, max_size=3))
async def test_state_machine_property_for_acks_applied_in_batches(
    db: asyncpg.Connection, migrated_url: str, batches: list[list[str]]
) -> None:
    """Random batches of acks, applied concurrently, never give two final states or a step backwards."""
    _, pk, _ = await new_edge(db, "prop-acks", time_zone="UTC")
    command_id = await delivered_command(db, pk)
    pool = await asyncpg.create_pool(migrated_url, min_size=1, max_size=len(batches))
    assert pool is not None
    try:

        async def attempt(targets: list[str]) -> list[Any]:
            async with pool.acquire() as conn:
                return await transitions.apply_acks(conn, [Ack(command_id, t) for t in targets], "r")

        results = await asyncio.gather(*(attempt(b) for b in batches))
    finally:
        await pool.close()
    events = await db.fetch(
        "SELECT from_state, to_state FROM app.command_events WHERE command_id = $1 ORDER BY id", command_id
    )
    path = [e["to_state"] for e in events]
    assert sum(s in states.FINAL for s in path) <= 1
    assert all(states.ORDER[a] < states.ORDER[b] for a, b in itertools.pairwise(path))
    assert all(e["from_state"] == prev for e, prev in zip(events[1:], path, strict=False))
    # Every applied ack is exactly one event, and every event after delivery is an applied ack.
    assert sum(len(r) for r in results) == len(path) - 2


async def test_a_retry_is_answered_with_its_command_even_when_its_limits_went_stale(
    host: Host, db: asyncpg.Connection, token: str
) -> None:
    edge, pk, key = await new_edge(db, "cmd-stale-retry")
    async with host(["edge", "command"]) as (server, _), authed_channel(server.port, token) as ch:
        stub = command_pb2_grpc.CommandServiceStub(ch)
        stream = await online_edge(server.port, edge, key)
        request = create(edge, SETPOINT, 1500.0, request_id="stale-later")
        first = await stub.CreateCommand(request)
        await db.execute(
            """UPDATE telemetry.latest l SET time = now() - interval '1 hour' FROM telemetry.series s
               WHERE s.id = l.series_id AND s.edge_pk = $1""",
            pk,
        )
        again = await stub.CreateCommand(request)
        assert again.name == first.name
        with pytest.raises(grpc.aio.AioRpcError) as stale:
            await stub.CreateCommand(create(edge, SETPOINT, 1500.0))
        assert reason_of(stale.value) == "TELEMETRY_STALE"
        with pytest.raises(grpc.aio.AioRpcError) as reused:
            await stub.CreateCommand(create(edge, SETPOINT, 1600.0, request_id="stale-later"))
        assert reason_of(reused.value) == "REQUEST_ID_REUSED"
        assert await db.fetchval("SELECT count(*) FROM app.commands WHERE edge_pk = $1", pk) == 1
        await stream.close()


async def test_create_commits_its_audit_row_with_the_command_and_every_call_has_one_row(
    host: Host, db: asyncpg.Connection, token: str
) -> None:
    edge, pk, key = await new_edge(db, "cmd-audit")
    traced = [("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]

    async def rows() -> list[Any]:
        return list(
            await db.fetch(
                """SELECT id, xmin::text AS xid, org_id, actor, resource, result_code, trace_id, request_json
                   FROM identity.audit_entries WHERE method LIKE '%/CreateCommand' AND resource = $1 ORDER BY id""",
                str(edge),
            )
        )

    async def queued_xid(name: str) -> str:
        return str(
            await db.fetchval(
                "SELECT xmin::text FROM app.command_events WHERE command_id = $1 AND to_state = $2",
                uuid.UUID(name.rsplit("/", 1)[1]),
                states.QUEUED,
            )
        )

    async with host(["edge", "command"]) as (server, runtime), authed_channel(server.port, token) as ch:
        stub = command_pb2_grpc.CommandServiceStub(ch)
        relay = local.hub(runtime.pool).delivery
        assert relay is not None
        # Queued (the edge went offline after its Hello), then delivered in the create call (the edge's
        # stream held here).
        await (await online_edge(server.port, edge, key)).close()
        while relay.holds(pk):
            await asyncio.sleep(0.01)
        queued = await stub.CreateCommand(create(edge, SETPOINT, 0.0, request_id="audit-1"), metadata=traced)
        stream = await online_edge(server.port, edge, key)  # the queued one goes out on its Hello
        delivered = await stub.CreateCommand(create(edge, SETPOINT, -500.0), metadata=traced)
        while (await stream.recv_kind("command")).command.name != delivered.name:
            pass
        stored = await rows()
        assert [r["result_code"] for r in stored] == [0, 0]
        # Written in the command's own transaction: one commit for both.
        assert [r["xid"] for r in stored] == [await queued_xid(queued.name), await queued_xid(delivered.name)]
        for r in stored:
            assert (r["org_id"], r["resource"]) == ("acme", str(edge))
            assert r["actor"].startswith("users/") and r["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
            assert '"requestId"' in r["request_json"]
        # Calls that store nothing still get their one row from the interceptor, with their outcome: a
        # refusal, and a retry answered with the earlier command.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateCommand(create(edge, SETPOINT, 4500.0))
        assert reason_of(refused.value) == "VALUE_EXCEEDS_DYNAMIC_LIMIT"
        assert (await stub.CreateCommand(create(edge, SETPOINT, 0.0, request_id="audit-1"))).name == queued.name
        later = (await rows())[2:]
        assert [r["result_code"] for r in later] == [grpc.StatusCode.FAILED_PRECONDITION.value[0], 0]
        assert await db.fetchval("SELECT count(*) FROM app.commands WHERE edge_pk = $1", pk) == 2
        await stream.close()


async def test_the_relay_of_the_same_process_delivers_without_the_notification(
    host: Host, db: asyncpg.Connection, token: str
) -> None:
    edge, _, key = await new_edge(db, "cmd-local")
    async with host(["edge", "command"]) as (server, runtime), authed_channel(server.port, token) as ch:
        stub = command_pb2_grpc.CommandServiceStub(ch)
        stream = await online_edge(server.port, edge, key)
        relay = local.hub(runtime.pool).delivery
        assert relay is not None
        # Deaf to NOTIFY and without its poll: only the in-process path can deliver now.
        await relay._listener.stop()  # type: ignore[attr-defined]
        relay._poller.cancel()  # type: ignore[attr-defined]
        created = await stub.CreateCommand(create(edge, SETPOINT, -500.0))
        delivered = (await stream.recv_kind("command")).command
        assert delivered.name == created.name
        # Delivered in the create call itself: one transaction, and no notification for the replicas.
        events = await db.fetch(
            "SELECT to_state, event_time FROM app.command_events WHERE command_id = $1 ORDER BY id",
            uuid.UUID(created.name.rsplit("/", 1)[1]),
        )
        assert [e["to_state"] for e in events] == [states.QUEUED, states.DELIVERED]
        assert events[0]["event_time"] == events[1]["event_time"]
        await stream.close()


async def test_the_watch_fed_in_process_shows_exactly_what_a_reread_shows(
    host: Host, db: asyncpg.Connection, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No fallback re-read within the test, and (below) no NOTIFY: the watch can only be fed in-process.
    monkeypatch.setattr(watch, "FALLBACK_POLL_S", 60.0)
    edge, _, key = await new_edge(db, "cmd-watch-local")
    async with host(["edge", "command"]) as (server, runtime), authed_channel(server.port, token) as ch:
        stub = command_pb2_grpc.CommandServiceStub(ch)
        stream = await online_edge(server.port, edge, key)
        changed = local.hub(runtime.pool).changed
        assert changed is not None
        await changed.__self__._listener.stop()  # type: ignore[attr-defined]
        created = await stub.CreateCommand(create(edge, SETPOINT, -700.0))
        watched = stub.WatchCommand(S.WatchCommandRequest(name=created.name))
        first = await anext(aiter(watched))  # subscribed: every change from here on reaches it
        delivered = (await stream.recv_kind("command")).command
        await ack(stream, delivered.name, edge_link_pb2.COMMAND_ACK_STATUS_RECEIVED)
        await ack(stream, delivered.name, edge_link_pb2.COMMAND_ACK_STATUS_EXECUTED, applied=-700.0)
        rest = await asyncio.wait_for(_collect(watched), 20)
        final = rest[-1].command
        stored = await stub.GetCommand(S.GetCommandRequest(name=created.name))
        assert final == stored
        shown = [first.command.transitions[-1], *(m.transition for m in rest)]
        assert list(shown) == list(stored.transitions)[len(stored.transitions) - len(shown) :]
        assert [S.CommandState.Name(t.to_state) for t in stored.transitions] == [
            "COMMAND_STATE_QUEUED",
            "COMMAND_STATE_DELIVERED",
            "COMMAND_STATE_RECEIVED",
            "COMMAND_STATE_EXECUTED",
        ]
        await stream.close()


async def _collect(stream: Any) -> list[command_pb2.WatchCommandResponse]:
    return [m async for m in stream]


def test_a_change_is_applied_only_as_the_next_step() -> None:
    now = dt.datetime.now(dt.UTC)
    command = S.Command(name="x", state=S.COMMAND_STATE_DELIVERED)
    command_id = uuid.uuid4()
    received = Change(command_id, states.DELIVERED, states.RECEIVED, now)
    executed = Change(command_id, states.RECEIVED, states.EXECUTED, now, applied_value=3.0)
    assert watch.advance(command, executed) is None  # RECEIVED is missing
    assert not watch.already_shown(command, executed)  # so the stream must re-read
    after = watch.advance(command, received)
    assert after is not None and after.state == S.COMMAND_STATE_RECEIVED and len(after.transitions) == 1
    assert watch.advance(after, received) is None and watch.already_shown(after, received)
    done = watch.advance(after, executed)
    assert done is not None and done.applied_value == 3.0 and done.state == S.COMMAND_STATE_EXECUTED
    assert command.state == S.COMMAND_STATE_DELIVERED  # the original is not changed


async def test_a_local_change_holds_back_its_notification_but_not_a_reconnect() -> None:
    sub = watch.Subscription()
    change = Change(uuid.uuid4(), states.QUEUED, states.DELIVERED, dt.datetime.now(dt.UTC))
    sub.publish(change)
    sub.notify()  # the NOTIFY of the same change: no re-read
    assert await sub.wait_for_change() == ([change], False)
    sub.notify()  # another change, from elsewhere
    assert await sub.wait_for_change() == ([], True)
    sub.publish(change)
    sub.notify(force=True)  # LISTEN came back: always re-read
    assert await sub.wait_for_change() == ([change], True)


async def test_a_notification_that_comes_before_its_local_change_costs_no_re_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The relay's transaction result and its NOTIFY arrive on two connections, often the NOTIFY first.
    monkeypatch.setattr(watch, "LOCAL_CHANGE_WAIT_S", 60.0)  # no stall of this machine ends the wait here
    sub = watch.Subscription()
    delivered = Change(uuid.uuid4(), states.QUEUED, states.DELIVERED, dt.datetime.now(dt.UTC))
    sub.notify()
    sub.publish(delivered)
    assert await sub.wait_for_change() == ([delivered], False)
    # Woken by the NOTIFY alone, the stream gives the local change one turn of the loop to arrive.
    received = Change(delivered.command_id, states.DELIVERED, states.RECEIVED, dt.datetime.now(dt.UTC))
    waiting = asyncio.create_task(sub.wait_for_change())
    await asyncio.sleep(0)  # the stream waits
    sub.notify()
    await loop_steps(3)  # the stream wakes on the NOTIFY alone and waits for its local copy
    assert not waiting.done()  # (it would re-read after LOCAL_CHANGE_WAIT_S)
    sub.publish(received)
    assert await waiting == ([received], False)
    # A NOTIFY of another replica's change taken for a local one's is found by that one's own NOTIFY.
    executed = Change(delivered.command_id, states.RECEIVED, states.EXECUTED, dt.datetime.now(dt.UTC))
    sub.notify()  # another replica's
    sub.publish(executed)
    assert await sub.wait_for_change() == ([executed], False)
    monkeypatch.setattr(watch, "LOCAL_CHANGE_WAIT_S", 0.0)  # no local copy comes for the rest
    sub.notify()  # the local change's own: nothing accounts for it, so the stream re-reads
    assert await sub.wait_for_change() == ([], True)
    sub.notify()  # after the re-read the count starts afresh: the next NOTIFY alone re-reads again
    assert await sub.wait_for_change() == ([], True)
    # A command whose changes no local relay publishes (its edge's stream is on another replica): a
    # NOTIFY alone is a re-read at once, with nothing to wait for.
    remote = watch.Subscription()
    remote.notify()
    waiting = asyncio.create_task(remote.wait_for_change())
    await loop_steps(3)
    assert waiting.done() and waiting.result() == ([], True)


async def test_a_cancelled_watch_ends_even_when_a_change_arrived_in_the_same_loop_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # WatchCommand waits on its subscription until the command is final; a client that goes away (or the
    # server's shutdown) cancels it at any moment, also a few loop steps after a change arrived: that
    # cancellation must end the stream (asyncio.wait_for on Python 3.11 dropped it when the awaited change
    # had just been signalled, and the handler then ran on until its command was final).
    monkeypatch.setattr(watch, "FALLBACK_POLL_S", 60.0)  # only the change wakes the watch here
    change = Change(uuid.uuid4(), states.QUEUED, states.DELIVERED, dt.datetime.now(dt.UTC))
    for steps in range(8):  # the cancellation 0..7 loop steps after the change
        sub = watch.Subscription()
        waiting = asyncio.Event()

        async def stream(sub: watch.Subscription = sub, waiting: asyncio.Event = waiting) -> None:
            while True:  # as WatchCommand's loop while its command is not final
                waiting.set()
                await sub.wait_for_change()

        task = asyncio.create_task(stream())
        await waiting.wait()
        sub.publish(change)
        await loop_steps(steps)
        assert await cancel_ends(task), f"the watch outlived its cancellation {steps} steps after a change"
