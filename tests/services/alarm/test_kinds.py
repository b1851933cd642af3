"""Rate of change, device fault codes, escalation when unacknowledged and a command sent from an alarm,
against real ingest (EdgeLink into the real telemetry store) and a real CommandService relaying the
command to the edge's stream."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import grpc
import pytest
from emma.alarm.v1 import alarm_pb2 as pb
from emma.alarm.v1 import alarm_pb2_grpc
from google.protobuf import duration_pb2

from tests.services.alarm.test_engine import _channel, _error, _if, _kinds, _send, _until
from tests.support.cloud import Host, new_edge
from tests.support.edge_client import EdgeStream, battery_inventory, welcomed
from tests.support.identity import authed_channel, grant

ACME = "organizations/acme"
# The channel table of these tests' edges: indexes as the batches use them.
CHANNELS = [
    ("battery_1/CellTemperature", "degC"),
    ("battery_1/Fault", ""),
    ("battery_1/MaxChargePower", "W"),
    ("battery_1/MaxDischargePower", "W"),
]
TEMP, FAULT, MAX_CHARGE, MAX_DISCHARGE = range(4)


@pytest.fixture(autouse=True)
def _fast_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMMA_ALARM_INTERVAL_S", "0.05")


async def _online(port: int, edge: str, key: str) -> EdgeStream:
    return await welcomed(port, edge, key, CHANNELS, devices=[battery_inventory()])


async def test_rate_of_change_and_fault_codes_raise_escalate_and_clear(host: Host, db: asyncpg.Connection) -> None:
    edge, _, key = await new_edge(db, "kinds")
    creds = await grant(db, "acme", "operator")
    async with host(["edge", "alarm"]) as (server, _), authed_channel(server.port, creds.token) as channel:
        api = alarm_pb2_grpc.AlarmServiceStub(channel)
        # Every battery of the edge's driver type ("test"): the rate of its cell temperature.
        await api.CreateAlarmRule(
            pb.CreateAlarmRuleRequest(
                parent=ACME,
                alarm_rule_id="temp-rising",
                alarm_rule=pb.AlarmRule(
                    display_name="cell temperature rising fast",
                    kind=pb.ALARM_RULE_KIND_RATE_OF_CHANGE,
                    device_type="test",
                    channel_id="CellTemperature",
                    levels=pb.ThresholdLevels(warn_high=5, critical_high=20),
                    enabled=True,
                ),
            )
        )
        await api.CreateAlarmRule(
            pb.CreateAlarmRuleRequest(
                parent=ACME,
                alarm_rule_id="bms-fault",
                alarm_rule=pb.AlarmRule(
                    display_name="BMS fault",
                    kind=pb.ALARM_RULE_KIND_DEVICE_FAULT,
                    channel=_channel(str(edge), "battery_1/Fault"),
                    fault_codes=[
                        pb.FaultCode(code=17, description="cell over-temperature", severity=pb.ALARM_SEVERITY_CRITICAL)
                    ],
                    escalate_after=duration_pb2.Duration(seconds=60),
                    remediation_steps=["check the cooling fan"],
                    enabled=True,
                ),
            )
        )
        # Bad rules of these kinds.
        _, reason, meta = await _error(
            api.CreateAlarmRule(
                pb.CreateAlarmRuleRequest(
                    parent=ACME,
                    alarm_rule_id="zero",
                    alarm_rule=pb.AlarmRule(
                        display_name="x",
                        kind=pb.ALARM_RULE_KIND_DEVICE_FAULT,
                        channel=_channel(str(edge), "battery_1/Fault"),
                        fault_codes=[pb.FaultCode(code=0)],
                    ),
                )
            )
        )
        assert (reason, meta["field"]) == ("FIELD_INVALID", "alarm_rule.fault_codes[0].code")
        _, reason, meta = await _error(
            api.CreateAlarmRule(
                pb.CreateAlarmRuleRequest(
                    parent=ACME,
                    alarm_rule_id="soon",
                    alarm_rule=pb.AlarmRule(
                        display_name="x",
                        kind=pb.ALARM_RULE_KIND_RATE_OF_CHANGE,
                        device_type="test",
                        channel_id="CellTemperature",
                        levels=pb.ThresholdLevels(warn_high=30, critical_high=20),
                    ),
                )
            )
        )
        assert reason == "ALARM_THRESHOLDS_CROSSED"

        stream = await _online(server.port, str(edge), key)
        # Once the edge reported its inventory, the engine watches battery_1 of the "test" type.
        await _until(lambda: db.fetchval("SELECT count(*) FROM alarm.rule_state WHERE source LIKE '%CellTemperature'"))
        base = time.time() - 120
        # +1 degC in 60 s is 1 degC/min: fine. +4 degC in 10 s is 24 degC/min: critical.
        await _send(stream, 1, base, [(TEMP, 0, 30.0), (TEMP, 60_000, 31.0)])
        await _send(stream, 2, base, [(TEMP, 70_000, 35.0)])

        async def alarm_of(rule: str) -> pb.Alarm | None:
            found = (await api.ListAlarms(pb.ListAlarmsRequest(parent=ACME, rule=f"{ACME}/alarmRules/{rule}"))).alarms
            return found[0] if found else None

        rising = await _until(lambda: alarm_of("temp-rising"))
        assert rising.severity == pb.ALARM_SEVERITY_CRITICAL and rising.unit == "degC/min"
        assert rising.value == pytest.approx(24.0) and "+24 degC/min" in rising.message
        # Steady again: the rate is 0, the alarm clears.
        await _send(stream, 3, base, [(TEMP, 80_000, 35.0)])
        done = await _until(
            lambda: _if(api.GetAlarm(pb.GetAlarmRequest(name=rising.name)), lambda a: a.state == pb.ALARM_STATE_CLEARED)
        )
        assert _kinds(done) == ["RAISED", "CLEARED"]

        # Fault codes: 5 is not one the rule lists; 17 is, critical, with its description.
        await _send(stream, 4, base, [(FAULT, 0, 0.0), (FAULT, 10_000, 5.0)])
        await asyncio.sleep(0.3)
        assert await alarm_of("bms-fault") is None
        await _send(stream, 5, base, [(FAULT, 20_000, 17.0)])
        fault = await _until(lambda: alarm_of("bms-fault"))
        assert fault.severity == pb.ALARM_SEVERITY_CRITICAL and "cell over-temperature" in fault.message
        assert fault.remediation_steps == ["check the cooling fan"]
        # Raised 100 s ago (the sample's time) and nobody acknowledged it within 60 s: escalated, once.
        escalated = await _until(
            lambda: _if(api.GetAlarm(pb.GetAlarmRequest(name=fault.name)), lambda a: a.HasField("escalate_time"))
        )
        assert _kinds(escalated) == ["RAISED", "UNACKNOWLEDGED_ESCALATED"]
        assert escalated.transitions[1].actor == "alarm-engine" and "not acknowledged" in escalated.transitions[1].note
        assert escalated.severity == pb.ALARM_SEVERITY_CRITICAL
        await asyncio.sleep(0.3)
        assert _kinds(await api.GetAlarm(pb.GetAlarmRequest(name=fault.name))) == ["RAISED", "UNACKNOWLEDGED_ESCALATED"]
        # The fault ends.
        await _send(stream, 6, base, [(FAULT, 30_000, 0.0)])
        done = await _until(
            lambda: _if(api.GetAlarm(pb.GetAlarmRequest(name=fault.name)), lambda a: a.state == pb.ALARM_STATE_CLEARED)
        )
        assert _kinds(done) == ["RAISED", "UNACKNOWLEDGED_ESCALATED", "CLEARED"]
        raised = await db.fetch("SELECT severity FROM alarm.alarms WHERE org_id = 'acme' ORDER BY raise_time")
        assert len(raised) >= 2
        await stream.close()


async def test_an_operator_sends_a_proposed_command_from_the_alarm_with_one_call(
    host: Host, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    edge, _, key = await new_edge(db, "remedy")
    operator = await grant(db, "acme", "operator")
    viewer = await grant(db, "acme", "viewer")
    temp = _channel(str(edge), "battery_1/CellTemperature")
    # CommandService and EdgeLink in one process, the alarm service in another that reaches
    # CommandService over gRPC (EMMA_ALARM_COMMAND_TARGET), as in a split deployment.
    async with host(["edge", "command"]) as (commands, _):
        monkeypatch.setenv("EMMA_ALARM_COMMAND_TARGET", f"127.0.0.1:{commands.port}")
        async with (
            host(["alarm"]) as (server, _),
            authed_channel(server.port, operator.token) as channel,
            authed_channel(server.port, viewer.token) as viewing,
        ):
            api = alarm_pb2_grpc.AlarmServiceStub(channel)
            await api.CreateAlarmRule(
                pb.CreateAlarmRuleRequest(
                    parent=ACME,
                    alarm_rule_id="cell-hot",
                    alarm_rule=pb.AlarmRule(
                        display_name="battery cell hot",
                        kind=pb.ALARM_RULE_KIND_THRESHOLD,
                        channel=temp,
                        levels=pb.ThresholdLevels(warn_high=45, critical_high=55),
                        remediation_steps=["reduce charge power", "check the cooling fan"],
                        proposed_commands=[
                            pb.ProposedCommand(title="limit charging to 1 kW", channel="SetActivePower", value=-1000)
                        ],
                        enabled=True,
                    ),
                )
            )
            await _until(lambda: db.fetchval("SELECT count(*) FROM alarm.rule_state"))
            # The edge streams to the command process (it relays commands to the streams it holds).
            stream = await _online(commands.port, str(edge), key)
            await _send(stream, 1, time.time(), [(MAX_CHARGE, 0, 4000.0), (MAX_DISCHARGE, 0, 4000.0), (TEMP, 0, 50.0)])
            alarm = await _until(
                lambda: _first(api.ListAlarms(pb.ListAlarmsRequest(parent=ACME, rule=f"{ACME}/alarmRules/cell-hot")))
            )
            assert [c.title for c in alarm.proposed_commands] == ["limit charging to 1 kW"]

            request_id = str(uuid.uuid4())
            sent = await api.SendAlarmCommand(
                pb.SendAlarmCommandRequest(name=alarm.name, proposed_command=0, request_id=request_id)
            )
            assert sent.command.startswith(f"{edge}/commands/")
            assert _kinds(sent.alarm) == ["RAISED", "COMMAND_SENT"]
            assert sent.alarm.transitions[1].actor == f"users/{operator.user_id}"
            assert sent.command in sent.alarm.transitions[1].note
            delivered = (await stream.recv_kind("command")).command
            assert (delivered.name, delivered.channel, delivered.value) == (
                sent.command,
                "battery_1/SetActivePower",
                -1000.0,
            )
            # A retry sends nothing again and answers the same.
            again = await api.SendAlarmCommand(
                pb.SendAlarmCommandRequest(name=alarm.name, proposed_command=0, request_id=request_id)
            )
            assert again.command == sent.command
            assert _kinds(await api.GetAlarm(pb.GetAlarmRequest(name=alarm.name))) == ["RAISED", "COMMAND_SENT"]
            # No such proposed command; no request id; a viewer may not send.
            _, reason, meta = await _error(
                api.SendAlarmCommand(
                    pb.SendAlarmCommandRequest(name=alarm.name, proposed_command=3, request_id=str(uuid.uuid4()))
                )
            )
            assert (reason, meta["field"]) == ("FIELD_INVALID", "proposed_command")
            _, reason, meta = await _error(api.SendAlarmCommand(pb.SendAlarmCommandRequest(name=alarm.name)))
            assert (reason, meta["field"]) == ("FIELD_INVALID", "request_id")
            code, _, _ = await _error(
                alarm_pb2_grpc.AlarmServiceStub(viewing).SendAlarmCommand(
                    pb.SendAlarmCommandRequest(name=alarm.name, request_id=str(uuid.uuid4()))
                )
            )
            assert code == grpc.StatusCode.PERMISSION_DENIED
            await stream.close()


async def _first(call: object) -> pb.Alarm | None:
    found = await call  # type: ignore[misc]
    return found.alarms[0] if found.alarms else None


async def test_a_killed_edge_raises_its_offline_alarm_within_the_timeout_and_clears_when_back(
    host: Host, db: asyncpg.Connection
) -> None:
    edge, _, key = await new_edge(db, "offline")
    creds = await grant(db, "acme", "operator")
    async with host(["edge", "alarm"]) as (server, _), authed_channel(server.port, creds.token) as channel:
        api = alarm_pb2_grpc.AlarmServiceStub(channel)
        await api.CreateAlarmRule(
            pb.CreateAlarmRuleRequest(
                parent=ACME,
                alarm_rule_id="edge-offline",
                alarm_rule=pb.AlarmRule(
                    display_name="edge offline",
                    kind=pb.ALARM_RULE_KIND_EDGE_OFFLINE,
                    edge=str(edge),
                    offline_after=duration_pb2.Duration(seconds=10),
                    severity=pb.ALARM_SEVERITY_CRITICAL,
                    enabled=True,
                ),
            )
        )
        stream = await _online(server.port, str(edge), key)
        await _send(stream, 1, time.time(), [(TEMP, 0, 25.0)])
        killed = time.monotonic()
        await stream.close()  # the edge dies: its stream closes and nothing more arrives

        async def offline() -> pb.Alarm | None:
            found = (
                await api.ListAlarms(pb.ListAlarmsRequest(parent=ACME, rule=f"{ACME}/alarmRules/edge-offline"))
            ).alarms
            return found[0] if found else None

        alarm = await _until(offline, timeout=20)
        waited = time.monotonic() - killed
        # Not before its timeout (how soon after it is a latency, measured by bench/, not asserted here).
        assert waited >= 9.5, waited
        assert alarm.source == str(edge) and alarm.severity == pb.ALARM_SEVERITY_CRITICAL
        assert "stream closed" in alarm.message
        # Back: a fresh batch clears it.
        stream = await _online(server.port, str(edge), key)
        await _send(stream, 2, time.time(), [(TEMP, 0, 25.0)])
        done = await _until(
            lambda: _if(api.GetAlarm(pb.GetAlarmRequest(name=alarm.name)), lambda a: a.state == pb.ALARM_STATE_CLEARED)
        )
        assert _kinds(done) == ["RAISED", "CLEARED"]
        await stream.close()


async def test_send_command_finds_the_own_servers_bound_port_when_no_target_is_set(
    host: Host, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hosted on port 0 (tests/support/cloud.py): the port is chosen at bind time, after the servicer
    # was built, so "127.0.0.1:$EMMA_GRPC_PORT" would be wrong. With no target set, the alarm service
    # sends through the CommandService of its own process, wherever that server was bound.
    monkeypatch.delenv("EMMA_ALARM_COMMAND_TARGET", raising=False)
    edge, _, key = await new_edge(db, "ownport")
    operator = await grant(db, "acme", "operator")
    rule = pb.AlarmRule(
        display_name="battery cell hot",
        kind=pb.ALARM_RULE_KIND_THRESHOLD,
        channel=_channel(str(edge), "battery_1/CellTemperature"),
        levels=pb.ThresholdLevels(warn_high=45),
        proposed_commands=[pb.ProposedCommand(title="stop charging", channel="SetActivePower", value=0)],
        enabled=True,
    )
    async with host(["edge", "alarm"]) as (server, _), authed_channel(server.port, operator.token) as channel:
        api = alarm_pb2_grpc.AlarmServiceStub(channel)
        await api.CreateAlarmRule(pb.CreateAlarmRuleRequest(parent=ACME, alarm_rule_id="own-port", alarm_rule=rule))
        await _until(lambda: db.fetchval("SELECT count(*) FROM alarm.rule_state WHERE source LIKE '%ownport%'"))
        stream = await _online(server.port, str(edge), key)
        await _send(stream, 1, time.time(), [(MAX_CHARGE, 0, 4000.0), (MAX_DISCHARGE, 0, 4000.0), (TEMP, 0, 50.0)])
        alarm = await _until(
            lambda: _first(api.ListAlarms(pb.ListAlarmsRequest(parent=ACME, rule=f"{ACME}/alarmRules/own-port")))
        )
        # This process serves no CommandService: a clear error, not a connection refused somewhere.
        code, reason, _ = await _error(
            api.SendAlarmCommand(pb.SendAlarmCommandRequest(name=alarm.name, request_id=str(uuid.uuid4())))
        )
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "STATE_CONFLICT")
        await stream.close()
    async with (
        host(["edge", "command", "alarm"]) as (server, _),
        authed_channel(server.port, operator.token) as channel,
    ):
        assert server.port != 50051
        stream = await _online(server.port, str(edge), key)
        sent = await alarm_pb2_grpc.AlarmServiceStub(channel).SendAlarmCommand(
            pb.SendAlarmCommandRequest(name=alarm.name, request_id=str(uuid.uuid4()))
        )
        delivered = (await stream.recv_kind("command")).command
        assert (delivered.name, delivered.channel, delivered.value) == (sent.command, "battery_1/SetActivePower", 0.0)
        await stream.close()
