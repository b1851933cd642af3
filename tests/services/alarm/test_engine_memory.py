"""The engine keeps its judgements in memory between passes (docs/alarms.md, "The engine"). Two engines
on one database stand for two replicas; their passes are run one by one (the hosted service's own
engine is off), over real ingest, real PostgreSQL and the real AlarmService: what one replica judged is
never judged again by the other from a stale memory, a failed pass leaves nothing remembered that the
database does not hold, a manual clear re-arms the rule, an edited rule is judged by its new levels
and a deleted one is forgotten."""

from __future__ import annotations

import time

import asyncpg
import pytest
from emma.alarm.v1 import alarm_pb2 as pb
from emma.alarm.v1 import alarm_pb2_grpc
from google.protobuf import duration_pb2, field_mask_pb2

from services.alarm.config import EngineConfig
from services.alarm.engine import AlarmEngine
from tests.services.alarm.test_engine import ACME, _channel, _kinds, _send
from tests.support.cloud import Host, new_edge
from tests.support.edge_client import welcomed
from tests.support.identity import authed_channel, grant


@pytest.fixture(autouse=True)
def _no_hosted_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    # The hosted alarm service serves the API; the tests' own engines judge, one pass at a time.
    monkeypatch.setenv("EMMA_ALARM_ENGINE", "off")


def _rule(soc: str, warn_high: float, hold_s: int = 0) -> pb.AlarmRule:
    return pb.AlarmRule(
        display_name="battery too full",
        kind=pb.ALARM_RULE_KIND_THRESHOLD,
        channel=soc,
        levels=pb.ThresholdLevels(
            warn_high=warn_high, hysteresis=2, hold_duration=duration_pb2.Duration(seconds=hold_s)
        ),
        allow_manual_clear=True,
        enabled=True,
    )


async def _alarms(api: alarm_pb2_grpc.AlarmServiceStub, rule_id: str) -> list[pb.Alarm]:
    """The rule's alarms, open and cleared, oldest first, with their transitions (the module's tests
    share one database)."""
    states = [pb.ALARM_STATE_ACTIVE, pb.ALARM_STATE_ACKNOWLEDGED, pb.ALARM_STATE_CLEARED]
    request = pb.ListAlarmsRequest(parent=ACME, states=states, rule=f"{ACME}/alarmRules/{rule_id}")
    listed = (await api.ListAlarms(request)).alarms
    found = [await api.GetAlarm(pb.GetAlarmRequest(name=a.name)) for a in listed]
    return sorted(found, key=lambda a: (a.raise_time.seconds, a.raise_time.nanos))


async def test_a_replica_taking_over_does_not_judge_again_what_the_other_judged(
    host: Host, db: asyncpg.Connection
) -> None:
    edge, _, key = await new_edge(db, "takeover")
    creds = await grant(db, "acme", "operator")
    soc = _channel(str(edge), "battery_1/Soc")
    async with host(["edge", "alarm"]) as (server, runtime), authed_channel(server.port, creds.token) as channel:
        api = alarm_pb2_grpc.AlarmServiceStub(channel)
        await api.CreateAlarmRule(
            pb.CreateAlarmRuleRequest(parent=ACME, alarm_rule_id="takeover", alarm_rule=_rule(soc, 90, hold_s=2))
        )
        first, second = AlarmEngine(runtime.pool, EngineConfig()), AlarmEngine(runtime.pool, EngineConfig())
        stream = await welcomed(server.port, str(edge), key)
        base = time.time() - 60
        await _send(stream, 1, base, [(0, 0, 80.0)])
        await first.evaluate()  # the rule's first pass: the newest sample, normal
        # Over the level for 1 s of the 2 s hold: the first replica's judgement holds a warning pending.
        await _send(stream, 2, base, [(0, 1000, 91.0), (0, 2000, 91.0)])
        assert await first.evaluate() == 0
        # The second replica takes over from what is stored: the hold is over at 3 s (raised), and 80 is
        # below the hysteresis (cleared).
        await _send(stream, 3, base, [(0, 3000, 91.5), (0, 4000, 80.0)])
        assert await second.evaluate() == 2
        [alarm] = await _alarms(api, "takeover")
        assert _kinds(alarm) == ["RAISED", "CLEARED"]
        # The first replica's memory (warning pending since 1 s, read up to 2 s) is stale: judged again
        # from it, the samples at 3 s and 4 s would open and close a second alarm. It reads the stored
        # judgements instead and finds nothing new.
        assert await first.evaluate() == 0
        assert [a.name for a in await _alarms(api, "takeover")] == [alarm.name]
        # Both go on from there: a new crossing is judged once, by whichever replica passes.
        await _send(stream, 4, base, [(0, 5000, 95.0), (0, 8000, 95.0)])
        assert await second.evaluate() == 1
        assert await first.evaluate() == 0
        assert len(await _alarms(api, "takeover")) == 2
        await stream.close()


async def test_a_failed_pass_leaves_no_judgement_in_memory_that_the_database_rolled_back(
    host: Host, db: asyncpg.Connection, migrated_url: str
) -> None:
    edge, _, key = await new_edge(db, "rollback")
    creds = await grant(db, "acme", "operator")
    soc = _channel(str(edge), "battery_1/Soc")
    async with host(["edge", "alarm"]) as (server, _), authed_channel(server.port, creds.token) as channel:
        api = alarm_pb2_grpc.AlarmServiceStub(channel)
        await api.CreateAlarmRule(
            pb.CreateAlarmRuleRequest(parent=ACME, alarm_rule_id="rollback", alarm_rule=_rule(soc, 90))
        )
        # The engine's pool gives up on a lock after 0.3 s, so a pass can be made to fail for real.
        pool = await asyncpg.create_pool(
            migrated_url, min_size=1, max_size=2, server_settings={"lock_timeout": "300ms"}
        )
        try:
            engine = AlarmEngine(pool, EngineConfig())
            stream = await welcomed(server.port, str(edge), key)
            base = time.time() - 60
            await _send(stream, 1, base, [(0, 0, 80.0)])
            await engine.evaluate()
            await _send(stream, 2, base, [(0, 1000, 95.0)])
            # The pass raises the alarm, then cannot take the generation counter's row, held here: it
            # fails, and the database rolls back the alarm and the judgement.
            async with db.transaction():
                await db.execute("SELECT * FROM alarm.engine_generation FOR UPDATE")
                with pytest.raises(asyncpg.LockNotAvailableError):
                    await engine.evaluate()
            assert await _alarms(api, "rollback") == []
            # Remembering the judgement (warning, read up to 1 s) would leave the alarm unraised for good.
            assert await engine.evaluate() == 1
            [alarm] = await _alarms(api, "rollback")
            assert alarm.severity == pb.ALARM_SEVERITY_WARNING and alarm.value == 95.0
            await stream.close()
        finally:
            await pool.close()


async def test_a_manual_clear_re_arms_the_rule_in_the_engines_memory(host: Host, db: asyncpg.Connection) -> None:
    edge, _, key = await new_edge(db, "rearm")
    creds = await grant(db, "acme", "operator")
    soc = _channel(str(edge), "battery_1/Soc")
    async with host(["edge", "alarm"]) as (server, runtime), authed_channel(server.port, creds.token) as channel:
        api = alarm_pb2_grpc.AlarmServiceStub(channel)
        await api.CreateAlarmRule(
            pb.CreateAlarmRuleRequest(parent=ACME, alarm_rule_id="rearm", alarm_rule=_rule(soc, 90, hold_s=1))
        )
        engine = AlarmEngine(runtime.pool, EngineConfig())
        stream = await welcomed(server.port, str(edge), key)
        base = time.time() - 60
        await _send(stream, 1, base, [(0, 0, 80.0)])
        await engine.evaluate()
        await _send(stream, 2, base, [(0, 1000, 95.0), (0, 2000, 95.0)])
        assert await engine.evaluate() == 1
        [raised] = await _alarms(api, "rearm")
        cleared = await api.ClearAlarm(pb.ClearAlarmRequest(name=raised.name, note="fan replaced"))
        assert cleared.state == pb.ALARM_STATE_CLEARED and cleared.cleared_by == f"users/{creds.user_id}"
        # Still over the level: the re-armed rule opens a new alarm after its hold. An engine that kept
        # its warning in memory would see no change and leave the condition without an alarm.
        await _send(stream, 3, base, [(0, 3000, 95.0)])
        assert await engine.evaluate() == 0  # held since 3 s: not yet
        await _send(stream, 4, base, [(0, 4000, 95.0)])
        assert await engine.evaluate() == 1
        first, second = await _alarms(api, "rearm")
        assert (first.name, _kinds(first)) == (raised.name, ["RAISED", "CLEARED"])
        assert second.state == pb.ALARM_STATE_ACTIVE and _kinds(second) == ["RAISED"]
        await stream.close()


async def test_an_edited_rule_is_judged_by_its_new_levels_and_a_deleted_one_is_forgotten(
    host: Host, db: asyncpg.Connection
) -> None:
    edge, _, key = await new_edge(db, "edit")
    creds = await grant(db, "acme", "operator")
    soc = _channel(str(edge), "battery_1/Soc")
    async with host(["edge", "alarm"]) as (server, runtime), authed_channel(server.port, creds.token) as channel:
        api = alarm_pb2_grpc.AlarmServiceStub(channel)
        rule = await api.CreateAlarmRule(
            pb.CreateAlarmRuleRequest(parent=ACME, alarm_rule_id="edit", alarm_rule=_rule(soc, 99))
        )
        engine = AlarmEngine(runtime.pool, EngineConfig())
        stream = await welcomed(server.port, str(edge), key)
        base = time.time() - 60
        await _send(stream, 1, base, [(0, 0, 80.0), (0, 1000, 95.0)])
        assert await engine.evaluate() == 0  # 95 is inside the quiet band below 99
        # At rest now: the next samples are asked of the database in short, and only the read position
        # moves over them.
        await _send(stream, 2, base, [(0, 1500, 96.0), (0, 1600, 97.0)])
        assert await engine.evaluate() == 0
        assert engine.stats.channels_quiet == 1 and engine.stats.samples_read == 1
        edited = pb.AlarmRule(name=rule.name, levels=pb.ThresholdLevels(warn_high=90, hysteresis=2))
        await api.UpdateAlarmRule(
            pb.UpdateAlarmRuleRequest(alarm_rule=edited, update_mask=field_mask_pb2.FieldMask(paths=["levels"]))
        )
        # The new band ends below 90; a value exactly at the level is beyond it.
        await _send(stream, 3, base, [(0, 2000, 89.5), (0, 3000, 90.0)])
        assert await engine.evaluate() == 1
        [alarm] = await _alarms(api, "edit")
        assert alarm.value == 90.0
        # Deleted: its alarm closes with it, and the engine's next passes neither judge nor store it
        # (a judgement stored for a deleted rule would fail the pass on its foreign key).
        await api.DeleteAlarmRule(pb.DeleteAlarmRuleRequest(name=rule.name))
        await _send(stream, 4, base, [(0, 4000, 70.0)])
        assert await engine.evaluate() == 0
        assert await engine.evaluate() == 0
        [closed] = await _alarms(api, "edit")
        assert _kinds(closed) == ["RAISED", "CLEARED"] and closed.cleared_by == f"users/{creds.user_id}"
        await stream.close()
