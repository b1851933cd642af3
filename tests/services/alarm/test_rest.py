"""The alarm API over REST: the real gateway app (over ASGI) in front of the real alarm service, with the
paths and JSON names docs/alarms.md shows."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
import pytest

from gateway.app import create_app
from gateway.config import GatewayConfig
from tests.services.alarm.test_engine import _send, _until
from tests.support.cloud import Host, new_edge
from tests.support.edge_client import battery_inventory, welcomed
from tests.support.gateway import error_of, reason_of
from tests.support.identity import grant

ACME = "organizations/acme"


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMMA_ALARM_INTERVAL_S", "0.05")


@asynccontextmanager
async def rest(port: int, token: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(GatewayConfig(target=f"127.0.0.1:{port}"))
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://gateway.test",
            headers={"Authorization": f"Bearer {token}"},
        ) as client:
            yield client
    finally:
        await app.state.gateway.close()


async def test_rules_alarms_commands_health_and_recommendations_over_rest(host: Host, db: asyncpg.Connection) -> None:
    edge, _, key = await new_edge(db, "rest")
    admin = await grant(db, "acme", "admin")
    device = f"{edge}/devices/battery_1"
    site = str(edge.site_name)
    async with host(["edge", "alarm"]) as (server, _), rest(server.port, admin.token) as c:
        crossed = await c.post(
            f"/v1/{ACME}/alarmRules",
            params={"alarmRuleId": "bad"},
            json={
                "displayName": "x",
                "kind": "ALARM_RULE_KIND_THRESHOLD",
                "channel": f"{device}/channels/Soc",
                "levels": {"warnHigh": 96, "criticalHigh": 95},
            },
        )
        assert crossed.status_code == 400 and reason_of(error_of(crossed)) == "ALARM_THRESHOLDS_CROSSED"

        def channel(url: str) -> dict[str, object]:
            return {
                "displayName": "ops pager",
                "kind": "NOTIFICATION_CHANNEL_KIND_WEBHOOK",
                "webhookUrl": url,
                "webhookSecret": "0123456789abcdef0123",
            }

        # Production mode (the default): a private target is refused; a public one is kept, its
        # secret never sent back.
        private = await c.post(
            f"/v1/{ACME}/notificationChannels",
            params={"notificationChannelId": "ops"},
            json=channel("https://10.0.0.1/"),
        )
        info = next(d for d in error_of(private)["details"] if d["@type"].endswith("ErrorInfo"))
        assert private.status_code == 400 and info["metadata"]["field"] == "notification_channel.webhook_url"
        hook = await c.post(
            f"/v1/{ACME}/notificationChannels",
            params={"notificationChannelId": "ops"},
            json=channel("https://93.184.215.14/emma"),
        )
        assert hook.status_code == 200, hook.text
        assert "webhookSecret" not in hook.json() and hook.json()["name"] == f"{ACME}/notificationChannels/ops"
        rule = await c.post(
            f"/v1/{ACME}/alarmRules",
            params={"alarmRuleId": "soc-low"},
            json={
                "displayName": "battery nearly empty",
                "kind": "ALARM_RULE_KIND_THRESHOLD",
                "channel": f"{device}/channels/Soc",
                "levels": {"warnLow": 20, "criticalLow": 10, "hysteresis": 2},
                "remediationSteps": ["stop discharging"],
                "proposedCommands": [{"title": "stop", "channel": "SetActivePower", "value": 0}],
                "escalateAfter": "900s",
                "enabled": True,
            },
        )
        assert rule.status_code == 200, rule.text
        assert rule.json()["proposedCommands"][0]["channel"] == "SetActivePower"

        stream = await welcomed(server.port, str(edge), key, devices=[battery_inventory()])
        end = time.time()
        await _send(stream, 1, end - 300, [(0, i * 60_000, 20.0 - 2 * i) for i in range(6)])

        async def open_alarms() -> list[dict[str, object]]:
            listed = await c.get(f"/v1/{ACME}/alarms", params={"minSeverity": "ALARM_SEVERITY_CRITICAL"})
            assert listed.status_code == 200, listed.text
            return list(listed.json().get("alarms", []))

        [alarm] = await _until(open_alarms)
        assert alarm["severity"] == "ALARM_SEVERITY_CRITICAL" and alarm["remediationSteps"] == ["stop discharging"]
        acked = await c.post(f"/v1/{alarm['name']}:acknowledge", json={"note": "on it"})
        assert acked.status_code == 200 and acked.json()["state"] == "ALARM_STATE_ACKNOWLEDGED"
        # No CommandService at the default target in this process set: the error says whose it is.
        no_command = await c.post(f"/v1/{alarm['name']}:sendCommand", json={"requestId": str(uuid.uuid4())})
        assert no_command.status_code >= 400 and "CommandService" in error_of(no_command)["message"]

        projection = await c.get(f"/v1/{device}/projection", params={"window": "600s"})
        assert projection.status_code == 200, projection.text
        body = projection.json()
        assert body["socRatePercentPerHour"] == pytest.approx(-120) and body["timeToEmpty"].endswith("s")
        health = await c.get(f"/v1/{device}/health")
        assert health.status_code == 200 and 0 <= health.json()["score"] < 100
        assert {f["factor"] for f in health.json()["factors"]} >= {"alarms", "data_freshness", "soc_window"}
        assert (await c.get(f"/v1/{site}/health")).status_code == 200

        posted = await c.post(
            f"/v1/{site}/recommendations",
            json={"title": "charge tonight", "source": "rl-dispatch-v3", "confidence": 0.7, "devices": [device]},
        )
        assert posted.status_code == 200, posted.text
        accepted = await c.post(f"/v1/{posted.json()['name']}:accept", json={"note": "ok"})
        assert accepted.status_code == 200 and accepted.json()["state"] == "RECOMMENDATION_STATE_ACCEPTED"
        listed = await c.get(f"/v1/{site}/recommendations")
        assert [r["title"] for r in listed.json()["recommendations"]] == ["charge tonight"]
        await stream.close()
