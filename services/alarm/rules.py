"""Alarm rules: validation, storage and mapping. A rule is stored as the accepted AlarmRule message
plus the columns the engine and the lists select on (services/migrations/0016_alarm.sql)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import grpc
from emma.alarm.v1 import alarm_pb2 as pb
from emma.common.v1 import errors_pb2
from google.protobuf import field_mask_pb2

from services.errors import ApiError, invalid_field, not_found
from services.names import ID_PATTERN, parse_channel, parse_edge
from services.platform.migrations import Conn
from services.platform.rpc import timestamp
from services.registry import edge_pk

MAX_DISPLAY_NAME = 200
MAX_TYPE_CHARS = 100
MAX_ZONE_CHARS = 20
MAX_REMEDIATION_STEPS = 20
MAX_REMEDIATION_CHARS = 500
MAX_HOLD = dt.timedelta(days=1)
MIN_WINDOW = dt.timedelta(seconds=10)
MAX_WINDOW = dt.timedelta(days=7)

# Fields UpdateAlarmRule may change; kind and target are IMMUTABLE in the contract.
UPDATABLE = (
    "display_name",
    "levels",
    "stale_after",
    "offline_after",
    "severity",
    "allow_manual_clear",
    "remediation_steps",
    "enabled",
)
_CHANNEL_KINDS = (pb.ALARM_RULE_KIND_THRESHOLD, pb.ALARM_RULE_KIND_STALE_DATA)


def crossed(field: str, description: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        errors_pb2.ERROR_REASON_ALARM_THRESHOLDS_CROSSED,
        f"alarm_rule.levels.{field}: {description}",
        metadata={"field": f"alarm_rule.levels.{field}"},
        field_violations=[(f"alarm_rule.levels.{field}", description)],
    )


def rule_name(org: str, rule_id: str) -> str:
    return f"organizations/{org}/alarmRules/{rule_id}"


def parse_rule_name(name: str, field: str = "name") -> tuple[str, str]:
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "organizations" or parts[2] != "alarmRules":
        raise invalid_field(field, f"{name!r} is not organizations/{{organization}}/alarmRules/{{alarm_rule}}")
    if not ID_PATTERN.match(parts[1]) or not ID_PATTERN.match(parts[3]):
        raise invalid_field(field, f"{name!r} has an id that is not 1-63 lowercase letters, digits and hyphens")
    return parts[1], parts[3]


def _check_levels(levels: pb.ThresholdLevels) -> None:
    """Warning levels inside their critical ones, every low level below every high level."""
    set_ = {
        f: getattr(levels, f) for f in ("warn_high", "critical_high", "warn_low", "critical_low") if levels.HasField(f)
    }
    if not set_:
        raise invalid_field(
            "alarm_rule.levels",
            "a THRESHOLD rule needs at least one of warn_high, critical_high, warn_low, critical_low",
        )
    if "warn_high" in set_ and "critical_high" in set_ and set_["warn_high"] > set_["critical_high"]:
        raise crossed("warn_high", f"{set_['warn_high']} is above critical_high {set_['critical_high']}")
    if "warn_low" in set_ and "critical_low" in set_ and set_["warn_low"] < set_["critical_low"]:
        raise crossed("warn_low", f"{set_['warn_low']} is below critical_low {set_['critical_low']}")
    highs = [set_[f] for f in ("warn_high", "critical_high") if f in set_]
    lows = [set_[f] for f in ("warn_low", "critical_low") if f in set_]
    if highs and lows and max(lows) >= min(highs):
        raise crossed(
            "warn_low" if "warn_low" in set_ else "critical_low",
            f"low level {max(lows)} is not below high level {min(highs)}",
        )
    if levels.hysteresis < 0:
        raise invalid_field("alarm_rule.levels.hysteresis", "must not be negative")
    hold = levels.hold_duration.ToTimedelta()
    if not dt.timedelta(0) <= hold <= MAX_HOLD:
        raise invalid_field(
            "alarm_rule.levels.hold_duration", f"must be between 0s and {int(MAX_HOLD.total_seconds())}s"
        )


def _window(rule: pb.AlarmRule, field: str) -> None:
    if not rule.HasField(field):  # type: ignore[arg-type]
        raise invalid_field(f"alarm_rule.{field}", f"required for a {pb.AlarmRuleKind.Name(rule.kind)} rule")
    value = getattr(rule, field).ToTimedelta()
    if not MIN_WINDOW <= value <= MAX_WINDOW:
        raise invalid_field(
            f"alarm_rule.{field}",
            f"must be between {int(MIN_WINDOW.total_seconds())}s and {int(MAX_WINDOW.total_seconds())}s",
        )


def check_rule(rule: pb.AlarmRule, org: str) -> None:
    """Everything about a rule that needs no database; raises ApiError naming the field."""
    if not rule.display_name.strip() or len(rule.display_name) > MAX_DISPLAY_NAME:
        raise invalid_field("alarm_rule.display_name", f"required, at most {MAX_DISPLAY_NAME} characters")
    if rule.kind == pb.ALARM_RULE_KIND_UNSPECIFIED:
        raise invalid_field("alarm_rule.kind", "required")
    if len(rule.remediation_steps) > MAX_REMEDIATION_STEPS:
        raise invalid_field("alarm_rule.remediation_steps", f"at most {MAX_REMEDIATION_STEPS} steps")
    for i, step in enumerate(rule.remediation_steps):
        if not step.strip() or len(step) > MAX_REMEDIATION_CHARS:
            raise invalid_field(f"alarm_rule.remediation_steps[{i}]", f"1 to {MAX_REMEDIATION_CHARS} characters")
    if rule.kind in _CHANNEL_KINDS:
        if rule.channel:
            if rule.device_type or rule.channel_id:
                raise invalid_field("alarm_rule.channel", "set either channel or device_type with channel_id, not both")
            channel = parse_channel(rule.channel, "alarm_rule.channel")
            if channel.edge.org != org:
                # Another tenant's channel is answered as missing, so its names do not leak.
                raise not_found(rule.channel)
        elif not rule.device_type or not rule.channel_id:
            raise invalid_field("alarm_rule.channel", "set channel, or device_type and channel_id")
        elif len(rule.device_type) > MAX_TYPE_CHARS or len(rule.channel_id) > MAX_TYPE_CHARS:
            raise invalid_field(
                "alarm_rule.device_type", f"device_type and channel_id at most {MAX_TYPE_CHARS} characters"
            )
    elif rule.channel or rule.device_type or rule.channel_id:
        raise invalid_field("alarm_rule.channel", f"not used by a {pb.AlarmRuleKind.Name(rule.kind)} rule")
    if rule.kind == pb.ALARM_RULE_KIND_THRESHOLD:
        _check_levels(rule.levels)
    elif rule.HasField("levels"):
        raise invalid_field("alarm_rule.levels", "only a THRESHOLD rule has levels")
    if rule.kind == pb.ALARM_RULE_KIND_STALE_DATA:
        _window(rule, "stale_after")
    if rule.kind == pb.ALARM_RULE_KIND_EDGE_OFFLINE:
        _window(rule, "offline_after")
        if rule.edge and parse_edge(rule.edge, "alarm_rule.edge").org != org:
            raise not_found(rule.edge)
    elif rule.edge:
        raise invalid_field("alarm_rule.edge", "only an EDGE_OFFLINE rule names an edge")
    if rule.kind != pb.ALARM_RULE_KIND_MARKET_WARNING and rule.bidding_zone:
        raise invalid_field("alarm_rule.bidding_zone", "only a MARKET_WARNING rule names a bidding zone")
    if len(rule.bidding_zone) > MAX_ZONE_CHARS:
        raise invalid_field("alarm_rule.bidding_zone", f"at most {MAX_ZONE_CHARS} characters")


async def check_targets(conn: Conn, rule: pb.AlarmRule) -> None:
    """The rule's channel or edge must be an edge of the organization (RESOURCE_NOT_FOUND otherwise)."""
    if rule.channel and await edge_pk(conn, parse_channel(rule.channel, "alarm_rule.channel").edge) is None:
        raise not_found(rule.channel)
    if rule.edge and await edge_pk(conn, parse_edge(rule.edge, "alarm_rule.edge")) is None:
        raise not_found(rule.edge)


@dataclass(frozen=True)
class StoredRule:
    pk: int
    org: str
    rule: pb.AlarmRule


def _stored(r: asyncpg.Record) -> StoredRule:
    rule = pb.AlarmRule.FromString(bytes(r["spec"]))
    rule.name = rule_name(r["org_id"], r["rule_id"])
    rule.create_time.CopyFrom(timestamp(r["create_time"]))
    rule.update_time.CopyFrom(timestamp(r["update_time"]))
    return StoredRule(int(r["pk"]), str(r["org_id"]), rule)


def _spec(rule: pb.AlarmRule) -> bytes:
    spec = pb.AlarmRule()
    spec.CopyFrom(rule)
    for output in ("name", "create_time", "update_time"):
        spec.ClearField(output)
    if spec.severity == pb.ALARM_SEVERITY_UNSPECIFIED:
        spec.severity = pb.ALARM_SEVERITY_WARNING
    return spec.SerializeToString(deterministic=True)


_COLUMNS = "pk, org_id, rule_id, spec, create_time, update_time"


async def create(conn: Conn, org: str, rule_id: str, rule: pb.AlarmRule) -> pb.AlarmRule:
    row = await conn.fetchrow(
        f"""INSERT INTO alarm.rules (org_id, rule_id, kind, enabled, spec) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (org_id, rule_id) DO NOTHING RETURNING {_COLUMNS}""",
        org,
        rule_id,
        rule.kind,
        rule.enabled,
        _spec(rule),
    )
    if row is None:
        name = rule_name(org, rule_id)
        raise ApiError(
            grpc.StatusCode.ALREADY_EXISTS,
            errors_pb2.ERROR_REASON_RESOURCE_EXISTS,
            f"{name} exists already",
            metadata={"resource": name},
        )
    return _stored(row).rule


async def get(conn: Conn, org: str, rule_id: str, *, for_update: bool = False) -> StoredRule:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM alarm.rules WHERE org_id = $1 AND rule_id = $2"
        + (" FOR UPDATE" if for_update else ""),
        org,
        rule_id,
    )
    if row is None:
        raise not_found(rule_name(org, rule_id))
    return _stored(row)


async def list_rules(conn: Conn, org: str, offset: int, limit: int) -> list[pb.AlarmRule]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM alarm.rules WHERE org_id = $1 ORDER BY rule_id OFFSET $2 LIMIT $3", org, offset, limit
    )
    return [_stored(r).rule for r in rows]


def merged(current: pb.AlarmRule, patch: pb.AlarmRule, mask: field_mask_pb2.FieldMask) -> pb.AlarmRule:
    """`current` with the masked fields of `patch`; an immutable field in the mask is refused."""
    paths = list(mask.paths)
    if not paths or paths == ["*"]:
        paths = list(UPDATABLE)
    out = pb.AlarmRule()
    out.CopyFrom(current)
    for path in paths:
        if path not in UPDATABLE:
            raise invalid_field("update_mask", f"{path!r} cannot be updated; updatable: {', '.join(UPDATABLE)}")
        if path in ("levels", "stale_after", "offline_after"):
            out.ClearField(path)  # type: ignore[arg-type]
            if patch.HasField(path):  # type: ignore[arg-type]
                getattr(out, path).CopyFrom(getattr(patch, path))
        elif path == "remediation_steps":
            del out.remediation_steps[:]
            out.remediation_steps.extend(patch.remediation_steps)
        else:
            setattr(out, path, getattr(patch, path))
    return out


async def update(conn: Conn, stored: StoredRule, rule: pb.AlarmRule) -> pb.AlarmRule:
    row = await conn.fetchrow(
        f"""UPDATE alarm.rules SET enabled = $2, spec = $3, update_time = now() WHERE pk = $1 RETURNING {_COLUMNS}""",
        stored.pk,
        rule.enabled,
        _spec(rule),
    )
    assert row is not None  # the caller holds the row locked
    return _stored(row).rule


async def delete(conn: Conn, stored: StoredRule) -> None:
    await conn.execute("DELETE FROM alarm.rules WHERE pk = $1", stored.pk)


async def enabled_rules(conn: Conn, kinds: Sequence[int]) -> list[StoredRule]:
    """Every enabled rule of these kinds, of every organization (what the engine judges)."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM alarm.rules WHERE enabled AND kind = ANY($1::smallint[]) ORDER BY pk", list(kinds)
    )
    return [_stored(r) for r in rows]
