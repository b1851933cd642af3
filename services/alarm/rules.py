"""Alarm rules: validation, storage and mapping. A rule is stored as the accepted AlarmRule message
plus the columns the engine and the lists select on (services/migrations/0016_alarm.sql)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import grpc
from emma.alarm.v1 import alarm_pb2 as pb
from emma.common.v1 import errors_pb2
from google.protobuf import field_mask_pb2

from services.errors import ApiError, invalid_field, not_found
from services.market import zone_eic
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
MIN_ESCALATE = dt.timedelta(seconds=60)
MAX_FAULT_CODES = 100
MAX_PROPOSED_COMMANDS = 10
MAX_TITLE_CHARS = 200
MAX_COMMAND_TTL = dt.timedelta(days=1)
MAX_NOTIFICATION_CHANNELS = 10
# "device/Channel" inside the alarm's edge, or "Channel" of the alarm's own device.
_COMMAND_CHANNEL = re.compile(r"^[A-Za-z0-9_.-]{1,100}(/[A-Za-z0-9_.-]{1,100})?$")

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
    "fault_codes",
    "escalate_after",
    "proposed_commands",
    "notification_channels",
)
_REPEATED = ("remediation_steps", "fault_codes", "proposed_commands", "notification_channels")
_MESSAGES = ("levels", "stale_after", "offline_after", "escalate_after")
_CHANNEL_KINDS = (
    pb.ALARM_RULE_KIND_THRESHOLD,
    pb.ALARM_RULE_KIND_STALE_DATA,
    pb.ALARM_RULE_KIND_RATE_OF_CHANGE,
    pb.ALARM_RULE_KIND_DEVICE_FAULT,
)
# Kinds whose `levels` are judged (on the value, or on its rate per minute).
LEVEL_KINDS = (pb.ALARM_RULE_KIND_THRESHOLD, pb.ALARM_RULE_KIND_RATE_OF_CHANGE)


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
    if rule.kind in LEVEL_KINDS:
        _check_levels(rule.levels)
    elif rule.HasField("levels"):
        raise invalid_field("alarm_rule.levels", "only THRESHOLD and RATE_OF_CHANGE rules have levels")
    _check_faults(rule)
    _check_actions(rule, org)
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
    if rule.bidding_zone and zone_eic(rule.bidding_zone) is None:
        raise invalid_field(
            "alarm_rule.bidding_zone", f"{rule.bidding_zone!r} is no bidding zone (a short name like DE-LU, or an EIC)"
        )


def _check_faults(rule: pb.AlarmRule) -> None:
    if rule.kind != pb.ALARM_RULE_KIND_DEVICE_FAULT:
        if rule.fault_codes:
            raise invalid_field("alarm_rule.fault_codes", "only a DEVICE_FAULT rule has fault codes")
        return
    if len(rule.fault_codes) > MAX_FAULT_CODES:
        raise invalid_field("alarm_rule.fault_codes", f"at most {MAX_FAULT_CODES} codes")
    seen: set[int] = set()
    for i, fault in enumerate(rule.fault_codes):
        field = f"alarm_rule.fault_codes[{i}]"
        if fault.code == 0:
            raise invalid_field(f"{field}.code", "0 means no fault; a fault code is non-zero")
        if fault.code in seen:
            raise invalid_field(f"{field}.code", f"code {fault.code} is listed twice")
        seen.add(fault.code)
        if len(fault.description) > MAX_TITLE_CHARS:
            raise invalid_field(f"{field}.description", f"at most {MAX_TITLE_CHARS} characters")


def _check_actions(rule: pb.AlarmRule, org: str) -> None:
    """Escalation, proposed commands and notification channels (their existence: check_targets)."""
    if rule.HasField("escalate_after"):
        after = rule.escalate_after.ToTimedelta()
        if not MIN_ESCALATE <= after <= MAX_WINDOW:
            raise invalid_field(
                "alarm_rule.escalate_after",
                f"must be between {int(MIN_ESCALATE.total_seconds())}s and {int(MAX_WINDOW.total_seconds())}s",
            )
    if rule.proposed_commands and rule.kind not in _CHANNEL_KINDS:
        raise invalid_field(
            "alarm_rule.proposed_commands", "only rules on a device's channel have a device to send a command to"
        )
    if len(rule.proposed_commands) > MAX_PROPOSED_COMMANDS:
        raise invalid_field("alarm_rule.proposed_commands", f"at most {MAX_PROPOSED_COMMANDS} commands")
    for i, command in enumerate(rule.proposed_commands):
        field = f"alarm_rule.proposed_commands[{i}]"
        if not command.title.strip() or len(command.title) > MAX_TITLE_CHARS:
            raise invalid_field(f"{field}.title", f"1 to {MAX_TITLE_CHARS} characters")
        if not _COMMAND_CHANNEL.match(command.channel):
            raise invalid_field(f"{field}.channel", f'{command.channel!r} is not "device/Channel" or "Channel"')
        if command.HasField("ttl") and not dt.timedelta(seconds=1) <= command.ttl.ToTimedelta() <= MAX_COMMAND_TTL:
            raise invalid_field(f"{field}.ttl", "must be between 1s and 86400s")
    if len(rule.notification_channels) > MAX_NOTIFICATION_CHANNELS:
        raise invalid_field("alarm_rule.notification_channels", f"at most {MAX_NOTIFICATION_CHANNELS} channels")
    for i, name in enumerate(rule.notification_channels):
        channel_org, _ = parse_channel_name(name, f"alarm_rule.notification_channels[{i}]")
        if channel_org != org:
            raise not_found(name)


def channel_name(org: str, channel_id: str) -> str:
    return f"organizations/{org}/notificationChannels/{channel_id}"


def parse_channel_name(name: str, field: str = "name") -> tuple[str, str]:
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "organizations" or parts[2] != "notificationChannels":
        raise invalid_field(
            field, f"{name!r} is not organizations/{{organization}}/notificationChannels/{{notification_channel}}"
        )
    if not ID_PATTERN.match(parts[1]) or not ID_PATTERN.match(parts[3]):
        raise invalid_field(field, f"{name!r} has an id that is not 1-63 lowercase letters, digits and hyphens")
    return parts[1], parts[3]


async def check_targets(conn: Conn, rule: pb.AlarmRule) -> None:
    """The rule's channel or edge must be an edge of the organization (RESOURCE_NOT_FOUND otherwise)."""
    if rule.channel and await edge_pk(conn, parse_channel(rule.channel, "alarm_rule.channel").edge) is None:
        raise not_found(rule.channel)
    if rule.edge and await edge_pk(conn, parse_edge(rule.edge, "alarm_rule.edge")) is None:
        raise not_found(rule.edge)
    if rule.notification_channels:
        ids = [parse_channel_name(n)[1] for n in rule.notification_channels]
        org = parse_channel_name(rule.notification_channels[0])[0]
        found = {
            r["channel_id"]
            for r in await conn.fetch(
                "SELECT channel_id FROM alarm.notification_channels WHERE org_id = $1 AND channel_id = ANY($2::text[])",
                org,
                ids,
            )
        }
        for i, (name, channel_id) in enumerate(zip(rule.notification_channels, ids, strict=True)):
            if channel_id not in found:
                raise invalid_field(f"alarm_rule.notification_channels[{i}]", f"{name} does not exist")


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
        if path in _MESSAGES:
            out.ClearField(path)  # type: ignore[arg-type]
            if patch.HasField(path):  # type: ignore[arg-type]
                getattr(out, path).CopyFrom(getattr(patch, path))
        elif path in _REPEATED:
            out.ClearField(path)  # type: ignore[arg-type]
            getattr(out, path).extend(getattr(patch, path))
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


async def enabled_rule_versions(conn: Conn, kinds: Sequence[int]) -> dict[int, dt.datetime]:
    """pk -> update_time of every enabled rule of these kinds (the engine re-reads only what changed)."""
    rows = await conn.fetch(
        "SELECT pk, update_time FROM alarm.rules WHERE enabled AND kind = ANY($1::smallint[])", list(kinds)
    )
    return {int(r["pk"]): r["update_time"] for r in rows}


async def rules_by_pk(conn: Conn, pks: Sequence[int]) -> list[StoredRule]:
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM alarm.rules WHERE pk = ANY($1::bigint[])", list(pks))
    return [_stored(r) for r in rows]
