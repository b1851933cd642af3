"""The alarm engine against real ingest: an edge streams through EdgeLink into the real telemetry store,
the engine (a separate worker of the alarm service) judges what committed, and operators act through
AlarmService on a real gRPC server over real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import grpc
import pytest
from emma.alarm.v1 import alarm_pb2 as pb
from emma.alarm.v1 import alarm_pb2_grpc
from google.protobuf import duration_pb2, timestamp_pb2
from grpc_status import rpc_status

from services.errors import error_info_of
from tests.support.cloud import Host, new_edge
from tests.support.edge_client import EdgeStream, batch, welcomed
from tests.support.identity import authed_channel, grant

ACME = "organizations/acme"
STORED = 1  # TELEMETRY_ACK_RESULT_STORED


@pytest.fixture(autouse=True)
def _fast_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    # The hosted process reads its environment when it starts (tests/support/cloud.py).
    monkeypatch.setenv("EMMA_ALARM_INTERVAL_S", "0.05")


async def _error(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    info = error_info_of(status)
    assert info is not None
    return caught.value.code(), info.reason, dict(info.metadata)


async def _until(check: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def _channel(edge: str, address: str) -> str:
    device, channel = address.split("/")
    return f"{edge}/devices/{device}/channels/{channel}"


async def _send(stream: EdgeStream, seq: int, base: float, points: list[tuple[int, int, float]]) -> None:
    await stream.send(batch(seq, base, points))
    ack = await stream.recv_ack()
    assert ack.result == STORED, ack


def _kinds(alarm: pb.Alarm) -> list[str]:
    return [pb.AlarmTransitionKind.Name(t.kind).removeprefix("ALARM_TRANSITION_KIND_") for t in alarm.transitions]


async def test_a_value_crossing_warning_then_critical_is_acknowledged_and_clears_with_hysteresis(
    host: Host, db: asyncpg.Connection
) -> None:
    edge, _, key = await new_edge(db, "overheat")
    creds = await grant(db, "acme", "operator")
    soc = _channel(str(edge), "battery_1/Soc")
    async with host(["edge", "alarm"]) as (server, _), authed_channel(server.port, creds.token) as channel:
        api = alarm_pb2_grpc.AlarmServiceStub(channel)
        rule = await api.CreateAlarmRule(
            pb.CreateAlarmRuleRequest(
                parent=ACME,
                alarm_rule_id="soc-high",
                alarm_rule=pb.AlarmRule(
                    display_name="battery too full",
                    kind=pb.ALARM_RULE_KIND_THRESHOLD,
                    channel=soc,
                    levels=pb.ThresholdLevels(
                        warn_high=90, critical_high=95, hysteresis=2, hold_duration=duration_pb2.Duration(seconds=2)
                    ),
                    remediation_steps=["reduce charge power to 50 %"],
                    enabled=True,
                ),
            )
        )
        assert rule.name == f"{ACME}/alarmRules/soc-high"
        watch = api.WatchAlarms(pb.WatchAlarmsRequest(parent=ACME))
        await watch.initial_metadata()
        # The engine has seen the rule (the channel has no sample yet, so it will judge all of them).
        await _until(lambda: db.fetchval("SELECT count(*) FROM alarm.rule_state"))

        stream = await welcomed(server.port, str(edge), key)
        base = time.time() - 120  # sample times a little in the past; offsets are milliseconds
        # 91 % for 1 s is below the 2 s hold: nothing yet.
        await _send(stream, 1, base, [(0, 0, 80.0), (0, 1000, 91.0), (0, 2000, 91.0)])
        await asyncio.sleep(0.3)
        assert not (await api.ListAlarms(pb.ListAlarmsRequest(parent=ACME))).alarms
        # Held for 2 s: a warning opens; the stream sees it.
        await _send(stream, 2, base, [(0, 3000, 91.5)])
        change = await asyncio.wait_for(watch.read(), 10)
        assert change.transition.kind == pb.ALARM_TRANSITION_KIND_RAISED
        assert change.alarm.severity == pb.ALARM_SEVERITY_WARNING
        assert change.alarm.remediation_steps == ["reduce charge power to 50 %"]
        name = change.alarm.name
        # Critical after its own hold; only one alarm for the rule and the channel.
        await _send(stream, 3, base, [(0, 4000, 96.0), (0, 5000, 96.5), (0, 6000, 97.0)])
        alarm = await _until(
            lambda: _if(api.GetAlarm(pb.GetAlarmRequest(name=name)), lambda a: a.severity == pb.ALARM_SEVERITY_CRITICAL)
        )
        assert alarm.value == 97.0 and alarm.unit == "%"
        listed = await api.ListAlarms(pb.ListAlarmsRequest(parent=ACME))
        assert [a.name for a in listed.alarms] == [name]

        acked = await api.AcknowledgeAlarm(pb.AcknowledgeAlarmRequest(name=name, note="on my way"))
        assert acked.state == pb.ALARM_STATE_ACKNOWLEDGED
        assert acked.acknowledged_by == f"users/{creds.user_id}"

        # 94 is below critical but inside the hysteresis (93): still critical. 92.5: back to warning.
        await _send(stream, 4, base, [(0, 7000, 94.0), (0, 8000, 92.5)])
        await _until(
            lambda: _if(api.GetAlarm(pb.GetAlarmRequest(name=name)), lambda a: a.severity == pb.ALARM_SEVERITY_WARNING)
        )
        # 89 is inside the warning's hysteresis (88): still open. 87.5: cleared by the engine.
        await _send(stream, 5, base, [(0, 9000, 89.0)])
        await asyncio.sleep(0.3)
        assert (await api.GetAlarm(pb.GetAlarmRequest(name=name))).state == pb.ALARM_STATE_ACKNOWLEDGED
        await _send(stream, 6, base, [(0, 10000, 87.5)])
        done = await _until(
            lambda: _if(api.GetAlarm(pb.GetAlarmRequest(name=name)), lambda a: a.state == pb.ALARM_STATE_CLEARED)
        )
        assert _kinds(done) == ["RAISED", "ESCALATED", "ACKNOWLEDGED", "DEESCALATED", "CLEARED"]
        actors = [t.actor for t in done.transitions]
        assert actors == ["alarm-engine", "alarm-engine", f"users/{creds.user_id}", "alarm-engine", "alarm-engine"]
        assert done.cleared_by == "alarm-engine"
        assert [t.value for t in done.transitions if t.HasField("value")][:2] == [91.5, 97.0]
        # Acknowledging a cleared alarm is a state conflict.
        code, reason, _ = await _error(api.AcknowledgeAlarm(pb.AcknowledgeAlarmRequest(name=name)))
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "STATE_CONFLICT")
        # The default list holds only open alarms; the cleared one is listed when asked for.
        assert not (await api.ListAlarms(pb.ListAlarmsRequest(parent=ACME))).alarms
        cleared = await api.ListAlarms(pb.ListAlarmsRequest(parent=ACME, states=[pb.ALARM_STATE_CLEARED]))
        assert [a.name for a in cleared.alarms] == [name]
        watch.cancel()
        await stream.close()


async def _if(call: Awaitable[pb.Alarm], ok: Callable[[pb.Alarm], bool]) -> pb.Alarm | None:
    alarm = await call
    return alarm if ok(alarm) else None


async def test_a_stale_channel_raises_an_alarm_that_clears_when_it_reports_again(
    host: Host, db: asyncpg.Connection
) -> None:
    edge, _, key = await new_edge(db, "stale")
    creds = await grant(db, "acme", "operator")
    power = _channel(str(edge), "battery_1/ActivePower")
    async with host(["edge", "alarm"]) as (server, _), authed_channel(server.port, creds.token) as channel:
        api = alarm_pb2_grpc.AlarmServiceStub(channel)
        await api.CreateAlarmRule(
            pb.CreateAlarmRuleRequest(
                parent=ACME,
                alarm_rule_id="power-stale",
                alarm_rule=pb.AlarmRule(
                    display_name="no power readings",
                    kind=pb.ALARM_RULE_KIND_STALE_DATA,
                    channel=power,
                    stale_after=duration_pb2.Duration(seconds=30),
                    severity=pb.ALARM_SEVERITY_CRITICAL,
                    allow_manual_clear=True,
                    enabled=True,
                ),
            )
        )
        stream = await welcomed(server.port, str(edge), key)
        # The newest value is 60 s old: stale.
        await _send(stream, 1, time.time() - 60, [(1, 0, 1500.0)])

        async def open_alarms() -> list[pb.Alarm]:
            return list(
                (await api.ListAlarms(pb.ListAlarmsRequest(parent=ACME, rule=f"{ACME}/alarmRules/power-stale"))).alarms
            )

        [alarm] = await _until(open_alarms)
        assert alarm.kind == pb.ALARM_RULE_KIND_STALE_DATA and alarm.severity == pb.ALARM_SEVERITY_CRITICAL
        assert alarm.source == power and alarm.site == f"{ACME}/sites/stale"
        assert "no value for" in alarm.message
        # Shelved: out of the open list's default states only when asked; still open.
        until = timestamp_pb2.Timestamp(seconds=int(time.time()) + 3600)
        shelved = await api.ShelveAlarm(pb.ShelveAlarmRequest(name=alarm.name, shelve_until_time=until))
        assert shelved.state == pb.ALARM_STATE_SHELVED
        # A fresh value clears it.
        await _send(stream, 2, time.time(), [(1, 0, 1400.0)])
        done = await _until(
            lambda: _if(api.GetAlarm(pb.GetAlarmRequest(name=alarm.name)), lambda a: a.state == pb.ALARM_STATE_CLEARED)
        )
        assert _kinds(done) == ["RAISED", "SHELVED", "CLEARED"]
        await stream.close()


async def test_bad_rules_are_refused_with_clear_errors(host: Host, db: asyncpg.Connection) -> None:
    edge, _, _ = await new_edge(db, "rules")
    await grant(db, "other", "admin")
    creds = await grant(db, "acme", "operator")
    soc = _channel(str(edge), "battery_1/Soc")
    async with host(["alarm"]) as (server, _), authed_channel(server.port, creds.token) as channel:
        api = alarm_pb2_grpc.AlarmServiceStub(channel)

        def create(rule_id: str, **fields: Any) -> Awaitable[pb.AlarmRule]:
            rule = pb.AlarmRule(display_name="r", enabled=True, **fields)
            return api.CreateAlarmRule(pb.CreateAlarmRuleRequest(parent=ACME, alarm_rule_id=rule_id, alarm_rule=rule))

        threshold = pb.ALARM_RULE_KIND_THRESHOLD
        code, reason, meta = await _error(
            create("crossed", kind=threshold, channel=soc, levels=pb.ThresholdLevels(warn_high=96, critical_high=95))
        )
        assert (code, reason, meta["field"]) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "ALARM_THRESHOLDS_CROSSED",
            "alarm_rule.levels.warn_high",
        )
        code, reason, _ = await _error(
            create("lows", kind=threshold, channel=soc, levels=pb.ThresholdLevels(warn_low=50, warn_high=40))
        )
        assert reason == "ALARM_THRESHOLDS_CROSSED"
        foreign = "organizations/other/sites/x/edges/x/devices/battery_1/channels/Soc"
        code, reason, meta = await _error(
            create("foreign", kind=threshold, channel=foreign, levels=pb.ThresholdLevels(warn_high=1))
        )
        assert (code, reason, meta["resource"]) == (grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND", foreign)
        missing = f"{ACME}/sites/nope/edges/nope/devices/battery_1/channels/Soc"
        code, reason, _ = await _error(
            create("missing", kind=threshold, channel=missing, levels=pb.ThresholdLevels(warn_high=1))
        )
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")
        code, reason, meta = await _error(create("nolevels", kind=threshold, channel=soc))
        assert (reason, meta["field"]) == ("FIELD_INVALID", "alarm_rule.levels")
        code, reason, meta = await _error(create("nowindow", kind=pb.ALARM_RULE_KIND_STALE_DATA, channel=soc))
        assert (reason, meta["field"]) == ("FIELD_INVALID", "alarm_rule.stale_after")
        code, reason, meta = await _error(create("Bad_Id", kind=pb.ALARM_RULE_KIND_EDGE_OFFLINE))
        assert (reason, meta["field"]) == ("FIELD_INVALID", "alarm_rule_id")

        # A good rule: created once, updated, listed, deleted.
        made = await create("soc", kind=threshold, channel=soc, levels=pb.ThresholdLevels(warn_high=90))
        code, reason, _ = await _error(
            create("soc", kind=threshold, channel=soc, levels=pb.ThresholdLevels(warn_high=90))
        )
        assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "RESOURCE_EXISTS")
        patch = pb.AlarmRule(name=made.name, levels=pb.ThresholdLevels(warn_high=80, critical_high=79))
        code, reason, _ = await _error(
            api.UpdateAlarmRule(pb.UpdateAlarmRuleRequest(alarm_rule=patch, update_mask={"paths": ["levels"]}))
        )
        assert reason == "ALARM_THRESHOLDS_CROSSED"
        patch.levels.critical_high = 85
        updated = await api.UpdateAlarmRule(
            pb.UpdateAlarmRuleRequest(alarm_rule=patch, update_mask={"paths": ["levels"]})
        )
        assert (updated.levels.warn_high, updated.levels.critical_high, updated.display_name) == (80, 85, "r")
        code, reason, _ = await _error(
            api.UpdateAlarmRule(pb.UpdateAlarmRuleRequest(alarm_rule=patch, update_mask={"paths": ["channel"]}))
        )
        assert reason == "FIELD_INVALID"
        listed = await api.ListAlarmRules(pb.ListAlarmRulesRequest(parent=ACME))
        assert made.name in [r.name for r in listed.alarm_rules]  # with the other tests' rules of acme
        await api.DeleteAlarmRule(pb.DeleteAlarmRuleRequest(name=made.name))
        code, reason, _ = await _error(api.GetAlarmRule(pb.GetAlarmRuleRequest(name=made.name)))
        assert reason == "RESOURCE_NOT_FOUND"
        # Another organization's rules are not visible.
        code, reason, _ = await _error(api.ListAlarmRules(pb.ListAlarmRulesRequest(parent="organizations/other")))
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")


async def test_a_watch_ends_with_aborted_when_the_servers_listen_connection_is_lost(
    host: Host, db: asyncpg.Connection
) -> None:
    # Transitions announced while the server was not listening are gone: the stream ends with an error
    # telling the client to watch again and re-list, instead of going on as if it had missed nothing.
    creds = await grant(db, "acme", "viewer")
    async with host(["alarm"]) as (server, _), authed_channel(server.port, creds.token) as channel:
        watch = alarm_pb2_grpc.AlarmServiceStub(channel).WatchAlarms(pb.WatchAlarmsRequest(parent=ACME))
        await watch.initial_metadata()
        (listener,) = await db.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query = $1",
            'LISTEN "emma_alarm_changes"',
        )
        await db.execute("SELECT pg_terminate_backend($1)", listener["pid"])
        code, reason, _ = await _error(asyncio.wait_for(watch.read(), 10))
        assert (code, reason) == (grpc.StatusCode.ABORTED, "WATCH_INTERRUPTED")
        assert "watch again and re-list" in (await watch.details() or "")
