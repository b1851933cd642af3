"""Alarms and their transitions: SQL, mapping and the operators' actions (acknowledge, shelve, clear).

Every change writes a row of alarm.transitions and announces it with NOTIFY in the same transaction,
so a WatchAlarms stream on any replica sees exactly the changes that committed."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import grpc
from emma.alarm.v1 import alarm_pb2 as pb
from emma.common.v1 import errors_pb2

from services.errors import ApiError, invalid_field, not_found
from services.names import ID_PATTERN
from services.platform.migrations import Conn
from services.platform.rpc import timestamp

NOTIFY_CHANNEL = "emma_alarm_changes"
ENGINE_ACTOR = "alarm-engine"
MAX_NOTE_CHARS = 500
MAX_SHELVE = dt.timedelta(days=7)

_COLUMNS = """a.id, a.org_id, a.rule_pk, a.rule, a.rule_display_name, a.kind, a.source, a.site, a.severity,
    a.value, a.unit,
    a.message, a.remediation_steps, a.allow_manual_clear, a.raise_time, a.acknowledge_time, a.acknowledged_by,
    a.shelve_until_time, a.clear_time, a.cleared_by, a.update_time, a.escalate_time, a.proposed_commands"""


def alarm_name(org: str, alarm_id: uuid.UUID) -> str:
    return f"organizations/{org}/alarms/{alarm_id}"


def parse_alarm_name(name: str, field: str = "name") -> tuple[str, uuid.UUID]:
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "organizations" or parts[2] != "alarms" or not ID_PATTERN.match(parts[1]):
        raise invalid_field(field, f"{name!r} is not organizations/{{organization}}/alarms/{{alarm}}")
    try:
        return parts[1], uuid.UUID(parts[3])
    except ValueError:
        raise invalid_field(field, f"{name!r} does not end in an alarm id") from None


def check_note(note: str) -> None:
    if len(note) > MAX_NOTE_CHARS:
        raise invalid_field("note", f"at most {MAX_NOTE_CHARS} characters")


def state_of(row: asyncpg.Record, now: dt.datetime) -> int:
    if row["clear_time"] is not None:
        return pb.ALARM_STATE_CLEARED
    if row["shelve_until_time"] is not None and row["shelve_until_time"] > now:
        return pb.ALARM_STATE_SHELVED
    if row["acknowledge_time"] is not None:
        return pb.ALARM_STATE_ACKNOWLEDGED
    return pb.ALARM_STATE_ACTIVE


def to_message(row: asyncpg.Record, now: dt.datetime) -> pb.Alarm:
    alarm = pb.Alarm(
        name=alarm_name(row["org_id"], row["id"]),
        rule=row["rule"],
        rule_display_name=row["rule_display_name"],
        kind=row["kind"],
        source=row["source"],
        site=row["site"],
        state=state_of(row, now),  # type: ignore[arg-type]
        severity=row["severity"],
        unit=row["unit"],
        message=row["message"],
        remediation_steps=list(row["remediation_steps"]),
        raise_time=timestamp(row["raise_time"]),
        acknowledged_by=row["acknowledged_by"],
        cleared_by=row["cleared_by"],
        update_time=timestamp(row["update_time"]),
    )
    if row["value"] is not None:
        alarm.value = row["value"]
    alarm.proposed_commands.extend(pb.ProposedCommand.FromString(bytes(c)) for c in row["proposed_commands"])
    for field in ("acknowledge_time", "shelve_until_time", "clear_time", "escalate_time"):
        if row[field] is not None:
            getattr(alarm, field).CopyFrom(timestamp(row[field]))
    return alarm


def transition_message(row: asyncpg.Record) -> pb.AlarmTransition:
    t = pb.AlarmTransition(
        kind=row["kind"], time=timestamp(row["time"]), actor=row["actor"], severity=row["severity"], note=row["note"]
    )
    if row["value"] is not None:
        t.value = row["value"]
    return t


@dataclass(frozen=True)
class NewAlarm:
    """What the engine knows when a condition has held long enough."""

    org: str
    rule_pk: int
    rule: str
    rule_display_name: str
    kind: int
    source: str
    site: str
    severity: int
    value: float | None
    unit: str
    message: str
    remediation_steps: Sequence[str]
    allow_manual_clear: bool
    escalate_after: dt.timedelta | None = None
    proposed_commands: Sequence[pb.ProposedCommand] = ()
    notification_channels: Sequence[str] = ()  # channel ids of the alarm's organization


async def record(
    conn: Conn,
    org: str,
    alarm_id: uuid.UUID,
    kind: int,
    time: dt.datetime,
    actor: str,
    severity: int,
    value: float | None = None,
    note: str = "",
) -> None:
    """One transition, its announcement, and one delivery per notification channel of the alarm whose
    min_severity the severity reaches (call inside the transaction that changed the alarm, so what is
    announced and sent is exactly what committed)."""
    seq = await conn.fetchval(
        """WITH t AS (
               INSERT INTO alarm.transitions (alarm_id, kind, time, actor, severity, value, note)
               VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq
           ), d AS (
               INSERT INTO alarm.deliveries (channel_pk, transition_seq)
               SELECT c.pk, t.seq FROM t, alarm.alarms a
               JOIN alarm.notification_channels c ON c.org_id = a.org_id AND c.channel_id = ANY(a.notification_channels)
               WHERE a.id = $1 AND $5 >= c.min_severity
           )
           SELECT seq FROM t""",
        alarm_id,
        kind,
        time,
        actor,
        severity,
        value,
        note,
    )
    payload = json.dumps({"org": org, "alarm": str(alarm_id), "seq": int(seq)})
    await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, payload)


async def raise_alarm(conn: Conn, new: NewAlarm, time: dt.datetime, note: str) -> uuid.UUID | None:
    """Opens the alarm; None when the rule already has an open alarm for this source (no floods)."""
    alarm_id = uuid.uuid4()
    inserted = await conn.fetchval(
        """INSERT INTO alarm.alarms (id, org_id, rule_pk, rule, rule_display_name, kind, source, site, severity,
               value, unit, message, remediation_steps, allow_manual_clear, raise_time, update_time,
               escalate_after, proposed_commands, notification_channels)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15, $16, $17, $18)
           ON CONFLICT (rule_pk, source) WHERE clear_time IS NULL DO NOTHING RETURNING id""",
        alarm_id,
        new.org,
        new.rule_pk,
        new.rule,
        new.rule_display_name,
        new.kind,
        new.source,
        new.site,
        new.severity,
        new.value,
        new.unit,
        new.message,
        list(new.remediation_steps),
        new.allow_manual_clear,
        time,
        new.escalate_after,
        [c.SerializeToString(deterministic=True) for c in new.proposed_commands],
        list(new.notification_channels),
    )
    if inserted is None:
        return None
    await record(
        conn, new.org, alarm_id, pb.ALARM_TRANSITION_KIND_RAISED, time, ENGINE_ACTOR, new.severity, new.value, note
    )
    return alarm_id


async def open_alarm(conn: Conn, rule_pk: int, source: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM alarm.alarms a WHERE rule_pk = $1 AND source = $2 AND clear_time IS NULL FOR UPDATE",
        rule_pk,
        source,
    )


async def change_severity(
    conn: Conn, row: asyncpg.Record, severity: int, value: float | None, message: str, time: dt.datetime, note: str
) -> None:
    kind = pb.ALARM_TRANSITION_KIND_ESCALATED if severity > row["severity"] else pb.ALARM_TRANSITION_KIND_DEESCALATED
    await conn.execute(
        "UPDATE alarm.alarms SET severity = $2, value = $3, message = $4, update_time = $5 WHERE id = $1",
        row["id"],
        severity,
        value,
        message,
        time,
    )
    await record(conn, row["org_id"], row["id"], kind, time, ENGINE_ACTOR, severity, value, note)


async def close(
    conn: Conn, row: asyncpg.Record, actor: str, time: dt.datetime, value: float | None = None, note: str = ""
) -> None:
    await conn.execute(
        """UPDATE alarm.alarms SET clear_time = $2, cleared_by = $3, update_time = $2,
               value = coalesce($4, value) WHERE id = $1""",
        row["id"],
        time,
        actor,
        value,
    )
    await record(
        conn, row["org_id"], row["id"], pb.ALARM_TRANSITION_KIND_CLEARED, time, actor, row["severity"], value, note
    )


async def update_open_values(conn: Conn, values: Sequence[tuple[int, str, float]]) -> None:
    """The newest judged value of the open alarms of these (rule_pk, source), in one statement."""
    if not values:
        return
    await conn.execute(
        """UPDATE alarm.alarms a SET value = v.value
           FROM unnest($1::bigint[], $2::text[], $3::float8[]) AS v(rule_pk, source, value)
           WHERE a.rule_pk = v.rule_pk AND a.source = v.source AND a.clear_time IS NULL""",
        [v[0] for v in values],
        [v[1] for v in values],
        [v[2] for v in values],
    )


async def close_open_of_rule(conn: Conn, rule_pk: int, actor: str, note: str) -> None:
    now = dt.datetime.now(dt.UTC)
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM alarm.alarms a WHERE rule_pk = $1 AND clear_time IS NULL FOR UPDATE", rule_pk
    )
    for row in rows:
        await close(conn, row, actor, now, note=note)


async def unshelve_due(conn: Conn, now: dt.datetime) -> int:
    """Ends the shelving whose time passed, one UNSHELVED transition each."""
    rows = await conn.fetch(
        """UPDATE alarm.alarms SET shelve_until_time = NULL, update_time = $1
           WHERE shelve_until_time <= $1 AND clear_time IS NULL RETURNING id, org_id, severity""",
        now,
    )
    for r in rows:
        await record(conn, r["org_id"], r["id"], pb.ALARM_TRANSITION_KIND_UNSHELVED, now, ENGINE_ACTOR, r["severity"])
    return len(rows)


async def escalate_due(conn: Conn, now: dt.datetime) -> int:
    """Marks the open alarms nobody acknowledged within their escalate_after (shelved ones wait until
    they are unshelved), one UNACKNOWLEDGED_ESCALATED transition each; returns how many."""
    rows = await conn.fetch(
        """UPDATE alarm.alarms SET escalate_time = $1, update_time = $1
           WHERE clear_time IS NULL AND acknowledge_time IS NULL AND escalate_time IS NULL
             AND escalate_after IS NOT NULL AND raise_time + escalate_after <= $1
             AND (shelve_until_time IS NULL OR shelve_until_time <= $1)
           RETURNING id, org_id, severity, raise_time""",
        now,
    )
    for r in rows:
        minutes = (now - r["raise_time"]).total_seconds() / 60
        note = f"not acknowledged {minutes:.0f} min after it was raised"
        await record(
            conn,
            r["org_id"],
            r["id"],
            pb.ALARM_TRANSITION_KIND_UNACKNOWLEDGED_ESCALATED,
            now,
            ENGINE_ACTOR,
            r["severity"],
            note=note,
        )
    return len(rows)


async def command_sent(conn: Conn, org: str, alarm_id: uuid.UUID, actor: str, command: str, title: str) -> pb.Alarm:
    row = await get(conn, org, alarm_id, for_update=True)
    now = dt.datetime.now(dt.UTC)
    await conn.execute("UPDATE alarm.alarms SET update_time = $2 WHERE id = $1", alarm_id, now)
    note = f"{title}: {command}"[:MAX_NOTE_CHARS]
    await record(conn, org, alarm_id, pb.ALARM_TRANSITION_KIND_COMMAND_SENT, now, actor, row["severity"], note=note)
    return await with_transitions(conn, await get(conn, org, alarm_id))


def cleared_conflict(row: asyncpg.Record) -> ApiError:
    return _cleared(row)


# ------------------------------------------------------------------------------------------ reads


async def get(conn: Conn, org: str, alarm_id: uuid.UUID, *, for_update: bool = False) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM alarm.alarms a WHERE org_id = $1 AND id = $2" + (" FOR UPDATE" if for_update else ""),
        org,
        alarm_id,
    )
    if row is None:
        raise not_found(alarm_name(org, alarm_id))
    return row


async def with_transitions(conn: Conn, row: asyncpg.Record) -> pb.Alarm:
    now = dt.datetime.now(dt.UTC)
    alarm = to_message(row, now)
    for t in await conn.fetch(
        "SELECT kind, time, actor, severity, value, note FROM alarm.transitions WHERE alarm_id = $1 ORDER BY seq",
        row["id"],
    ):
        alarm.transitions.append(transition_message(t))
    return alarm


@dataclass(frozen=True)
class AlarmFilter:
    states: frozenset[int]
    min_severity: int
    site: str
    rule: str
    raised_after: dt.datetime | None


async def list_alarms(conn: Conn, org: str, f: AlarmFilter, offset: int, limit: int) -> list[pb.Alarm]:
    now = dt.datetime.now(dt.UTC)
    want_open = bool(f.states - {pb.ALARM_STATE_CLEARED})
    want_cleared = pb.ALARM_STATE_CLEARED in f.states
    # The state is derived (a shelve time in the past means not shelved), so SQL narrows to open or
    # cleared and the exact states are picked here; the page is counted after that choice.
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM alarm.alarms a
           WHERE org_id = $1 AND ($2 OR clear_time IS NULL) AND ($3 OR clear_time IS NOT NULL)
             AND severity >= $4 AND ($5 = '' OR site = $5) AND ($6 = '' OR rule = $6)
             AND ($7::timestamptz IS NULL OR raise_time >= $7)
           ORDER BY raise_time DESC, id""",
        org,
        want_cleared,
        want_open,
        f.min_severity,
        f.site,
        f.rule,
        f.raised_after,
    )
    chosen = [r for r in rows if state_of(r, now) in f.states]
    return [to_message(r, now) for r in chosen[offset : offset + limit]]


async def change_of(conn: Conn, alarm_id: uuid.UUID, seq: int) -> pb.AlarmChange | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM alarm.alarms a WHERE id = $1", alarm_id)
    t = await conn.fetchrow(
        "SELECT kind, time, actor, severity, value, note FROM alarm.transitions WHERE seq = $1 AND alarm_id = $2",
        seq,
        alarm_id,
    )
    if row is None or t is None:
        return None
    return pb.AlarmChange(alarm=to_message(row, dt.datetime.now(dt.UTC)), transition=transition_message(t))


# ------------------------------------------------------------------------------------- operators


def _cleared(row: asyncpg.Record) -> ApiError:
    name = alarm_name(row["org_id"], row["id"])
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        errors_pb2.ERROR_REASON_STATE_CONFLICT,
        f"{name} is cleared already",
        metadata={"resource": name},
    )


async def acknowledge(conn: Conn, org: str, alarm_id: uuid.UUID, actor: str, note: str) -> pb.Alarm:
    row = await get(conn, org, alarm_id, for_update=True)
    if row["clear_time"] is not None:
        raise _cleared(row)
    if row["acknowledge_time"] is None:
        now = dt.datetime.now(dt.UTC)
        await conn.execute(
            "UPDATE alarm.alarms SET acknowledge_time = $2, acknowledged_by = $3, update_time = $2 WHERE id = $1",
            alarm_id,
            now,
            actor,
        )
        await record(conn, org, alarm_id, pb.ALARM_TRANSITION_KIND_ACKNOWLEDGED, now, actor, row["severity"], note=note)
    return await with_transitions(conn, await get(conn, org, alarm_id))


async def shelve(conn: Conn, org: str, alarm_id: uuid.UUID, until: dt.datetime, actor: str, note: str) -> pb.Alarm:
    row = await get(conn, org, alarm_id, for_update=True)
    if row["clear_time"] is not None:
        raise _cleared(row)
    now = dt.datetime.now(dt.UTC)
    await conn.execute(
        "UPDATE alarm.alarms SET shelve_until_time = $2, update_time = $3 WHERE id = $1", alarm_id, until, now
    )
    note = note or f"shelved until {until.isoformat()}"
    await record(conn, org, alarm_id, pb.ALARM_TRANSITION_KIND_SHELVED, now, actor, row["severity"], note=note)
    return await with_transitions(conn, await get(conn, org, alarm_id))


async def clear(conn: Conn, org: str, alarm_id: uuid.UUID, actor: str, note: str) -> pb.Alarm:
    row = await get(conn, org, alarm_id, for_update=True)
    if row["clear_time"] is not None:
        raise _cleared(row)
    if not row["allow_manual_clear"]:
        name = alarm_name(org, alarm_id)
        raise ApiError(
            grpc.StatusCode.FAILED_PRECONDITION,
            errors_pb2.ERROR_REASON_ALARM_NOT_CLEARABLE,
            f"{name}: its rule {row['rule']} does not allow a manual clear; it clears when its condition ends",
            metadata={"resource": name, "rule": row["rule"]},
        )
    await close(conn, row, actor, dt.datetime.now(dt.UTC), note=note)
    # Re-armed: a condition that still holds opens a new alarm after the rule's hold time.
    await conn.execute(
        """UPDATE alarm.rule_state SET level = 0, warn_since = NULL, critical_since = NULL
           WHERE rule_pk = $1 AND source = $2""",
        row["rule_pk"],
        row["source"],
    )
    # The engine keeps judgements in memory between passes: this tells it to read them again. Last, as
    # in an engine pass (alarm rows, then judgements, then the counter), so the two never deadlock.
    await conn.execute("UPDATE alarm.engine_generation SET generation = generation + 1")
    return await with_transitions(conn, await get(conn, org, alarm_id))
