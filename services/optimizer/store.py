"""The optimizer domain's SQL: runs with their inputs, written once and never changed."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from emma.optimizer.v1 import optimizer_pb2 as pb

from services.platform.migrations import Conn


@dataclass(frozen=True)
class StoredRun:
    run_id: uuid.UUID
    org: str
    inputs: pb.OptimizationInputs
    result: pb.OptimizationRun  # without inputs
    creator: str
    request_id: str | None


async def save_run(
    conn: Conn,
    run: pb.OptimizationRun,
    inputs: pb.OptimizationInputs,
    *,
    run_id: uuid.UUID,
    org: str,
    start: datetime,
    end: datetime,
    replay_of: uuid.UUID | None,
    creator: str,
    request_id: str | None,
    assembled: bool = False,
) -> None:
    state = "succeeded" if run.state == pb.OPTIMIZATION_RUN_STATE_SUCCEEDED else "failed"
    await conn.execute(
        """INSERT INTO optimizer.runs (run_id, org_id, site_names, state, create_time, start_time, end_time,
                                       objective, replay_of, creator, request_id, inputs, result, assembled)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)""",
        run_id,
        org,
        list(run.sites),
        state,
        run.create_time.ToDatetime().replace(tzinfo=start.tzinfo),
        start,
        end,
        run.objective_value if state == "succeeded" else None,
        replay_of,
        creator,
        request_id,
        inputs.SerializeToString(deterministic=True),
        run.SerializeToString(deterministic=True),
        assembled,
    )


def _stored(row: asyncpg.Record) -> StoredRun:
    inputs = pb.OptimizationInputs()
    inputs.ParseFromString(bytes(row["inputs"]))
    result = pb.OptimizationRun()
    result.ParseFromString(bytes(row["result"]))
    return StoredRun(
        uuid.UUID(str(row["run_id"])), str(row["org_id"]), inputs, result, str(row["creator"]), row["request_id"]
    )


async def get_run(conn: Conn, org: str, run_id: uuid.UUID) -> StoredRun | None:
    row = await conn.fetchrow("SELECT * FROM optimizer.runs WHERE org_id = $1 AND run_id = $2", org, run_id)
    return None if row is None else _stored(row)


async def run_of_request(conn: Conn, creator: str, request_id: str) -> StoredRun | None:
    row = await conn.fetchrow(
        "SELECT * FROM optimizer.runs WHERE creator = $1 AND request_id = $2", creator, request_id
    )
    return None if row is None else _stored(row)


async def list_runs(conn: Conn, org: str, site: str | None, offset: int, limit: int) -> list[StoredRun]:
    rows = await conn.fetch(
        """SELECT * FROM optimizer.runs
           WHERE org_id = $1 AND ($2::text IS NULL OR site_names @> ARRAY[$2::text])
           ORDER BY create_time DESC, run_id DESC OFFSET $3 LIMIT $4""",
        org,
        site,
        offset,
        limit,
    )
    return [_stored(r) for r in rows]


# The newest successful run that plans site $1 and whose horizon has not ended at $2.
_ACTIVE_RUN_SQL = """SELECT * FROM optimizer.runs
    WHERE site_names @> ARRAY[$1::text] AND state = 'succeeded' AND start_time <= $2 AND end_time > $2
    ORDER BY create_time DESC, run_id DESC LIMIT 1"""
# The newest successful run of the earliest start after $2 that plans site $1 (a day-ahead plan).
_NEXT_RUN_SQL = """SELECT * FROM optimizer.runs
    WHERE site_names @> ARRAY[$1::text] AND state = 'succeeded' AND start_time > $2
    ORDER BY start_time, create_time DESC, run_id DESC LIMIT 1"""


async def active_run(conn: Conn, site: str, now: datetime) -> StoredRun | None:
    """The newest successful run that plans `site` and whose horizon has not ended."""
    row = await conn.fetchrow(_ACTIVE_RUN_SQL, site, now)
    return None if row is None else _stored(row)


async def run_for_edge(conn: Conn, site: str, now: datetime) -> StoredRun | None:
    """`active_run`, or without one the next run (the newest of the earliest start after `now`: a
    day-ahead plan), in one round trip (every edge stream that opens asks)."""
    row = await conn.fetchrow(
        f"""SELECT * FROM (
               (SELECT *, 0 AS choice FROM ({_ACTIVE_RUN_SQL}) AS active)
               UNION ALL
               (SELECT *, 1 AS choice FROM ({_NEXT_RUN_SQL}) AS next)
           ) AS found
           ORDER BY choice LIMIT 1""",
        site,
        now,
    )
    return None if row is None else _stored(row)


async def active_assembled_runs(conn: Conn, now: datetime) -> list[StoredRun]:
    """For each set of sites planned together, the plan in force now if it was assembled from the
    platform (the receding horizon's work list): the newest successful run covering `now` per set,
    kept only when no newer run of explicit inputs replaced it for one of its sites."""
    rows = await conn.fetch(
        """SELECT DISTINCT ON (site_names) * FROM optimizer.runs
           WHERE assembled AND state = 'succeeded' AND start_time <= $1 AND end_time > $1
           ORDER BY site_names, create_time DESC, run_id DESC""",
        now,
    )
    out: list[StoredRun] = []
    for r in rows:
        stored = _stored(r)
        # A later run of explicit inputs for any of these sites is what the edges follow: leave it.
        for site in stored.result.sites:
            found = await active_run(conn, site, now)
            if found is None or found.run_id != stored.run_id:
                break
        else:
            out.append(stored)
    return out


async def latest_failed_time(conn: Conn, sites: list[str], creator: str) -> datetime | None:
    """When `creator` last stored a FAILED run of exactly these sites (None: never)."""
    found: datetime | None = await conn.fetchval(
        """SELECT max(create_time) FROM optimizer.runs
           WHERE site_names = $1::text[] AND creator = $2 AND state = 'failed'""",
        sites,
        creator,
    )
    return found


async def runs_in_force(conn: Conn, site: str, start: datetime, end: datetime) -> list[StoredRun]:
    """Every successful run planning `site` whose horizon overlaps [start, end), oldest first: the
    plan in force at a time is the newest of them created before it (what the relay sent)."""
    rows = await conn.fetch(
        """SELECT * FROM optimizer.runs
           WHERE site_names @> ARRAY[$1::text] AND state = 'succeeded' AND start_time < $3 AND end_time > $2
           ORDER BY create_time, run_id""",
        site,
        start,
        end,
    )
    return [_stored(r) for r in rows]


# -- schedules on their way to the edges (migration 0017) -------------------------------------------

SCHEDULE_CHANNEL = "emma_optimizer_schedules"  # payload: a site name whose plan changed


async def announce_schedules(conn: Conn, sites: list[str]) -> None:
    """Tell every EdgeLink replica that these sites have a new plan (delivered after the commit)."""
    await conn.execute(f"SELECT pg_notify('{SCHEDULE_CHANNEL}', s) FROM unnest($1::text[]) AS s", sites)


async def record_sent(conn: Conn, run_id: uuid.UUID, edge: str, schedule_id: str) -> None:
    await conn.execute(
        """INSERT INTO optimizer.schedule_deliveries (run_id, edge_name, schedule_id, first_sent_time, last_sent_time)
           VALUES ($1, $2, $3, now(), now())
           ON CONFLICT (run_id, edge_name) DO UPDATE SET last_sent_time = now(),
               sent_count = optimizer.schedule_deliveries.sent_count + 1""",
        run_id,
        edge,
        schedule_id,
    )


async def record_ack(conn: Conn, edge: str, schedule_id: str, accepted: bool, reason: str) -> bool:
    """The edge's answer to a schedule; False when no schedule of that id was sent to that edge."""
    updated = await conn.fetchval(
        """UPDATE optimizer.schedule_deliveries SET ack_time = now(), accepted = $3, reason = $4
           WHERE edge_name = $1 AND schedule_id = $2 RETURNING true""",
        edge,
        schedule_id,
        accepted,
        reason or None,
    )
    return bool(updated)


async def deliveries(
    conn: Conn, run_ids: list[uuid.UUID], edge: str | None = None
) -> dict[uuid.UUID, list[pb.ScheduleDelivery]]:
    """The runs' deliveries (of one edge, if given), each run's by edge name; a run sent nowhere is absent."""
    rows = await conn.fetch(
        """SELECT run_id, edge_name, first_sent_time, last_sent_time, sent_count, ack_time, accepted, reason
           FROM optimizer.schedule_deliveries
           WHERE run_id = ANY($1::uuid[]) AND ($2::text IS NULL OR edge_name = $2)
           ORDER BY run_id, edge_name""",
        run_ids,
        edge,
    )
    found: dict[uuid.UUID, list[pb.ScheduleDelivery]] = {}
    for r in rows:
        found.setdefault(r["run_id"], []).append(_delivery(r))
    return found


def _delivery(row: asyncpg.Record) -> pb.ScheduleDelivery:
    accepted: bool | None = row["accepted"]
    if row["ack_time"] is None:
        state = pb.SCHEDULE_DELIVERY_STATE_SENT
    else:
        state = pb.SCHEDULE_DELIVERY_STATE_ACCEPTED if accepted else pb.SCHEDULE_DELIVERY_STATE_REFUSED
    out = pb.ScheduleDelivery(
        edge=row["edge_name"],
        state=state,
        send_count=row["sent_count"],
        refusal_reason=(row["reason"] or "") if state == pb.SCHEDULE_DELIVERY_STATE_REFUSED else "",
    )
    out.first_send_time.FromDatetime(row["first_sent_time"])
    out.last_send_time.FromDatetime(row["last_sent_time"])
    if row["ack_time"] is not None:
        out.answer_time.FromDatetime(row["ack_time"])
    return out
