"""The fetch scheduler's housekeeping: finished jobs older than the retention are deleted by the
scheduler's own pass (on the real PostgreSQL), and the lease a claimed job is held for always exceeds the
longest a fetch may take with its retries (computed by default, a shorter configured one refused)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from services.market.scheduler import (
    LEASE_MARGIN_S,
    MarketScheduler,
    SchedulerConfig,
    SchedulerConfigError,
    fetch_lease_s,
    worst_case_fetch_s,
)
from services.market.sources import SourcesConfig

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
async def pool(migrated_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(migrated_url, min_size=1, max_size=4)
    assert pool is not None
    await pool.execute("TRUNCATE market.fetch_jobs, market.fetch_queries")
    try:
        yield pool
    finally:
        await pool.close()


async def _job(pool: asyncpg.Pool, key: str, state: str, finished_days_ago: float | None) -> None:
    finished = NOW - timedelta(days=finished_days_ago) if finished_days_ago is not None else None
    await pool.execute(
        "INSERT INTO market.fetch_jobs (job_key, query_key, source, product, zone, day, round, state, due_at,"
        " give_up_at, finished_at) VALUES ($1, $1, 'entsoe', 'day-ahead', 'Z', $2, 'DA', $3, $4, $4, $5)",
        key,
        NOW.date(),
        state,
        NOW + timedelta(days=1),  # not due: the pass under test fetches nothing
        finished,
    )


async def test_the_scheduler_deletes_finished_jobs_past_the_retention_and_keeps_the_rest(pool: asyncpg.Pool) -> None:
    await _job(pool, "done-old", "done", 31)
    await _job(pool, "abandoned-old", "abandoned", 45)
    await _job(pool, "done-recent", "done", 29)
    await _job(pool, "abandoned-recent", "abandoned", 1)
    # Not finished: kept whatever their age (a retry is still to be fetched).
    await _job(pool, "retry-old", "retry", 50)
    await pool.execute(
        "INSERT INTO market.fetch_queries (query_key, etag, fetched_at) VALUES ('q-old', 'a', $1), ('q-new', 'b', $2)",
        NOW - timedelta(days=31),
        NOW - timedelta(days=2),
    )
    # Nothing planned (no zones, no borders): the pass only plans, cleans and finds nothing due.
    config = SchedulerConfig(zones=(), borders=(), retention_days=30)
    sched = MarketScheduler(pool, "r1", config, SourcesConfig(), clock=lambda: NOW)
    try:
        assert await sched.run_once() == []
    finally:
        await sched.stop()
    kept = {r["job_key"] for r in await pool.fetch("SELECT job_key FROM market.fetch_jobs")}
    assert kept == {"done-recent", "abandoned-recent", "retry-old"}
    assert [r["query_key"] for r in await pool.fetch("SELECT query_key FROM market.fetch_queries")] == ["q-new"]


def test_the_retention_is_read_from_the_environment_and_may_not_undercut_the_planning_window() -> None:
    assert SchedulerConfig().retention_days == 30
    assert SchedulerConfig.from_env({"EMMA_MARKET_FETCH_JOB_RETENTION_DAYS": "7"}).retention_days == 7
    with pytest.raises(SchedulerConfigError, match=r"EMMA_MARKET_FETCH_JOB_RETENTION_DAYS=1\.0 must be at least 3"):
        SchedulerConfig.from_env({"EMMA_MARKET_FETCH_JOB_RETENTION_DAYS": "1"})


def test_the_default_lease_outlasts_a_fetch_with_all_its_retries() -> None:
    sources = SourcesConfig()
    # 5 attempts of 300 s, 4 waits of up to the 600 s Retry-After cap.
    expected_worst = (sources.retries + 1) * sources.request_deadline_s + sources.retries * max(
        sources.backoff_max_s, sources.retry_after_max_s
    )
    assert expected_worst == 5 * 300 + 4 * 600
    assert worst_case_fetch_s(sources) == expected_worst
    assert fetch_lease_s(SchedulerConfig(), sources) == expected_worst + LEASE_MARGIN_S
    # Follows the fetch settings: shorter deadlines, a shorter lease.
    quick = replace(sources, retries=1, request_deadline_s=10.0, retry_after_max_s=5.0, backoff_max_s=2.0)
    assert fetch_lease_s(SchedulerConfig(), quick) == 2 * 10 + 5 + LEASE_MARGIN_S


async def test_a_lease_no_longer_than_the_worst_fetch_is_refused_by_name(pool: asyncpg.Pool) -> None:
    sources = SourcesConfig()
    config = SchedulerConfig.from_env({"EMMA_MARKET_FETCH_LEASE_S": "900"})
    with pytest.raises(SchedulerConfigError, match=r"EMMA_MARKET_FETCH_LEASE_S=900 must exceed .* 3900 s"):
        MarketScheduler(pool, "r1", config, sources)
    with pytest.raises(SchedulerConfigError, match="EMMA_MARKET_FETCH_LEASE_S=3900 must exceed"):
        fetch_lease_s(replace(config, lease_s=3900.0), sources)
    assert fetch_lease_s(replace(config, lease_s=3901.0), sources) == 3901.0
