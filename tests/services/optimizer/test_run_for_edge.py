"""The plan an edge is sent when its stream opens: the one in force, else the next one (a day-ahead plan),
read in one statement (store.run_for_edge)."""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg
from emma.optimizer.v1 import optimizer_pb2 as pb

from services.optimizer import store

SITE = "organizations/acme/sites/plant"
NOW = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


async def _save(
    db: asyncpg.Connection, start: dt.datetime, end: dt.datetime, created: dt.datetime, *, ok: bool = True
) -> uuid.UUID:
    run_id = uuid.uuid4()
    run = pb.OptimizationRun(name=f"organizations/acme/optimizationRuns/{run_id}", sites=[SITE])
    run.state = pb.OPTIMIZATION_RUN_STATE_SUCCEEDED if ok else pb.OPTIMIZATION_RUN_STATE_FAILED
    run.create_time.FromDatetime(created)
    await store.save_run(
        db, run, pb.OptimizationInputs(), run_id=run_id, org="acme", start=start, end=end,
        replay_of=None, creator="test", request_id=None,
    )  # fmt: skip
    return run_id


async def _chosen(db: asyncpg.Connection) -> uuid.UUID | None:
    found = await store.run_for_edge(db, SITE, NOW)
    return None if found is None else found.run_id


async def test_the_plan_in_force_else_the_next_one_else_none(db: asyncpg.Connection) -> None:
    assert await _chosen(db) is None
    await _save(db, NOW - 3 * HOUR, NOW - HOUR, NOW - 4 * HOUR)  # ended
    await _save(db, NOW + 2 * HOUR, NOW + 26 * HOUR, NOW - HOUR, ok=False)  # failed
    assert await _chosen(db) is None
    later = await _save(db, NOW + 2 * HOUR, NOW + 26 * HOUR, NOW - 2 * HOUR)
    sooner_old = await _save(db, NOW + HOUR, NOW + 25 * HOUR, NOW - 3 * HOUR)
    sooner_new = await _save(db, NOW + HOUR, NOW + 25 * HOUR, NOW - 2 * HOUR)
    # No plan in force: the earliest next one, its newest version.
    assert await _chosen(db) == sooner_new and sooner_new != sooner_old != later
    in_force_old = await _save(db, NOW - HOUR, NOW + 23 * HOUR, NOW - 2 * HOUR)
    in_force_new = await _save(db, NOW - HOUR, NOW + HOUR, NOW - HOUR)
    # A plan in force wins over any next one; the newest of those in force.
    assert await _chosen(db) == in_force_new != in_force_old
    assert await store.active_run(db, SITE, NOW) == await store.run_for_edge(db, SITE, NOW)


async def test_a_delivery_reads_sent_then_accepted_or_refused_per_edge(db: asyncpg.Connection) -> None:
    run_id = await _save(db, NOW - HOUR, NOW + HOUR, NOW - HOUR)
    other = await _save(db, NOW - HOUR, NOW + HOUR, NOW - HOUR)
    name = f"organizations/acme/optimizationRuns/{run_id}"
    edges = [f"{SITE}/edges/a", f"{SITE}/edges/b"]
    assert await store.deliveries(db, [run_id]) == {}  # sent nowhere yet
    for edge in edges:
        await store.record_sent(db, run_id, edge, name)
    await store.record_sent(db, run_id, edges[0], name)  # again, after a reconnect
    sent = (await store.deliveries(db, [run_id, other]))[run_id]
    assert [(d.edge, d.state, d.send_count) for d in sent] == [
        (edges[0], pb.SCHEDULE_DELIVERY_STATE_SENT, 2),
        (edges[1], pb.SCHEDULE_DELIVERY_STATE_SENT, 1),
    ]
    assert all(d.HasField("last_send_time") and not d.HasField("answer_time") for d in sent)
    assert await store.record_ack(db, edges[0], name, True, "")
    assert await store.record_ack(db, edges[1], name, False, "battery_9/SetActivePower is not a writable channel")
    answered = (await store.deliveries(db, [run_id]))[run_id]
    assert [(d.state, d.refusal_reason) for d in answered] == [
        (pb.SCHEDULE_DELIVERY_STATE_ACCEPTED, ""),
        (pb.SCHEDULE_DELIVERY_STATE_REFUSED, "battery_9/SetActivePower is not a writable channel"),
    ]
    assert all(d.answer_time.ToDatetime() >= d.first_send_time.ToDatetime() for d in answered)
    # One edge's, as GetActiveSchedule reads it.
    assert (await store.deliveries(db, [run_id], edges[1]))[run_id] == [answered[1]]
