"""The market fetch scheduler against a real PostgreSQL and the replay server in-process, with the real
clients: documents stored, a revision replacing values, a 5xx then success, a source that is down
recorded and fetched later, two schedulers fetching each document once."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from launcher.market_replay import Fault
from launcher.market_replay.recordings import RECORDINGS, Catalog
from services.market.scheduler import (
    MarketScheduler,
    Outcome,
    SchedulerConfig,
    SchedulerConfigError,
    add_jobs,
    claim_due,
    plan,
)
from services.market.sources import SourcesConfig
from tests.support.market_replay import ENTSOE_TOKEN, ESIOS_TOKEN, replay_server, sources_config

DE_LU = "10Y1001A1001A82H"
CET = ZoneInfo("Europe/Brussels")
RECORDING = RECORDINGS / "entsoe" / "A44_DE-LU_2024-10-06_07_dayahead_PT60M+PT15M_negative.xml"
# The afternoon after the 2024-10-07 auction: day-ahead for 10-06 and 10-07 are due.
AFTER_AUCTION = datetime(2024, 10, 6, 14, 0, tzinfo=CET)
# Only DE-LU's day-ahead and intraday, no borders: the documents the recordings hold.
CONFIG = SchedulerConfig(zones=(DE_LU,), borders=(), retry_s=0.01, retry_max_s=0.02, no_data_retry_s=600.0)


@pytest.fixture
async def pool(migrated_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(migrated_url, min_size=1, max_size=6)
    assert pool is not None
    async with pool.acquire() as conn:
        # Each test starts from no jobs and no documents (the module shares one database).
        await conn.execute(
            "TRUNCATE market.fetch_jobs, market.fetch_queries, market.source_status, market.documents, market.prices"
        )
    try:
        yield pool
    finally:
        await pool.close()


def scheduler(
    pool: asyncpg.Pool,
    sources: SourcesConfig,
    at: list[datetime],
    replica: str = "r1",
    config: SchedulerConfig = CONFIG,
) -> MarketScheduler:
    return MarketScheduler(pool, replica, config, sources, clock=lambda: at[0])


def by_status(outcomes: list[Outcome]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for o in outcomes:
        found.setdefault(o.status, []).append(o.job.key)
    return found


async def price_values(pool: asyncpg.Pool) -> dict[datetime, float]:
    rows = await pool.fetch(
        "SELECT delivery_start, value FROM market.prices WHERE zone = $1 AND resolution_s = 3600 AND sequence = 1",
        DE_LU,
    )
    return {r["delivery_start"]: r["value"] for r in rows}


async def test_due_documents_are_fetched_and_stored_and_no_data_is_not_an_error(pool: asyncpg.Pool) -> None:
    at = [AFTER_AUCTION]
    async with replay_server() as server:
        sched = scheduler(pool, sources_config(server.url), at)
        try:
            outcomes = await sched.run_once()
        finally:
            await sched.stop()
    statuses = by_status(outcomes)
    assert "day-ahead:10Y1001A1001A82H:2024-10-06:DA" in statuses["stored"]
    # Intraday has no recording: ENTSO-E's Acknowledgement 999, recorded as no data, not a failure.
    assert any(k.startswith("intraday:") for k in statuses["no data"])
    assert "failed" not in statuses
    assert len(await price_values(pool)) >= 24
    jobs = {r["job_key"]: r for r in await pool.fetch("SELECT * FROM market.fetch_jobs")}
    stored = jobs["day-ahead:10Y1001A1001A82H:2024-10-06:DA"]
    assert (stored["state"], stored["outcome"], stored["lease_until"]) == ("done", "stored", None)
    # "No data yet" for a day still inside its window is asked again later, not abandoned.
    assert "intraday:10Y1001A1001A82H:2024-10-07:IDA3" not in jobs  # not due before 10-07 10:30
    retried = jobs["intraday:10Y1001A1001A82H:2024-10-06:IDA3"]
    assert retried["state"] == "retry" and retried["due_at"] > AFTER_AUCTION
    validators = await pool.fetchrow(
        "SELECT etag FROM market.fetch_queries WHERE query_key = 'day-ahead:10Y1001A1001A82H:2024-10-06'"
    )
    assert validators is not None and validators["etag"]
    status = await pool.fetchrow("SELECT * FROM market.source_status WHERE source = 'entsoe'")
    assert status is not None and status["last_success_at"] is not None and status["last_error"] == ""
    # A second pass at the same moment has nothing due: every document was fetched once.
    async with replay_server() as server:
        sched = scheduler(pool, sources_config(server.url), at)
        try:
            assert await sched.run_once() == []
        finally:
            await sched.stop()
        assert server.seen == []


def _revised(folder: Path) -> tuple[Catalog, float]:
    """The DE-LU recording as a revision 2 with its first price changed, and the new price."""
    text = RECORDING.read_text()
    first = text.index("<price.amount>") + len("<price.amount>")
    end = text.index("</price.amount>", first)
    new_price = float(text[first:end]) + 111.25
    text = text[:first] + repr(new_price) + text[end:]
    text = text.replace("<revisionNumber>1</revisionNumber>", "<revisionNumber>2</revisionNumber>", 1)
    (folder / "entsoe").mkdir(parents=True)
    (folder / "entsoe" / RECORDING.name).write_text(text)
    ack = RECORDINGS / "entsoe" / "Acknowledgement_999_no_matching_data.xml"
    (folder / "entsoe" / ack.name).write_bytes(ack.read_bytes())
    return Catalog.load(folder), new_price


async def test_a_revision_is_fetched_conditionally_and_replaces_the_values(pool: asyncpg.Pool, tmp_path: Path) -> None:
    at = [AFTER_AUCTION]
    async with replay_server() as server:
        sched = scheduler(pool, sources_config(server.url), at)
        try:
            first = by_status(await sched.run_once())
            before = await price_values(pool)
            # Later that evening the re-check round asks again with the ETag: unchanged is a 304.
            at[0] = datetime(2024, 10, 6, 19, 30, tzinfo=CET)
            second = by_status(await sched.run_once())
            assert "day-ahead:10Y1001A1001A82H:2024-10-07:DA-check" in second["not modified"]
            # The source publishes a correction: the next re-check gets it and it replaces the values.
            catalog, new_price = _revised(tmp_path)
            server.state.catalog = catalog
            at[0] = datetime(2024, 10, 7, 19, 30, tzinfo=CET)
            third = by_status(await sched.run_once())
        finally:
            await sched.stop()
    assert "day-ahead:10Y1001A1001A82H:2024-10-06:DA" in first["stored"]
    # The day after delivery the final check asks with the ETag of 10-06's query and gets revision 2.
    assert "day-ahead:10Y1001A1001A82H:2024-10-06:DA-final" in third["revised"]
    conditional = [s for s in server.seen if s.conditional]
    assert conditional and all(s.status in (200, 304) for s in conditional)
    after = await price_values(pool)
    first_slot = min(before)
    assert before[first_slot] != new_price
    assert after[first_slot] == new_price
    assert set(after) == set(before)
    revisions = await pool.fetch("SELECT revision FROM market.prices WHERE zone = $1 GROUP BY revision", DE_LU)
    assert [r["revision"] for r in revisions] == [2]


async def test_a_5xx_then_success_is_stored(pool: asyncpg.Pool) -> None:
    at = [AFTER_AUCTION]
    # One 503: the client's own retry (with its tiny test backoff) gets the document.
    async with replay_server(Fault(status=503, count=1, source="entsoe")) as server:
        sched = scheduler(pool, sources_config(server.url), at)
        try:
            statuses = by_status(await sched.run_once())
        finally:
            await sched.stop()
    # The first request got the 503 and the same request asked again got its answer: not a failure.
    answered, refused = server.seen[1], server.seen[0]
    assert (refused.status, answered.status, answered.params) == (503, 200, refused.params)
    assert "day-ahead:10Y1001A1001A82H:2024-10-06:DA" in statuses["stored"]
    assert "failed" not in statuses


async def test_a_down_source_is_recorded_keeps_its_last_success_and_is_fetched_later(pool: asyncpg.Pool) -> None:
    at = [AFTER_AUCTION]
    async with replay_server() as server:
        sources = sources_config(server.url, retries=1)
        sched = scheduler(pool, sources, at)
        try:
            # A first answer (no data before the 10-06 auction is an answer), then the source goes down.
            at[0] = datetime(2024, 10, 5, 12, 0, tzinfo=CET)
            await sched.run_once()
            success = await pool.fetchval("SELECT last_success_at FROM market.source_status WHERE source = 'entsoe'")
            assert success is not None
            server.inject(Fault(status=503, count=10_000, source="entsoe"))
            at[0] = AFTER_AUCTION
            # The loop runs on its own and survives every failure.
            await sched.start()
            for _ in range(6000):  # at most a minute on a busy machine; usually a few passes
                if any(o.status == "failed" for o in sched.outcomes):
                    break
                await asyncio.sleep(0.01)
            assert sched.running
            await sched.stop()
            failed = [o for o in sched.outcomes if o.status == "failed"]
            assert failed and all("entsoe" in o.detail and "HTTP 503" in o.detail for o in failed)
            status = await pool.fetchrow("SELECT * FROM market.source_status WHERE source = 'entsoe'")
            assert status is not None
            assert status["last_success_at"] == success  # "stale since" this
            assert "HTTP 503" in status["last_error"] and status["last_error_at"] is not None
            job = await pool.fetchrow(
                "SELECT * FROM market.fetch_jobs WHERE job_key = 'day-ahead:10Y1001A1001A82H:2024-10-06:DA'"
            )
            assert job is not None and job["state"] == "retry" and "HTTP 503" in job["reason"]
            # The source is back: the next pass after the backoff stores the document.
            server.state.faults.clear()
            at[0] = datetime(2024, 10, 6, 15, 0, tzinfo=CET)
            sched = scheduler(pool, sources, at)
            outcomes = await sched.run_once()
            statuses = by_status(outcomes)
        finally:
            await sched.stop()
    # 10-06 and 10-07 were both missed during the outage; one recording covers both days, so whichever
    # the backoff's jitter ran first stored it (or, when an earlier test of this database stored it and
    # kept the query's validators, got a 304) and the other found it unchanged: both recovered.
    recovered = {o.job.key: o.status for o in outcomes if o.job.query.product == "day-ahead"}
    for day in (6, 7):
        assert recovered[f"day-ahead:10Y1001A1001A82H:2024-10-0{day}:DA"] in {"stored", "unchanged", "not modified"}
    assert "failed" not in statuses
    assert await price_values(pool)


async def test_a_refused_token_is_abandoned_with_its_reason(pool: asyncpg.Pool) -> None:
    at = [AFTER_AUCTION]
    async with replay_server() as server:
        sched = scheduler(pool, sources_config(server.url, entsoe_token="not-the-token"), at)
        try:
            statuses = by_status(await sched.run_once())
            again = await sched.run_once()
        finally:
            await sched.stop()
    assert "stored" not in statuses and statuses["failed"]
    assert again == []  # abandoned: never asked again
    rows = await pool.fetch("SELECT state, reason FROM market.fetch_jobs")
    assert rows and all(r["state"] == "abandoned" and r["reason"].startswith("TokenRefused") for r in rows)
    assert all("not-the-token" not in r["reason"] for r in rows)


async def test_two_schedulers_on_one_database_fetch_each_document_once(pool: asyncpg.Pool) -> None:
    at = [AFTER_AUCTION]
    async with replay_server() as server:
        # One job per claim, so the two replicas interleave rather than one taking the whole batch.
        one = scheduler(pool, sources_config(server.url), at, "replica-1", replace(CONFIG, batch=1))
        two = scheduler(pool, sources_config(server.url), at, "replica-2", replace(CONFIG, batch=1))
        try:
            first, second = await asyncio.gather(one.run_once(), two.run_once())
        finally:
            await one.stop()
            await two.stop()
    keys = [o.job.key for o in first + second]
    assert len(keys) == len(set(keys)) == len(plan(CONFIG, sources_config(server.url), AFTER_AUCTION))
    # One request per job on the wire, whichever replica ran it, and both replicas did some.
    assert len(server.seen) == len(keys)
    assert first and second
    asked = Counter(o.job.query.key for o in first + second)
    # 10-05: DA, DA-check and DA-final (due 10-06 13:00) are three rounds of one query; 10-06 has two yet.
    assert (asked["day-ahead:10Y1001A1001A82H:2024-10-05"], asked["day-ahead:10Y1001A1001A82H:2024-10-06"]) == (3, 2)


def test_the_configuration_is_read_from_the_environment_and_refuses_nonsense() -> None:
    config = SchedulerConfig.from_env({"EMMA_MARKET_ZONES": "es, DE-LU", "EMMA_MARKET_BORDERS": "ES>FR,FR>ES"})
    assert config.zones == ("10YES-REE------0", DE_LU)
    assert config.borders == (("10YES-REE------0", "10YFR-RTE------C"), ("10YFR-RTE------C", "10YES-REE------0"))
    assert not SchedulerConfig.from_env({"EMMA_MARKET_SCHEDULER": "off"}).enabled
    for env, word in (
        ({"EMMA_MARKET_ZONES": "XX"}, "EMMA_MARKET_ZONES"),
        ({"EMMA_MARKET_BORDERS": "ES-FR"}, "EMMA_MARKET_BORDERS"),
        ({"EMMA_MARKET_BORDERS": "ES>ES"}, "EMMA_MARKET_BORDERS"),
        ({"EMMA_MARKET_FETCH_RETRY_S": "nan"}, "EMMA_MARKET_FETCH_RETRY_S"),
        ({"EMMA_MARKET_SCHEDULER": "maybe"}, "EMMA_MARKET_SCHEDULER"),
    ):
        with pytest.raises(SchedulerConfigError, match=word):
            SchedulerConfig.from_env(env)


def test_the_plan_follows_the_publications() -> None:
    sources = SourcesConfig(entsoe_token=ENTSOE_TOKEN, esios_token=ESIOS_TOKEN)
    config = SchedulerConfig(zones=("10YES-REE------0",), borders=(("10YES-REE------0", "10YFR-RTE------C"),))
    noon = {j.key for j in plan(config, sources, datetime(2025, 10, 6, 12, 0, tzinfo=CET))}
    after = {j.key for j in plan(config, sources, datetime(2025, 10, 6, 13, 5, tzinfo=CET))}
    evening = {j.key for j in plan(config, sources, datetime(2025, 10, 6, 20, 45, tzinfo=CET))}
    tomorrow_da = "day-ahead:10YES-REE------0:2025-10-07:DA"
    assert tomorrow_da not in noon and tomorrow_da in after
    assert "redata:10YES-REE------0:2025-10-07:PVPC" not in after
    assert {"redata:10YES-REE------0:2025-10-07:PVPC", "esios:10YES-REE------0:2025-10-07:PVPC"} <= evening
    ida1 = "intraday:10YES-REE------0:2025-10-07:IDA1"  # 15:30 the day before
    assert ida1 not in after and ida1 in evening
    assert "intraday:10YES-REE------0:2025-10-06:IDA3" in noon  # 10:30 on the day
    # Flows and capacities every hour (keyed by the UTC hour), capacities also for tomorrow.
    assert "flows:10YES-REE------0>10YFR-RTE------C:2025-10-06:H2025100610" in noon
    assert "capacities:10YES-REE------0>10YFR-RTE------C:2025-10-07:H2025100610" in noon
    # Without an ENTSO-E token only REE is asked (ENTSO-E would refuse every request).
    ree_only = plan(config, SourcesConfig(), datetime(2025, 10, 6, 20, 45, tzinfo=CET))
    assert {j.query.product for j in ree_only} == {"redata"}


async def test_a_job_taken_over_before_its_fetch_began_is_not_fetched_twice(pool: asyncpg.Pool) -> None:
    # The jobs of a claimed batch run one after another, each lease covering one fetch: the last job of a
    # batch behind slow fetches can see its lease run out and another replica take it before it starts.
    at = [AFTER_AUCTION]
    async with replay_server() as server:
        sources = sources_config(server.url)
        one = scheduler(pool, sources, at, "replica-1")
        two = scheduler(pool, sources, at, "replica-2")
        try:
            async with pool.acquire() as conn:
                await add_jobs(conn, plan(CONFIG, sources, at[0]))
                claimed = await claim_due(conn, "replica-1", at[0], 2, lease_s=0.001)
            await asyncio.sleep(0.05)  # replica-1's leases have run out (as behind slow fetches)
            async with pool.acquire() as conn:
                taken = await claim_due(conn, "replica-2", at[0], 100, two.lease_s)
            assert {job.key for job, _ in claimed} <= {job.key for job, _ in taken}
            job, attempt = claimed[-1]
            outcome = await one.runner.run(job, attempt, at[0])
        finally:
            await one.stop()
            await two.stop()
    assert outcome.status == "lost"
    assert server.seen == []  # replica-1 asked the source nothing for a job it no longer held
