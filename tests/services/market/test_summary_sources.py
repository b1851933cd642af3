"""A source that is down shows in the summary: the fetch scheduler stores DE-LU's day-ahead prices from
the replay server (its recordings moved onto the asked days), then the replay answers 503 to every
ENTSO-E request; GetMarketSummary still answers and its `sources` says ENTSO-E is failing, with the
time it last succeeded ("stale since") and the last error."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from emma.market.v1 import market_pb2, market_pb2_grpc

from launcher.market_replay import Fault
from services.market.scheduler import MarketScheduler, SchedulerConfig
from tests.support.cloud import Host
from tests.support.identity import authed_channel
from tests.support.market_replay import replay_server, sources_config

DE_LU = "10Y1001A1001A82H"
CET = ZoneInfo("Europe/Brussels")
CONFIG = SchedulerConfig(zones=(DE_LU,), borders=(), retry_s=0.01, retry_max_s=0.02, no_data_retry_s=600.0)


@pytest.fixture
async def pool(migrated_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(migrated_url, min_size=1, max_size=6)
    assert pool is not None
    await pool.execute(
        "TRUNCATE market.fetch_jobs, market.fetch_queries, market.source_status, market.documents, market.prices"
    )
    try:
        yield pool
    finally:
        await pool.close()


async def test_a_failing_source_shows_in_the_summary_with_its_last_success(
    host: Host, token: str, pool: asyncpg.Pool
) -> None:
    now = datetime.now(CET)
    # Yesterday afternoon, after the auction: the scheduler fetches and stores; then today it fails.
    at = [(now - timedelta(days=1)).replace(hour=14, minute=0, second=0, microsecond=0)]
    async with replay_server(redate=True) as server:
        sources = sources_config(server.url, retries=1)
        sched = MarketScheduler(pool, "r1", CONFIG, sources, clock=lambda: at[0])
        try:
            first = await sched.run_once()
            assert any(o.status in ("stored", "revised") for o in first), [(o.status, o.detail) for o in first]
            server.inject(Fault(status=503, count=10_000, source="entsoe"))
            at[0] = now
            failed = [o for o in await sched.run_once() if o.status == "failed"]
        finally:
            await sched.stop()
    assert failed and all("HTTP 503" in o.detail for o in failed)
    status = await pool.fetchrow("SELECT * FROM market.source_status WHERE source = 'entsoe'")
    assert status is not None and status["last_error_at"] > status["last_success_at"]

    async with host(["market"]) as (hosted, _), authed_channel(hosted.port, token) as channel:
        stub = market_pb2_grpc.MarketDataServiceStub(channel)
        summary = await stub.GetMarketSummary(market_pb2.GetMarketSummaryRequest(zone="DE-LU"))
        batch = await stub.BatchGetMarketSummaries(market_pb2.BatchGetMarketSummariesRequest(zones=["DE-LU", "FR"]))
    assert [s.source for s in summary.sources] == ["entsoe"]
    health = summary.sources[0]
    assert health.failing
    assert (
        health.last_success_time.ToDatetime().replace(tzinfo=status["last_success_at"].tzinfo)
        == (status["last_success_at"])
    )
    assert (
        health.last_error_time.ToDatetime().replace(tzinfo=status["last_error_at"].tzinfo) == (status["last_error_at"])
    )
    assert "HTTP 503" in health.last_error
    # Every zone of a batch names the same source's health (day-ahead comes from ENTSO-E for all).
    assert [list(s.sources) for s in batch.summaries] == [[health], [health]]
