"""The forecast scheduler as the forecast service's background worker: two hosted replicas with
EMMA_FORECAST_SCHEDULER on forecast every site of the round exactly once between them; with the
test hosts' default (off) nothing is scheduled."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import time
import uuid
from contextlib import AsyncExitStack

import asyncpg

from services.cloud import hosted_services
from services.names import EdgeName
from services.registry import ensure_edge
from tests.support.cloud import Host, platform_config


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _sites(db: asyncpg.Connection, org: str, n: int) -> list[str]:
    for i in range(n):
        await ensure_edge(
            db, EdgeName(org, f"s{i}", "gw"), time_zone="Europe/Madrid", latitude_deg=40.4, longitude_deg=-3.7
        )
    return [f"s{i}" for i in range(n)]


async def test_two_hosted_replicas_forecast_each_site_once(db: asyncpg.Connection, migrated_url: str) -> None:
    org = f"w{uuid.uuid4().hex[:8]}"
    sites = await _sites(db, org, 5)
    env = {
        **os.environ,
        "EMMA_MARKET_SCHEDULER": "off",
        "EMMA_FORECAST_SCHEDULER": "on",
        "EMMA_FORECAST_POLL_S": "0.05",
        "EMMA_WEATHER_URL": f"http://127.0.0.1:{_closed_port()}",
        "EMMA_WEATHER_RETRIES": "0",
    }
    async with AsyncExitStack() as stack:
        for replica in ("replica-a", "replica-b"):
            base = platform_config(migrated_url)
            config = dataclasses.replace(base, env=env, server=dataclasses.replace(base.server, replica_id=replica))
            await stack.enter_async_context(hosted_services(["forecast"], config))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            # One statement, so one snapshot: two counts read apart once saw no pending row (the
            # round's rows not yet inserted) and then all five (inserted in between), and ended the wait.
            finished = await db.fetchval(
                "SELECT count(*) FILTER (WHERE state <> 'pending') FROM forecast.schedule WHERE org_id = $1", org
            )
            if finished == len(sites):
                break
            await asyncio.sleep(0.05)
    rows = await db.fetch(
        "SELECT site_id, state, claimed_by, run_id, reason FROM forecast.schedule WHERE org_id = $1 ORDER BY site_id",
        org,
    )
    assert [r["site_id"] for r in rows] == sites
    assert all(r["state"] == "done" and r["run_id"] is not None for r in rows), [dict(r) for r in rows]
    assert {r["claimed_by"] for r in rows} <= {"replica-a", "replica-b"}
    runs = await db.fetch(
        """SELECT site_id, count(*) AS n FROM forecast.runs WHERE org_id = $1 AND trigger = 'scheduled'
           GROUP BY site_id ORDER BY site_id""",
        org,
    )
    assert [(r["site_id"], r["n"]) for r in runs] == [(s, 1) for s in sites]


async def test_test_hosts_leave_the_scheduler_off(host: Host, db: asyncpg.Connection) -> None:
    org = f"x{uuid.uuid4().hex[:8]}"
    await _sites(db, org, 1)
    async with host(["forecast"]):
        await asyncio.sleep(0.3)
    assert await db.fetchval("SELECT count(*) FROM forecast.schedule WHERE org_id = $1", org) == 0
