"""Notification channels (validation, storage, mapping), their delivery log, and the notifier: the
worker that attempts the deliveries alarms.record queued with each transition.

A delivery is claimed under FOR UPDATE SKIP LOCKED with a lease (its next_attempt_time pushed past one
attempt's timeout), so replicas share the work, an attempt runs outside any transaction, and a process
that dies mid-attempt leaves the delivery to be retried when its lease ends: at least once, never lost.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import re
import uuid
from collections.abc import Mapping

import asyncpg
import grpc
import httpx
from emma.alarm.v1 import alarm_pb2 as pb
from emma.common.v1 import errors_pb2
from google.protobuf import json_format

from core.tasks import stop_task
from services.alarm import alarms, email, webhook
from services.alarm.config import EngineConfig, NotifyConfig
from services.alarm.rules import channel_name
from services.errors import ApiError, invalid_field, not_found
from services.platform.db import log_failed_pass
from services.platform.migrations import Conn
from services.platform.rpc import timestamp

log = logging.getLogger("emma.alarm.notify")

PENDING, DELIVERED, FAILED = (
    pb.NOTIFICATION_DELIVERY_STATE_PENDING,
    pb.NOTIFICATION_DELIVERY_STATE_DELIVERED,
    pb.NOTIFICATION_DELIVERY_STATE_FAILED,
)
MAX_DISPLAY_NAME = 200
MIN_SECRET, MAX_SECRET = 16, 200
MAX_RECIPIENTS = 20
CLAIM_BATCH = 100
CONCURRENCY = 20
_ADDRESS = re.compile(r"^[^@\s,<>\"]{1,64}@[^@\s,<>\"]{1,255}$")
_COLUMNS = "pk, org_id, channel_id, display_name, kind, webhook_url, email_addresses, min_severity, create_time"


# ------------------------------------------------------------------------------------- channels


async def check_channel(channel: pb.NotificationChannel, config: NotifyConfig) -> None:
    """Raises ApiError naming the field; resolves a webhook's host (the SSRF guard)."""
    if not channel.display_name.strip() or len(channel.display_name) > MAX_DISPLAY_NAME:
        raise invalid_field("notification_channel.display_name", f"required, at most {MAX_DISPLAY_NAME} characters")
    if channel.kind == pb.NOTIFICATION_CHANNEL_KIND_WEBHOOK:
        if channel.email_addresses:
            raise invalid_field("notification_channel.email_addresses", "only an EMAIL channel has recipients")
        if not channel.webhook_url:
            raise invalid_field("notification_channel.webhook_url", "required for a WEBHOOK channel")
        try:
            await webhook.check_target(channel.webhook_url, config.webhook_private)
        except webhook.UnsafeTarget as e:
            raise invalid_field("notification_channel.webhook_url", str(e)) from None
        if not MIN_SECRET <= len(channel.webhook_secret) <= MAX_SECRET:
            raise invalid_field(
                "notification_channel.webhook_secret", f"required, {MIN_SECRET} to {MAX_SECRET} characters"
            )
    elif channel.kind == pb.NOTIFICATION_CHANNEL_KIND_EMAIL:
        if channel.webhook_url or channel.webhook_secret:
            raise invalid_field("notification_channel.webhook_url", "only a WEBHOOK channel has a URL and a secret")
        if not config.smtp_host:
            raise invalid_field(
                "notification_channel.kind", "no SMTP server is configured (EMMA_ALARM_SMTP_HOST), so no e-mail"
            )
        if not 1 <= len(channel.email_addresses) <= MAX_RECIPIENTS:
            raise invalid_field("notification_channel.email_addresses", f"1 to {MAX_RECIPIENTS} recipients")
        for i, address in enumerate(channel.email_addresses):
            if not _ADDRESS.match(address):
                raise invalid_field(f"notification_channel.email_addresses[{i}]", f"{address!r} is not an address")
    else:
        raise invalid_field("notification_channel.kind", "required: WEBHOOK or EMAIL")


def _message(r: asyncpg.Record) -> pb.NotificationChannel:
    return pb.NotificationChannel(
        name=channel_name(r["org_id"], r["channel_id"]),
        display_name=r["display_name"],
        kind=r["kind"],
        webhook_url=r["webhook_url"],
        email_addresses=list(r["email_addresses"]),
        min_severity=r["min_severity"],
        create_time=timestamp(r["create_time"]),
    )


async def create(conn: Conn, org: str, channel_id: str, channel: pb.NotificationChannel) -> pb.NotificationChannel:
    row = await conn.fetchrow(
        f"""INSERT INTO alarm.notification_channels
               (org_id, channel_id, display_name, kind, webhook_url, webhook_secret, email_addresses, min_severity)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (org_id, channel_id) DO NOTHING RETURNING {_COLUMNS}""",
        org,
        channel_id,
        channel.display_name,
        channel.kind,
        channel.webhook_url,
        channel.webhook_secret,
        list(channel.email_addresses),
        channel.min_severity,
    )
    if row is None:
        name = channel_name(org, channel_id)
        raise ApiError(
            grpc.StatusCode.ALREADY_EXISTS,
            errors_pb2.ERROR_REASON_RESOURCE_EXISTS,
            f"{name} exists already",
            metadata={"resource": name},
        )
    return _message(row)


async def get(conn: Conn, org: str, channel_id: str) -> tuple[int, pb.NotificationChannel]:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM alarm.notification_channels WHERE org_id = $1 AND channel_id = $2", org, channel_id
    )
    if row is None:
        raise not_found(channel_name(org, channel_id))
    return int(row["pk"]), _message(row)


async def list_channels(conn: Conn, org: str, offset: int, limit: int) -> list[pb.NotificationChannel]:
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM alarm.notification_channels WHERE org_id = $1
            ORDER BY channel_id OFFSET $2 LIMIT $3""",
        org,
        offset,
        limit,
    )
    return [_message(r) for r in rows]


async def delete(conn: Conn, org: str, channel_id: str) -> None:
    done = await conn.fetchval(
        "DELETE FROM alarm.notification_channels WHERE org_id = $1 AND channel_id = $2 RETURNING pk", org, channel_id
    )
    if done is None:
        raise not_found(channel_name(org, channel_id))


async def list_deliveries(
    conn: Conn, org: str, channel_id: str, offset: int, limit: int
) -> list[pb.NotificationDelivery]:
    pk, _ = await get(conn, org, channel_id)
    rows = await conn.fetch(
        """SELECT d.state, d.attempts, d.last_error, d.create_time, d.finish_time, d.next_attempt_time,
                  t.kind, t.alarm_id
           FROM alarm.deliveries d JOIN alarm.transitions t ON t.seq = d.transition_seq
           WHERE d.channel_pk = $1 ORDER BY d.id DESC OFFSET $2 LIMIT $3""",
        pk,
        offset,
        limit,
    )
    out = []
    for r in rows:
        d = pb.NotificationDelivery(
            alarm=alarms.alarm_name(org, r["alarm_id"]),
            transition=r["kind"],
            state=r["state"],
            attempts=r["attempts"],
            last_error=r["last_error"],
            create_time=timestamp(r["create_time"]),
        )
        if r["finish_time"] is not None:
            d.finish_time.CopyFrom(timestamp(r["finish_time"]))
        elif r["state"] == PENDING:
            d.next_attempt_time.CopyFrom(timestamp(r["next_attempt_time"]))
        out.append(d)
    return out


# ------------------------------------------------------------------------------------- notifier


class Notifier:
    """The worker that attempts due deliveries every interval."""

    def __init__(self, pool: asyncpg.Pool, config: NotifyConfig, interval_s: float, enabled: bool = True) -> None:
        self._pool = pool
        self._config = config
        self._interval_s = interval_s
        self._enabled = enabled
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        if self._enabled:
            self._client = httpx.AsyncClient(timeout=self._config.webhook_timeout_s)
            self._task = asyncio.create_task(self._loop(), name="alarm-notifier")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.deliver_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A database outage must not end the notifier; the deliveries wait in their table.
                log_failed_pass(log, "alarm notification pass failed", logging.ERROR)
            await asyncio.sleep(self._interval_s)

    async def deliver_due(self) -> int:
        """One pass: claims up to CLAIM_BATCH due deliveries, attempts them, records the outcomes;
        returns how many were attempted."""
        lease = self._config.webhook_timeout_s + 30
        async with self._pool.acquire() as conn:
            claimed = await conn.fetch(
                """WITH due AS (
                       SELECT id FROM alarm.deliveries WHERE state = 1 AND next_attempt_time <= now()
                       ORDER BY next_attempt_time LIMIT $2 FOR UPDATE SKIP LOCKED
                   )
                   UPDATE alarm.deliveries d SET next_attempt_time = now() + make_interval(secs => $1)
                   FROM due, alarm.notification_channels c, alarm.transitions t
                   WHERE d.id = due.id AND c.pk = d.channel_pk AND t.seq = d.transition_seq
                   RETURNING d.id, d.attempts, c.kind, c.webhook_url, c.webhook_secret, c.email_addresses,
                             t.alarm_id, t.seq""",
                lease,
                CLAIM_BATCH,
            )
        if not claimed:
            return 0
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(r: asyncpg.Record) -> None:
            async with gate:
                error = await self._attempt(r)
            await self._record(int(r["id"]), int(r["attempts"]) + 1, error)

        await asyncio.gather(*(one(r) for r in claimed))
        return len(claimed)

    async def _attempt(self, r: asyncpg.Record) -> str:
        async with self._pool.acquire() as conn:
            change = await alarms.change_of(conn, uuid.UUID(str(r["alarm_id"])), int(r["seq"]))
        if change is None:
            return "the alarm is gone"
        try:
            if r["kind"] == pb.NOTIFICATION_CHANNEL_KIND_WEBHOOK:
                assert self._client is not None
                body = json.dumps(json_format.MessageToDict(change), separators=(",", ":")).encode()
                return await webhook.post(
                    self._client,
                    r["webhook_url"],
                    r["webhook_secret"],
                    body,
                    int(r["id"]),
                    self._config.webhook_private,
                )
            return await email.send(self._config, list(r["email_addresses"]), change)
        except Exception as e:  # one bad delivery must not stop the others; it is retried
            log.warning("delivery %s failed unexpectedly", r["id"], exc_info=True)
            return f"{type(e).__name__}: {e}"[:500]

    async def _record(self, delivery_id: int, attempts: int, error: str) -> None:
        now = dt.datetime.now(dt.UTC)
        if not error:
            state, next_time, finish = DELIVERED, now, now
        elif attempts >= self._config.attempts:
            state, next_time, finish = FAILED, now, now
            log.warning("delivery %d failed for good after %d attempts: %s", delivery_id, attempts, error)
        else:
            state, finish = PENDING, None
            next_time = now + dt.timedelta(seconds=self._config.retry_delay_s(attempts))
        async with self._pool.acquire() as conn:
            await conn.execute(
                """UPDATE alarm.deliveries SET state = $2, attempts = $3, last_error = $4, next_attempt_time = $5,
                       finish_time = $6 WHERE id = $1""",
                delivery_id,
                state,
                attempts,
                error,
                next_time,
                finish,
            )


def notifier_of(pool: asyncpg.Pool, env: Mapping[str, str] | None) -> Notifier:
    """The worker factory ServiceSpec names: settings from the process's environment."""
    source = env or os.environ
    engine = EngineConfig.from_env(source)
    return Notifier(pool, NotifyConfig.from_env(source), engine.interval_s, engine.enabled)
