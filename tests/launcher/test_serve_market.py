"""`emma serve market` as a real process runs the market fetch scheduler (its background worker)
against the real replay server: a day's prices are stored and served; EMMA_MARKET_SCHEDULER=off
fetches nothing; SIGTERM stops the scheduler before the process ends."""

from __future__ import annotations

import asyncio
import signal
import uuid
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
from emma.market.v1 import market_pb2, market_pb2_grpc
from google.protobuf import timestamp_pb2

from tests.support.cli_process import EmmaProcess
from tests.support.identity import authed_channel
from tests.support.market_replay import ENTSOE_TOKEN, ESIOS_TOKEN, replay_server
from tests.support.uplink import until

DE_LU = "10Y1001A1001A82H"
CET = ZoneInfo("Europe/Brussels")


def _env(dsn: str, replay_url: str, replica: str, state: Path, scheduler: str) -> dict[str, str]:
    return {
        "DATABASE_URL": dsn,
        "EMMA_STATE_DIR": str(state),
        "EMMA_REPLICA_ID": replica,
        "EMMA_MARKET_SCHEDULER": scheduler,
        "EMMA_MARKET_ZONES": "DE-LU",
        "EMMA_MARKET_BORDERS": "",
        "EMMA_MARKET_SCHEDULER_INTERVAL_S": "0.2",
        "EMMA_ENTSOE_TOKEN": ENTSOE_TOKEN,
        "EMMA_ESIOS_TOKEN": ESIOS_TOKEN,
        "EMMA_ENTSOE_URL": f"{replay_url}/api",
        "EMMA_REDATA_URL": replay_url,
        "EMMA_ESIOS_URL": replay_url,
    }


async def _serve(env: dict[str, str]) -> tuple[EmmaProcess, int]:
    proc = EmmaProcess("serve", "market", "--port", "0", env=env)
    line = await asyncio.to_thread(proc.wait_for, "emma serve: market on", 60)
    return proc, int(line.rsplit(":", 1)[1])


def _ts(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


async def test_emma_serve_market_fetches_todays_prices_and_stops_its_scheduler_on_sigterm(
    migrated_url: str, db: asyncpg.Connection, token: str, tmp_path: Path
) -> None:
    replica = "serve-market-" + uuid.uuid4().hex[:8]
    today = datetime.now(CET).date()
    day_start = datetime.combine(today, time(0), CET).astimezone(UTC)
    day_end = datetime.combine(today + timedelta(days=1), time(0), CET).astimezone(UTC)
    async with replay_server(redate=True) as replay:
        proc, port = await _serve(_env(migrated_url, replay.url, replica, tmp_path / "state", "on"))
        try:
            await asyncio.to_thread(proc.wait_for, "market scheduler started", 30)

            async def stored() -> bool:
                count = await db.fetchval(
                    "SELECT count(*) FROM market.prices WHERE zone = $1 AND product = 1 AND sequence = 1"
                    " AND delivery_start >= $2 AND delivery_start < $3",
                    DE_LU,
                    day_start,
                    day_end,
                )
                return bool(count)

            await until(stored, timeout=60, what="today's DE-LU day-ahead prices stored by the served scheduler")
            assert await db.fetchval(
                "SELECT count(*) FROM market.fetch_jobs WHERE claimed_by = $1 AND outcome IN ('stored', 'revised')",
                replica,
            )
            async with authed_channel(port, token) as channel:
                curve = await market_pb2_grpc.MarketDataServiceStub(channel).GetPriceCurve(
                    market_pb2.GetPriceCurveRequest(
                        series=market_pb2.SeriesSelector(zone="DE-LU"), start_time=_ts(day_start), end_time=_ts(day_end)
                    )
                )
            assert curve.points and all(day_start <= p.start_time.ToDatetime(UTC) < day_end for p in curve.points)
            assert any(seen.source == "entsoe" for seen in replay.seen)
        finally:
            code = await asyncio.to_thread(proc.stop, signal.SIGTERM)
    assert code == 0, "\n".join(proc.lines)
    assert any("market scheduler stopped" in line for line in proc.lines), "\n".join(proc.lines)


async def test_emma_serve_market_with_the_scheduler_off_fetches_nothing(
    migrated_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    replica = "serve-market-off-" + uuid.uuid4().hex[:8]
    async with replay_server(redate=True) as replay:
        proc, _ = await _serve(_env(migrated_url, replay.url, replica, tmp_path / "state", "off"))
        try:
            await asyncio.to_thread(proc.wait_for, "market scheduler off", 30)
            # Several of the 0.2 s passes it would have made had it been on.
            await asyncio.sleep(1.0)
            assert replay.seen == []
            assert await db.fetchval("SELECT count(*) FROM market.fetch_jobs WHERE claimed_by = $1", replica) == 0
        finally:
            code = await asyncio.to_thread(proc.stop, signal.SIGTERM)
    assert code == 0, "\n".join(proc.lines)
    assert not any("market scheduler started" in line for line in proc.lines)
