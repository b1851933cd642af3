"""Health index, projections and recommendations against real ingest and a real AlarmService, and the
pure scoring and fitting functions on their own."""

from __future__ import annotations

import datetime as dt
import time

import asyncpg
import grpc
import pytest
from emma.alarm.v1 import alarm_pb2 as pb
from emma.alarm.v1 import alarm_pb2_grpc
from emma.common.v1 import types_pb2
from emma.edge.v1 import edge_link_pb2
from google.protobuf import duration_pb2

from services.alarm import health
from tests.services.alarm.test_engine import _error, _send
from tests.support.cloud import Host, new_edge
from tests.support.edge_client import battery_inventory, welcomed
from tests.support.identity import authed_channel, grant

ACME = "organizations/acme"
CHANNELS = [("battery_1/Soc", "%"), ("battery_1/CellTemperature", "degC")]
SOC, TEMP = 0, 1


def test_scores_follow_the_documented_formula() -> None:
    assert health.freshness_score(30) == 100 and health.freshness_score(900) == 0
    assert health.freshness_score(480) == pytest.approx(50)
    assert health.temperature_score(25) == 100 and health.temperature_score(45) == pytest.approx(50)
    assert health.temperature_score(2.5) == pytest.approx(50) and health.temperature_score(70) == 0
    assert health.soc_window_score([50, 50, 99, 2]) == pytest.approx(50)
    assert health.alarm_score(1, 1, 1) == pytest.approx(35) and health.alarm_score(3, 0, 0) == 0
    combined = health.combine("x", {"data_freshness": (100, ""), "alarms": (50, "")}, health.BATTERY_WEIGHTS)
    # Only the factors with data count, their weights renormalised: 0.15/0.4 * 100 + 0.25/0.4 * 50.
    assert combined.score == pytest.approx(68.8) and sum(f.weight for f in combined.factors) == pytest.approx(1)


def test_round_trip_efficiency_is_energy_out_over_energy_in_settled_for_stored_energy() -> None:
    t0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    minutes = [t0 + dt.timedelta(minutes=i) for i in range(61)]
    # 30 min charging at 2 kW (1,000 Wh in), 30 min discharging at 1.6 kW (800 Wh out).
    power = [(t, -2000.0 if i < 30 else 1600.0 if i < 60 else 0.0) for i, t in enumerate(minutes)]
    eff = health.round_trip_efficiency(power)
    assert eff is not None and (eff.energy_in_wh, eff.energy_out_wh) == pytest.approx((1000, 800))
    assert eff.ratio == pytest.approx(0.8) and health.efficiency_score(eff.ratio) == pytest.approx(50)
    # 100 Wh more stored at the end than at the start: counted as come out.
    eff = health.round_trip_efficiency(power, [(minutes[0], 5000.0), (minutes[60], 5100.0)])
    assert eff is not None and eff.ratio == pytest.approx(0.9) and health.efficiency_score(0.95) == 100
    # 200 Wh fewer: taken from the store, counted as gone in.
    eff = health.round_trip_efficiency(power, [(minutes[0], 5000.0), (minutes[60], 4800.0)])
    assert eff is not None and eff.ratio == pytest.approx(800 / 1200)
    # A gap of an hour between two samples is not integrated; too little energy tells nothing.
    gap = [(t0, -2000.0), (t0 + dt.timedelta(hours=1), 1600.0), (t0 + dt.timedelta(hours=1, minutes=1), 0.0)]
    assert health.round_trip_efficiency(gap) is None
    assert health.efficiency_score(0.6) == 0


def test_the_line_fit_is_least_squares() -> None:
    a, b, r2 = health.fit([(0, 1), (1, 3), (2, 5)])
    assert (a, b, r2) == pytest.approx((1, 2, 1))
    a, b, r2 = health.fit([(0, 50), (1, 50), (2, 50)])
    assert (a, b, r2) == (50, 0, 1)
    _, _, r2 = health.fit([(0, 0), (1, 1), (2, 0), (3, 1)])
    assert 0 < r2 < 1


async def test_device_and_site_health_projection_and_recommendations(
    host: Host, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMMA_ALARM_RECOMMENDATIONS_PER_HOUR", "3")
    edge, _, key = await new_edge(db, "healthy")
    other, _, _ = await new_edge(db, "elsewhere")
    operator = await grant(db, "acme", "operator")
    viewer = await grant(db, "acme", "viewer")
    device = f"{edge}/devices/battery_1"
    site = str(edge.site_name)
    async with (
        host(["edge", "alarm"]) as (server, _),
        authed_channel(server.port, operator.token) as channel,
        authed_channel(server.port, viewer.token) as viewing,
    ):
        api = alarm_pb2_grpc.AlarmServiceStub(channel)
        stream = await welcomed(server.port, str(edge), key, CHANNELS, devices=[battery_inventory()])
        # Discharging 1 % a minute for 10 minutes, ending now at 70 %; the cells at 45 degC.
        end = time.time()
        points = [(SOC, i * 60_000, 80.0 - i) for i in range(11)]
        await _send(stream, 1, end - 600, [*points, (TEMP, 600_000, 45.0)])

        projected = await api.GetDeviceProjection(pb.GetDeviceProjectionRequest(name=f"{device}/projection"))
        assert projected.sample_count == 11 and projected.r_squared == pytest.approx(1)
        assert projected.soc_percent == pytest.approx(70) and projected.soc_rate_percent_per_hour == pytest.approx(-60)
        assert projected.time_to_empty.ToTimedelta().total_seconds() == pytest.approx(70 * 60, rel=1e-6)
        assert not projected.HasField("time_to_full")
        # Too short a window for three samples; a window out of bounds; a device that does not exist.
        code, reason, _ = await _error(
            api.GetDeviceProjection(
                pb.GetDeviceProjectionRequest(name=f"{device}/projection", window=duration_pb2.Duration(seconds=90))
            )
        )
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "STATE_CONFLICT")
        _, reason, meta = await _error(
            api.GetDeviceProjection(
                pb.GetDeviceProjectionRequest(name=f"{device}/projection", window=duration_pb2.Duration(seconds=5))
            )
        )
        assert (reason, meta["field"]) == ("FIELD_INVALID", "window")
        code, _, _ = await _error(api.GetDeviceHealth(pb.GetDeviceHealthRequest(name=f"{edge}/devices/nope/health")))
        assert code == grpc.StatusCode.NOT_FOUND

        # Fresh data, no alarms, all samples inside 5..95 %, 45 degC (half marks), no power samples (no
        # efficiency factor, the others renormalised): (0.15*100 + 0.25*100 + 0.2*50 + 0.2*100) / 0.8.
        device_health = await alarm_pb2_grpc.AlarmServiceStub(viewing).GetDeviceHealth(
            pb.GetDeviceHealthRequest(name=f"{device}/health")
        )
        factors = {f.factor: f.score for f in device_health.factors}
        assert factors == {"data_freshness": 100, "alarms": 100, "temperature": 50, "soc_window": 100}
        assert device_health.score == pytest.approx(87.5)
        site_health = await api.GetSiteHealth(pb.GetSiteHealthRequest(name=f"{site}/health"))
        assert {f.factor: f.score for f in site_health.factors} == {
            "devices": 87.5,
            "worst_device": 87.5,
            "edges_reporting": 100,
        }
        assert site_health.score == pytest.approx(90)

        # Recommendations: validated, rate-limited per site, decided once.
        def post(**fields: object) -> pb.CreateRecommendationRequest:
            rec = pb.Recommendation(title="charge at 02:00", source="rl-dispatch-v3", confidence=0.8)
            for k, v in fields.items():
                if k == "devices":
                    rec.devices.extend(v)  # type: ignore[arg-type]
                else:
                    setattr(rec, k, v)
            return pb.CreateRecommendationRequest(parent=site, recommendation=rec)

        _, reason, meta = await _error(api.CreateRecommendation(post(confidence=1.5)))
        assert (reason, meta["field"]) == ("FIELD_INVALID", "recommendation.confidence")
        code, reason, meta = await _error(api.CreateRecommendation(post(devices=[f"{edge}/devices/ghost"])))
        assert (code, reason, meta["resource"]) == (
            grpc.StatusCode.NOT_FOUND,
            "RESOURCE_NOT_FOUND",
            f"{edge}/devices/ghost",
        )
        _, reason, meta = await _error(api.CreateRecommendation(post(devices=[f"{other}/devices/battery_1"])))
        assert (reason, meta["field"]) == ("FIELD_INVALID", "recommendation.devices[0]")
        code, _, _ = await _error(alarm_pb2_grpc.AlarmServiceStub(viewing).CreateRecommendation(post()))
        assert code == grpc.StatusCode.PERMISSION_DENIED

        first = await api.CreateRecommendation(post(devices=[device], detail="prices are lowest then"))
        assert first.state == pb.RECOMMENDATION_STATE_OPEN and first.creator == f"users/{operator.user_id}"
        second = await api.CreateRecommendation(post(title="reduce the export limit"))
        await api.CreateRecommendation(post(title="third"))
        code, reason, meta = await _error(api.CreateRecommendation(post(title="fourth")))
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED") and "retry_after_ms" in meta

        accepted = await api.AcceptRecommendation(pb.AcceptRecommendationRequest(name=first.name, note="scheduled"))
        assert accepted.state == pb.RECOMMENDATION_STATE_ACCEPTED
        assert accepted.decided_by == f"users/{operator.user_id}" and accepted.HasField("decide_time")
        code, reason, _ = await _error(api.DismissRecommendation(pb.DismissRecommendationRequest(name=first.name)))
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "STATE_CONFLICT")
        dismissed = await api.DismissRecommendation(pb.DismissRecommendationRequest(name=second.name))
        assert dismissed.state == pb.RECOMMENDATION_STATE_DISMISSED
        listed = await api.ListRecommendations(pb.ListRecommendationsRequest(parent=site))
        assert [r.title for r in listed.recommendations] == ["third", "reduce the export limit", "charge at 02:00"]
        only_open = await api.ListRecommendations(
            pb.ListRecommendationsRequest(parent=site, state=pb.RECOMMENDATION_STATE_OPEN)
        )
        assert [r.title for r in only_open.recommendations] == ["third"]
        # The decisions are in the audit trail with who made them.
        audited = await db.fetch(
            "SELECT actor, method FROM identity.audit_entries WHERE resource = $1 AND result_code = 0 ORDER BY id",
            first.name,
        )
        assert [(r["actor"], r["method"]) for r in audited] == [
            (f"users/{operator.user_id}", "/emma.alarm.v1.AlarmService/AcceptRecommendation")
        ]
        await stream.close()


async def test_an_ev_chargers_utilisation_over_the_window(host: Host, db: asyncpg.Connection) -> None:
    edge, _, key = await new_edge(db, "charging")
    viewer = await grant(db, "acme", "viewer")
    ro = types_pb2.CHANNEL_ACCESS_READ_ONLY
    charger = edge_link_pb2.DeviceInventoryItem(
        device_id="ev_1",
        kind=types_pb2.DEVICE_KIND_EV_CHARGER,
        driver="test",
        channels=[
            types_pb2.ChannelSpec(name="ActivePower", unit="W", access=ro, min_value=0, max_value=11000),
            types_pb2.ChannelSpec(name="Plugged", unit="", access=ro),
        ],
    )
    async with host(["edge", "alarm"]) as (server, _), authed_channel(server.port, viewer.token) as channel:
        api = alarm_pb2_grpc.AlarmServiceStub(channel)
        stream = await welcomed(
            server.port, str(edge), key, [("ev_1/ActivePower", "W"), ("ev_1/Plugged", "")], devices=[charger]
        )
        powers, plugged = [11000.0, 5500.0, 0.0, 5500.0], [1.0, 1.0, 0.0, 1.0]
        points = [(0, i * 60_000, p) for i, p in enumerate(powers)] + [
            (1, i * 60_000, p) for i, p in enumerate(plugged)
        ]
        await _send(stream, 1, time.time() - 240, points)
        projected = await api.GetDeviceProjection(pb.GetDeviceProjectionRequest(name=f"{edge}/devices/ev_1/projection"))
        # Mean 5,500 W of a rated 11,000 W; a car connected in 3 of 4 samples.
        assert projected.charger_utilisation == pytest.approx(0.5) and projected.plugged_share == pytest.approx(0.75)
        assert projected.sample_count == 4 and not projected.HasField("time_to_empty")
        await stream.close()


async def test_a_batterys_efficiency_factor_from_stored_power_and_energy(host: Host, db: asyncpg.Connection) -> None:
    edge, _, key = await new_edge(db, "efficient")
    viewer = await grant(db, "acme", "viewer")
    channels = [("battery_1/ActivePower", "W"), ("battery_1/StoredEnergy", "Wh")]
    async with host(["edge", "alarm"]) as (server, _), authed_channel(server.port, viewer.token) as channel:
        stream = await welcomed(server.port, str(edge), key, channels, devices=[battery_inventory()])
        # The last hour: 30 min charging 2 kW, 30 min discharging 1.5 kW, 50 Wh more stored at the end.
        power = [(0, i * 60_000, -2000.0 if i < 30 else 1500.0 if i < 60 else 0.0) for i in range(61)]
        await _send(stream, 1, time.time() - 3600, [*power, (1, 0, 5000.0), (1, 3_600_000, 5050.0)])
        found = await alarm_pb2_grpc.AlarmServiceStub(channel).GetDeviceHealth(
            pb.GetDeviceHealthRequest(name=f"{edge}/devices/battery_1/health")
        )
        factor = next(f for f in found.factors if f.factor == "efficiency")
        # (750 + 50) / 1000 = 0.8: halfway between 0.7 (0 points) and 0.9 (100 points).
        assert factor.score == pytest.approx(50) and factor.weight > 0
        assert "80.0 % round trip" in factor.detail and "750 Wh out, 1000 Wh in" in factor.detail
        await stream.close()
