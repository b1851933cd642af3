"""Notification channels against real receivers: a webhook to a real local HTTP server that verifies
the HMAC signature and answers 503 once (retried with backoff, then delivered), a webhook to a port
nobody listens on (retried, then failed, the alarm kept), e-mail through a real local SMTP server; the
SSRF guard on loopback, private and link-local targets in production mode."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
import pytest
from emma.alarm.v1 import alarm_pb2 as pb
from emma.alarm.v1 import alarm_pb2_grpc

from services.alarm.webhook import UnsafeTarget, check_target
from tests.services.alarm.test_engine import _channel, _error, _send, _until
from tests.support.cloud import Host, new_edge
from tests.support.edge_client import welcomed
from tests.support.identity import authed_channel, grant
from tests.support.smtp import smtp_server

ACME = "organizations/acme"
SECRET = "s3cret-for-the-hmac-test"


@dataclass
class Receiver:
    """A real HTTP/1.1 server on loopback: answers each POST with the next status of `answers`."""

    answers: list[int]
    port: int = 0
    requests: list[tuple[dict[str, str], bytes, int]] = field(default_factory=list)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            status = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
            self.requests.append((headers, body, status))
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
        finally:
            writer.close()


@asynccontextmanager
async def receiver(answers: list[int]) -> AsyncIterator[Receiver]:
    state = Receiver(answers)
    server = await asyncio.start_server(state._serve, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMMA_ALARM_INTERVAL_S", "0.05")
    monkeypatch.setenv("EMMA_ALARM_WEBHOOK_PRIVATE", "allow")  # the receivers are on loopback
    monkeypatch.setenv("EMMA_ALARM_RETRY_BASE_S", "0.1")
    monkeypatch.setenv("EMMA_ALARM_DELIVERY_ATTEMPTS", "3")
    monkeypatch.setenv("EMMA_ALARM_WEBHOOK_TIMEOUT_S", "2")


async def _deliveries(api: Any, channel: str) -> list[pb.NotificationDelivery]:
    return list((await api.ListNotificationDeliveries(pb.ListNotificationDeliveriesRequest(parent=channel))).deliveries)


def _all(
    check: Callable[[list[pb.NotificationDelivery]], bool], api: Any, channel: str
) -> Callable[[], Awaitable[Any]]:
    async def probe() -> Any:
        found = await _deliveries(api, channel)
        return found if found and check(found) else None

    return probe


async def test_webhooks_are_signed_retried_delivered_or_failed_and_email_goes_through_smtp(
    host: Host, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    edge, _, key = await new_edge(db, "notify")
    admin = await grant(db, "acme", "admin")
    soc = _channel(str(edge), "battery_1/Soc")
    async with receiver([503, 200]) as hook, smtp_server() as smtp:
        monkeypatch.setenv("EMMA_ALARM_SMTP_HOST", "127.0.0.1")
        monkeypatch.setenv("EMMA_ALARM_SMTP_PORT", str(smtp.port))
        monkeypatch.setenv("EMMA_ALARM_SMTP_FROM", "alarms@emma.test")
        async with host(["edge", "alarm"]) as (server, _), authed_channel(server.port, admin.token) as channel:
            api = alarm_pb2_grpc.AlarmServiceStub(channel)
            webhook = pb.NOTIFICATION_CHANNEL_KIND_WEBHOOK
            ok = await api.CreateNotificationChannel(
                pb.CreateNotificationChannelRequest(
                    parent=ACME,
                    notification_channel_id="ops-hook",
                    notification_channel=pb.NotificationChannel(
                        display_name="ops",
                        kind=webhook,
                        webhook_url=f"http://127.0.0.1:{hook.port}/emma",
                        webhook_secret=SECRET,
                    ),
                )
            )
            assert ok.webhook_url.endswith("/emma") and not ok.webhook_secret  # the secret is never returned
            down = await api.CreateNotificationChannel(
                pb.CreateNotificationChannelRequest(
                    parent=ACME,
                    notification_channel_id="down-hook",
                    notification_channel=pb.NotificationChannel(
                        display_name="nobody listens",
                        kind=webhook,
                        webhook_url=f"http://127.0.0.1:{_free_port()}/",
                        webhook_secret=SECRET,
                    ),
                )
            )
            mail = await api.CreateNotificationChannel(
                pb.CreateNotificationChannelRequest(
                    parent=ACME,
                    notification_channel_id="ops-mail",
                    notification_channel=pb.NotificationChannel(
                        display_name="ops mail",
                        kind=pb.NOTIFICATION_CHANNEL_KIND_EMAIL,
                        email_addresses=["ops@example.com"],
                    ),
                )
            )
            # Bad channels: a short secret, a webhook with recipients, an unknown channel on a rule.
            _, reason, meta = await _error(
                api.CreateNotificationChannel(
                    pb.CreateNotificationChannelRequest(
                        parent=ACME,
                        notification_channel_id="short",
                        notification_channel=pb.NotificationChannel(
                            display_name="x", kind=webhook, webhook_url="http://127.0.0.1:1/", webhook_secret="short"
                        ),
                    )
                )
            )
            assert (reason, meta["field"]) == ("FIELD_INVALID", "notification_channel.webhook_secret")

            def rule(rule_id: str, channels: list[str]) -> pb.CreateAlarmRuleRequest:
                return pb.CreateAlarmRuleRequest(
                    parent=ACME,
                    alarm_rule_id=rule_id,
                    alarm_rule=pb.AlarmRule(
                        display_name="battery too full",
                        kind=pb.ALARM_RULE_KIND_THRESHOLD,
                        channel=soc,
                        levels=pb.ThresholdLevels(warn_high=90),
                        remediation_steps=["reduce charge power to 50 %"],
                        notification_channels=channels,
                        enabled=True,
                    ),
                )

            _, reason, meta = await _error(api.CreateAlarmRule(rule("bad", [f"{ACME}/notificationChannels/nope"])))
            assert (reason, meta["field"]) == ("FIELD_INVALID", "alarm_rule.notification_channels[0]")
            await api.CreateAlarmRule(rule("soc-notified", [ok.name, down.name, mail.name]))
            await _until(lambda: db.fetchval("SELECT count(*) FROM alarm.rule_state"))

            stream = await welcomed(server.port, str(edge), key)
            await _send(stream, 1, time.time() - 10, [(0, 0, 95.0)])

            # The webhook: 503 first, then 200 on the retry; both requests signed over timestamp.body.
            [delivered] = await _until(
                _all(lambda ds: ds[0].state == pb.NOTIFICATION_DELIVERY_STATE_DELIVERED, api, ok.name)
            )
            assert delivered.attempts == 2 and delivered.transition == pb.ALARM_TRANSITION_KIND_RAISED
            assert [status for _, _, status in hook.requests] == [503, 200]
            for headers, body, _ in hook.requests:
                stamp = headers["x-emma-timestamp"]
                expected = hmac.new(SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
                assert headers["x-emma-signature"] == f"sha256={expected}"
                assert abs(int(stamp) - time.time()) < 60
            assert hook.requests[0][0]["x-emma-delivery"] == hook.requests[1][0]["x-emma-delivery"]
            change = json.loads(hook.requests[1][1])
            assert change["transition"]["kind"] == "ALARM_TRANSITION_KIND_RAISED"
            assert change["alarm"]["source"] == soc and change["alarm"]["remediationSteps"] == [
                "reduce charge power to 50 %"
            ]

            # Nobody listens: 3 attempts, then failed; the alarm itself is still there, open.
            [failed] = await _until(
                _all(lambda ds: ds[0].state == pb.NOTIFICATION_DELIVERY_STATE_FAILED, api, down.name)
            )
            assert failed.attempts == 3 and failed.last_error and failed.HasField("finish_time")
            [alarm] = (await api.ListAlarms(pb.ListAlarmsRequest(parent=ACME))).alarms
            assert alarm.name == failed.alarm and alarm.state == pb.ALARM_STATE_ACTIVE

            # E-mail through the SMTP server, with the remediation steps.
            await asyncio.wait_for(smtp.arrived.wait(), 10)
            [received] = smtp.messages
            assert received.recipients == ["ops@example.com"] and received.sender == "alarms@emma.test"
            assert str(received.message["Subject"]).strip().startswith("[EMMA WARNING] battery too full")
            assert "1. reduce charge power to 50 %" in received.message.get_content()
            await _until(_all(lambda ds: ds[0].state == pb.NOTIFICATION_DELIVERY_STATE_DELIVERED, api, mail.name))
            await stream.close()


async def test_production_mode_refuses_webhooks_to_internal_addresses(
    host: Host, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMMA_ALARM_WEBHOOK_PRIVATE", "refuse")
    admin = await grant(db, "acme", "admin")
    operator = await grant(db, "acme", "operator")
    async with host(["alarm"]) as (server, _):
        async with authed_channel(server.port, admin.token) as channel:
            api = alarm_pb2_grpc.AlarmServiceStub(channel)
            for url in (
                "http://example.com/hook",  # plain http
                "https://127.0.0.1/hook",
                "https://localhost/hook",
                "https://10.1.2.3/hook",
                "https://192.168.0.10/hook",
                "https://169.254.169.254/latest/meta-data",
                "https://[::1]/hook",
                "https://[::ffff:10.0.0.1]/hook",
                "https://user:pw@example.com/hook",
            ):
                code, reason, meta = await _error(
                    api.CreateNotificationChannel(
                        pb.CreateNotificationChannelRequest(
                            parent=ACME,
                            notification_channel_id="ssrf",
                            notification_channel=pb.NotificationChannel(
                                display_name="x",
                                kind=pb.NOTIFICATION_CHANNEL_KIND_WEBHOOK,
                                webhook_url=url,
                                webhook_secret=SECRET,
                            ),
                        )
                    )
                )
                assert (code, reason, meta["field"]) == (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "FIELD_INVALID",
                    "notification_channel.webhook_url",
                ), url
            # No SMTP server configured: no e-mail channel.
            _, reason, meta = await _error(
                api.CreateNotificationChannel(
                    pb.CreateNotificationChannelRequest(
                        parent=ACME,
                        notification_channel_id="mail",
                        notification_channel=pb.NotificationChannel(
                            display_name="x", kind=pb.NOTIFICATION_CHANNEL_KIND_EMAIL, email_addresses=["a@b.c"]
                        ),
                    )
                )
            )
            assert (reason, meta["field"]) == ("FIELD_INVALID", "notification_channel.kind")
        # An operator may not create one (ADMIN: it sends the organization's alarms out of EMMA).
        async with authed_channel(server.port, operator.token) as channel:
            api = alarm_pb2_grpc.AlarmServiceStub(channel)
            code, _, _ = await _error(
                api.CreateNotificationChannel(
                    pb.CreateNotificationChannelRequest(
                        parent=ACME,
                        notification_channel_id="ops",
                        notification_channel=pb.NotificationChannel(
                            display_name="x",
                            kind=pb.NOTIFICATION_CHANNEL_KIND_WEBHOOK,
                            webhook_url="https://93.184.215.14/hook",
                            webhook_secret=SECRET,
                        ),
                    )
                )
            )
            assert code == grpc.StatusCode.PERMISSION_DENIED


async def test_a_public_address_passes_the_guard() -> None:
    # An address literal needs no DNS: the guard judges the address itself.
    await check_target("https://93.184.215.14/hook", allow_private=False)
    with pytest.raises(UnsafeTarget, match="loopback, private or reserved"):
        await check_target("https://100.64.0.1/hook", allow_private=False)  # carrier-grade NAT
