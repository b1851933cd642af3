"""The market fetch scheduler: which documents to fetch when, one fetch per document across replicas.

Every fetch is a *job*: one query (source, document type, zone or border, delivery day) for one
*round* (the publication it waits for: the day-ahead auction, IDA1..3, an hour of flows). Jobs live in
`market.fetch_jobs`; planning inserts them with `INSERT ... ON CONFLICT DO NOTHING`, so replicas
planning together create each job once, and a replica takes a due job with
`SELECT ... FOR UPDATE SKIP LOCKED` and a lease (`lease_until`) in a short transaction. The HTTP call
runs outside any transaction (it may take minutes); the document is then saved and the job finished in
one transaction that first checks the lease is still ours. A lease rather than an advisory lock: a
session advisory lock belongs to a pooled connection that would be held for the whole HTTP call, and a
replica that dies mid-fetch must not keep a job for ever - an expired lease is simply claimed again.

What a fetch ends in:
- stored / unchanged / revised: what `save_document` made of the document;
- not modified: a 304 to the validators (ETag/Last-Modified) kept per query in `market.fetch_queries`;
- no data: the source's own "nothing yet"; asked again `no_data_retry_s` later until the round's
  deadline, then recorded as no data for good (not an error);
- failed: TokenRefused, QueryRefused, BadResponse, DocumentError and SourceConfigError are abandoned
  with their reason (asking again cannot help); SourceUnavailable is asked again with backoff, up to
  `max_attempts`, and the source keeps its last success time in `market.source_status` so a summary can
  say "stale since ...". Nothing a source does stops the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from core.env import env_flag, env_float, env_int
from core.errors import ConfigError
from core.metrics import record_market_data
from core.tasks import stop_task
from services.market.assessment import WarningPolicy
from services.market.documents import parse_documents
from services.market.interconnect import InterconnectConfig
from services.market.model import DocumentError, MarketError
from services.market.sources import (
    BadResponse,
    EntsoeClient,
    EsiosClient,
    Fetched,
    QueryRefused,
    RedataClient,
    SourceConfigError,
    SourcesConfig,
    SourceUnavailable,
    TokenRefused,
    Validators,
)
from services.market.store import StoreError, save_documents
from services.market.zones import BIDDING_ZONES, is_eic
from services.platform.db import log_failed_pass
from services.platform.migrations import Conn

log = logging.getLogger("emma.market.scheduler")

CET = ZoneInfo("Europe/Brussels")  # the market's clock (CET/CEST); Madrid keeps the same time
SPAIN = "10YES-REE------0"

# Products a zone can be asked for. Every zone has the ENTSO-E auctions; the REE products are Spain's.
DAY_AHEAD = "day-ahead"
INTRADAY = "intraday"
REDATA = "redata"  # PVPC and spot, hourly, from REData
ESIOS = "esios"  # PVPC per geography, from ESIOS (needs EMMA_ESIOS_TOKEN)
FLOWS = "flows"
CAPACITIES = "capacities"
ZONE_PRODUCTS = (DAY_AHEAD, INTRADAY, REDATA, ESIOS)

# Rounds: (name, days before delivery, CET time the publication is expected by).
# Day-ahead: after the auction's publication, a re-check that evening and one the day after delivery
# (conditional requests, so an unchanged document costs a 304), which is how corrections come in.
DAY_AHEAD_ROUNDS = (("DA", 1, time(13, 0)), ("DA-check", 1, time(19, 0)), ("DA-final", -1, time(13, 0)))
INTRADAY_ROUNDS = (("IDA1", 1, time(15, 30)), ("IDA2", 1, time(22, 30)), ("IDA3", 0, time(10, 30)))
REE_ROUNDS = (("PVPC", 1, time(20, 30)),)


class SchedulerConfigError(MarketError, ConfigError):
    """An EMMA_MARKET_* setting of the scheduler is invalid; the message names the variable."""


def zone_code(text: str) -> str:
    """The EIC of a zone given by short name (ES, DE-LU; any case) or by EIC."""
    wanted = text.strip()
    if is_eic(wanted):
        return wanted
    for eic, (short, _) in BIDDING_ZONES.items():
        if short.lower() == wanted.lower():
            return eic
    raise SchedulerConfigError(f"{text[:40]!r} is neither a bidding zone's short name (ES, DE-LU, ...) nor an EIC")


def zone_products(zone: str, sources: SourcesConfig) -> tuple[str, ...]:
    """The products `zone` has: the ENTSO-E auctions, and for Spain REE's PVPC/spot (ESIOS with a key)."""
    products = [DAY_AHEAD, INTRADAY]
    if zone == SPAIN:
        products.append(REDATA)
        if sources.esios_token:
            products.append(ESIOS)
    return tuple(products)


def _zones(raw: str, name: str) -> tuple[str, ...]:
    try:
        return tuple(dict.fromkeys(zone_code(z) for z in raw.split(",") if z.strip()))
    except SchedulerConfigError as exc:
        raise SchedulerConfigError(f"{name}: {exc}") from None


def _borders(raw: str, name: str) -> tuple[tuple[str, str], ...]:
    found: list[tuple[str, str]] = []
    for item in (b.strip() for b in raw.split(",")):
        if not item:
            continue
        out_zone, sep, in_zone = item.partition(">")
        if not sep:
            raise SchedulerConfigError(f"{name}: {item[:40]!r} is not OUT>IN (for example ES>FR)")
        try:
            pair = (zone_code(out_zone), zone_code(in_zone))
        except SchedulerConfigError as exc:
            raise SchedulerConfigError(f"{name}: {exc}") from None
        if pair[0] == pair[1]:
            raise SchedulerConfigError(f"{name}: {item[:40]!r} names one zone twice")
        found.append(pair)
    return tuple(dict.fromkeys(found))


@dataclass(frozen=True)  # no slots: from_env reads the defaults off the class
class SchedulerConfig:
    """What the scheduler fetches and how often it looks (docs/market.md, "Fetch scheduler")."""

    enabled: bool = True
    zones: tuple[str, ...] = (SPAIN, "10Y1001A1001A82H")
    # Borders as (out zone, in zone): flows and capacities are directed.
    borders: tuple[tuple[str, str], ...] = (("10YES-REE------0", "10YFR-RTE------C"), ("10YFR-RTE------C", SPAIN))
    interval_s: float = 30.0  # how often a replica plans and looks for due jobs
    # A claimed job is another replica's again after this (a crashed replica). None: the longest a
    # fetch may take with all its retries plus LEASE_MARGIN_S (fetch_lease_s); a lease shorter than
    # that would let a second replica fetch a document the first is still retrying.
    lease_s: float | None = None
    no_data_retry_s: float = 900.0  # "no data yet": ask again this much later, until the round's deadline
    no_data_deadline_h: float = 12.0  # after the expected publication, "no data" is final
    retry_s: float = 60.0  # first backoff after SourceUnavailable, doubling, with jitter
    retry_max_s: float = 3600.0
    max_attempts: int = 8  # SourceUnavailable this many times: abandoned with the last reason
    batch: int = 20  # jobs one replica claims per pass
    # Finished (done or abandoned) jobs and the validators of queries not asked for this long are
    # deleted. At least MIN_RETENTION_DAYS: the planner still plans a day's jobs until two days after
    # it (yesterday's DA-final round), and a deleted job it still plans would be fetched again.
    retention_days: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SchedulerConfig:
        env = os.environ if env is None else env
        err = SchedulerConfigError
        zones_raw = env.get("EMMA_MARKET_ZONES")
        borders_raw = env.get("EMMA_MARKET_BORDERS")
        return cls(
            enabled=env_flag(env, "EMMA_MARKET_SCHEDULER", cls.enabled, err),
            zones=_zones(zones_raw, "EMMA_MARKET_ZONES") if zones_raw is not None else cls.zones,
            borders=_borders(borders_raw, "EMMA_MARKET_BORDERS") if borders_raw is not None else cls.borders,
            interval_s=env_float(env, "EMMA_MARKET_SCHEDULER_INTERVAL_S", cls.interval_s, 0.01, err),
            lease_s=env_float(env, "EMMA_MARKET_FETCH_LEASE_S", 0.0, 1.0, err)
            if env.get("EMMA_MARKET_FETCH_LEASE_S")
            else None,
            no_data_retry_s=env_float(env, "EMMA_MARKET_NO_DATA_RETRY_S", cls.no_data_retry_s, 0.01, err),
            no_data_deadline_h=env_float(env, "EMMA_MARKET_NO_DATA_DEADLINE_H", cls.no_data_deadline_h, 0.0, err),
            retry_s=env_float(env, "EMMA_MARKET_FETCH_RETRY_S", cls.retry_s, 0.001, err),
            retry_max_s=env_float(env, "EMMA_MARKET_FETCH_RETRY_MAX_S", cls.retry_max_s, 0.001, err),
            max_attempts=env_int(env, "EMMA_MARKET_FETCH_MAX_ATTEMPTS", cls.max_attempts, 1, 100, err),
            batch=env_int(env, "EMMA_MARKET_FETCH_BATCH", cls.batch, 1, 1000, err),
            retention_days=env_float(
                env, "EMMA_MARKET_FETCH_JOB_RETENTION_DAYS", cls.retention_days, MIN_RETENTION_DAYS, err
            ),
        )


LEASE_MARGIN_S = 60.0  # rate-limit waits, parsing and the save, on top of the HTTP attempts
MIN_RETENTION_DAYS = 3.0
CLEANUP_INTERVAL_S = 3600.0  # how often a replica deletes old jobs (any replica may; deletes are idempotent)


def worst_case_fetch_s(sources: SourcesConfig) -> float:
    """The longest one job's fetch may take: every attempt up to its deadline, and between attempts
    the longest wait the fetch layer accepts (a Retry-After up to its cap, or the backoff's cap)."""
    attempts = sources.retries + 1
    longest_wait = max(sources.backoff_max_s, sources.retry_after_max_s)
    return attempts * sources.request_deadline_s + sources.retries * longest_wait


def fetch_lease_s(config: SchedulerConfig, sources: SourcesConfig) -> float:
    """The lease a claimed job is held for: the configured one, which must exceed the worst-case fetch
    (SchedulerConfigError otherwise), or that worst case plus LEASE_MARGIN_S."""
    worst = worst_case_fetch_s(sources)
    if config.lease_s is None:
        return worst + LEASE_MARGIN_S
    if config.lease_s <= worst:
        raise SchedulerConfigError(
            f"EMMA_MARKET_FETCH_LEASE_S={config.lease_s:g} must exceed the longest a fetch may take with its "
            f"retries, {worst:g} s ({sources.retries + 1} attempts of EMMA_MARKET_REQUEST_DEADLINE_S="
            f"{sources.request_deadline_s:g} and {sources.retries} waits of up to "
            f"{max(sources.backoff_max_s, sources.retry_after_max_s):g} s, EMMA_MARKET_RETRY_AFTER_MAX_S or "
            "EMMA_MARKET_BACKOFF_MAX_S); otherwise a second replica fetches a document the first is still retrying"
        )
    return config.lease_s


@dataclass(frozen=True, slots=True)
class Query:
    """One request to a source for one delivery day (CET)."""

    product: str  # DAY_AHEAD, INTRADAY, REDATA, ESIOS, FLOWS, CAPACITIES
    day: date
    zone: str = ""  # prices
    out_zone: str = ""  # flows, capacities
    in_zone: str = ""

    @property
    def key(self) -> str:
        where = self.zone or f"{self.out_zone}>{self.in_zone}"
        return f"{self.product}:{where}:{self.day.isoformat()}"

    @property
    def source(self) -> str:
        return {REDATA: "ree-redata", ESIOS: "ree-esios"}.get(self.product, "entsoe")

    def period(self) -> tuple[datetime, datetime]:
        start = datetime.combine(self.day, time(0), CET)
        end = datetime.combine(self.day + timedelta(days=1), time(0), CET)
        return start.astimezone(UTC), end.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Job:
    query: Query
    round: str  # DA, IDA1..3, PVPC, an hour (H13), backfill
    due_at: datetime
    give_up_at: datetime  # "no data" after this is final

    @property
    def key(self) -> str:
        return f"{self.query.key}:{self.round}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one fetch came to, as `emma market backfill` prints it."""

    job: Job
    status: str  # stored, unchanged, revised, not modified, no data, failed, retry, lost
    detail: str = ""

    def line(self) -> str:
        text = f"{self.job.query.key} {self.status}"
        return f"{text}: {self.detail}" if self.detail else text


def _at(day: date, days_before: int, moment: time) -> datetime:
    return datetime.combine(day - timedelta(days=days_before), moment, CET).astimezone(UTC)


def plan(config: SchedulerConfig, sources: SourcesConfig, now: datetime) -> list[Job]:
    """The jobs that are due by `now`: the publications of yesterday, today and tomorrow (CET)."""
    # Without a token ENTSO-E refuses every request: nothing of it is planned (start() says so once).
    entsoe = bool(sources.entsoe_token)
    deadline = timedelta(hours=config.no_data_deadline_h)
    today = now.astimezone(CET).date()
    jobs: list[Job] = []
    for day in (today - timedelta(days=1), today, today + timedelta(days=1)):
        for zone in config.zones:
            for product in zone_products(zone, sources):
                if product in (DAY_AHEAD, INTRADAY) and not entsoe:
                    continue
                rounds = {DAY_AHEAD: DAY_AHEAD_ROUNDS, INTRADAY: INTRADAY_ROUNDS}.get(product, REE_ROUNDS)
                for name, before, moment in rounds:
                    due = _at(day, before, moment)
                    if due <= now:
                        jobs.append(Job(Query(product, day, zone=zone), name, due, due + deadline))
    # Flows and capacities hourly: today's, as the hours pass (capacities also for tomorrow).
    hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    for out_zone, in_zone in config.borders if entsoe else ():
        for product, days in ((FLOWS, (today,)), (CAPACITIES, (today, today + timedelta(days=1)))):
            for day in days:
                query = Query(product, day, out_zone=out_zone, in_zone=in_zone)
                jobs.append(Job(query, f"H{hour:%Y%m%d%H}", hour, hour + timedelta(hours=1)))
    return jobs


def backfill_jobs(zone: str, products: Sequence[str], first: date, last: date, now: datetime) -> list[Job]:
    """One job per product and delivery day of [first, last] for `emma market backfill`."""
    jobs = []
    day = first
    while day <= last:
        for product in products:
            jobs.append(Job(Query(product, day, zone=zone), "backfill", now, now))
        day += timedelta(days=1)
    return jobs


class Clients:
    """The source clients of one scheduler (or one backfill), made on first use and closed together."""

    def __init__(self, sources: SourcesConfig) -> None:
        self.sources = sources
        self._entsoe: EntsoeClient | None = None
        self._redata: RedataClient | None = None
        self._esios: EsiosClient | None = None

    async def fetch(self, query: Query, validators: Validators | None) -> Fetched:
        start, end = query.period()
        if query.product in (DAY_AHEAD, INTRADAY, FLOWS, CAPACITIES):
            if self._entsoe is None:
                self._entsoe = EntsoeClient(self.sources)
            client = self._entsoe
            if query.product == DAY_AHEAD:
                return await client.day_ahead_prices(query.zone, start, end, validators)
            if query.product == INTRADAY:
                return await client.intraday_prices(query.zone, start, end, validators)
            if query.product == FLOWS:
                return await client.physical_flows(query.out_zone, query.in_zone, start, end, validators)
            return await client.forecast_capacity(query.out_zone, query.in_zone, start, end, validators)
        if query.product == REDATA:
            if self._redata is None:
                self._redata = RedataClient(self.sources)
            return await self._redata.market_prices(start, end, validators)
        if query.product == ESIOS:
            if self._esios is None:
                self._esios = EsiosClient(self.sources)
            return await self._esios.indicator(start, end, validators=validators)
        raise QueryRefused(query.source, f"unknown product {query.product!r}; query not sent")

    async def aclose(self) -> None:
        for client in (self._entsoe, self._redata, self._esios):
            if client is not None:
                await client.aclose()


_CLAIM_DUE = """
UPDATE market.fetch_jobs AS j
   SET lease_until = now() + make_interval(secs => $2), claimed_by = $3, attempts = j.attempts + 1
  FROM (SELECT job_key FROM market.fetch_jobs
         WHERE state IN ('pending', 'retry') AND due_at <= $4
           AND (lease_until IS NULL OR lease_until < now())
         ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED) AS due
 WHERE j.job_key = due.job_key
RETURNING j.job_key, j.query_key, j.product, j.zone, j.out_zone, j.in_zone, j.day, j.round, j.due_at,
          j.give_up_at, j.attempts
"""

_INSERT_JOB = """
INSERT INTO market.fetch_jobs (job_key, query_key, source, product, zone, out_zone, in_zone, day, round,
                               due_at, give_up_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (job_key) DO NOTHING
"""


def _job_of(row: asyncpg.Record) -> Job:
    query = Query(row["product"], row["day"], row["zone"], row["out_zone"], row["in_zone"])
    return Job(query, row["round"], row["due_at"], row["give_up_at"])


def _job_args(job: Job) -> tuple[Any, ...]:
    q = job.query
    return (
        job.key,
        q.key,
        q.source,
        q.product,
        q.zone,
        q.out_zone,
        q.in_zone,
        q.day,
        job.round,
        job.due_at,
        job.give_up_at,
    )


async def add_jobs(conn: Conn, jobs: Iterable[Job]) -> None:
    """Insert jobs not there yet (another replica may be planning the same ones right now)."""
    await conn.executemany(_INSERT_JOB, [_job_args(j) for j in jobs])


async def claim_due(conn: Conn, replica: str, now: datetime, limit: int, lease_s: float) -> list[tuple[Job, int]]:
    """Take up to `limit` due jobs no other replica holds; (job, attempt number)."""
    async with conn.transaction():
        rows = await conn.fetch(_CLAIM_DUE, limit, lease_s, replica, now)
    return [(_job_of(r), int(r["attempts"])) for r in rows]


async def claim_job(conn: Conn, job: Job, replica: str, lease_s: float) -> bool:
    """Take one given job now whatever its state (a backfill), unless another replica holds it."""
    async with conn.transaction():
        await conn.execute(_INSERT_JOB, *_job_args(job))
        row = await conn.fetchrow(
            "SELECT job_key FROM market.fetch_jobs WHERE job_key = $1"
            " AND (lease_until IS NULL OR lease_until < now()) FOR UPDATE SKIP LOCKED",
            job.key,
        )
        if row is None:
            return False
        await conn.execute(
            "UPDATE market.fetch_jobs SET lease_until = now() + make_interval(secs => $2), claimed_by = $3,"
            " attempts = attempts + 1, state = 'pending' WHERE job_key = $1",
            job.key,
            lease_s,
            replica,
        )
    return True


# The latest fetch per source and product that brought a current document (any replica's): what the
# emma.market.data.age gauge counts from. Jobs are kept for retention_days (a few thousand rows).
_FRESHEST = """
SELECT source, product, max(finished_at) AS at FROM market.fetch_jobs
 WHERE outcome IN ('stored', 'revised', 'unchanged', 'not modified') AND finished_at IS NOT NULL
 GROUP BY source, product
"""


async def report_freshness(conn: Conn) -> None:
    """Feed every replica's successful fetches into this process's market data age gauge, so each
    scheduler replica reports the same ages (and a restarted one does not start without any)."""
    for row in await conn.fetch(_FRESHEST):
        record_market_data(row["source"], row["product"], row["at"].timestamp())


async def delete_old_jobs(conn: Conn, retention_days: float, now: datetime) -> int:
    """Delete finished jobs (done, abandoned) that finished more than `retention_days` before `now`, and
    the validators of queries last answered as long ago; the number of jobs deleted."""
    cutoff = now - timedelta(days=retention_days)
    async with conn.transaction():
        deleted = await conn.fetchval(
            "WITH gone AS (DELETE FROM market.fetch_jobs WHERE state IN ('done', 'abandoned') AND finished_at < $1"
            " RETURNING 1) SELECT count(*) FROM gone",
            cutoff,
        )
        await conn.execute("DELETE FROM market.fetch_queries WHERE fetched_at < $1", cutoff)
        await conn.execute("DELETE FROM market.cleared_warnings WHERE cleared_at < $1", cutoff)
    return int(deleted)


class Runner:
    """Runs claimed jobs: fetch (outside any transaction), parse, save and finish in one transaction."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        clients: Clients,
        config: SchedulerConfig,
        replica: str,
        rng: Callable[[], float] = random.random,
        warnings: WarningPolicy | None = None,
        lease_s: float | None = None,
    ) -> None:
        self.pool = pool
        self.clients = clients
        self.config = config
        self.replica = replica
        self.lease_s = lease_s
        self._rng = rng
        self.warnings = warnings or WarningPolicy(borders=config.borders)

    async def run(self, job: Job, attempt: int, now: datetime) -> Outcome:
        if self.lease_s is not None and not await self._renew(job, self.lease_s):
            # Claimed with a batch whose earlier fetches outlasted this job's lease: another replica
            # has it now, so fetching it here too would fetch one document twice.
            return Outcome(job, "lost", "another replica took the job over (lease expired before its fetch began)")
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT etag, last_modified FROM market.fetch_queries WHERE query_key = $1", job.query.key
            )
        validators = Validators(row["etag"], row["last_modified"]) if row is not None else None
        source = job.query.source
        try:
            fetched = await self.clients.fetch(job.query, validators)
        except SourceUnavailable as exc:
            return await self._failed(job, attempt, now, source, str(exc), retry=True)
        except (TokenRefused, QueryRefused, BadResponse, SourceConfigError) as exc:
            return await self._failed(job, attempt, now, source, f"{type(exc).__name__}: {exc}", retry=False)
        fetched_at = datetime.now(UTC)
        if fetched.not_modified:
            outcome = await self._finish(job, "not modified", "", fetched, source, fetched_at)
            if outcome.status == "not modified":  # the stored document is confirmed current
                record_market_data(source, job.query.product, fetched_at.timestamp())
            return outcome
        if fetched.no_data:
            return await self._no_data(job, now, fetched, source, fetched_at)
        results: list[str] = []
        try:
            docs = await parse_documents(fetched.documents)
        except DocumentError as exc:
            return await self._failed(job, attempt, now, source, f"DocumentError: {exc}", retry=False)
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                if not await self._still_ours(conn, job):
                    return Outcome(job, "lost", "another replica took the job over (lease expired)")
                saved = await save_documents(conn, docs, fetched_at, self.warnings)
                results.extend(r.outcome.value for r in saved)
                status = _combined(results)
                await self._finish_in(conn, job, status, "", fetched, source, fetched_at)
        except StoreError as exc:  # the store refused the document: storing it again cannot help
            return await self._failed(job, attempt, now, source, f"StoreError: {exc}", retry=False)
        record_market_data(source, job.query.product, fetched_at.timestamp())
        return Outcome(job, status, ", ".join(f"{d.document_id} revision {d.revision}" for d in docs))

    async def _renew(self, job: Job, lease_s: float) -> bool:
        """Start the job's lease again as its fetch begins: the lease covers one fetch, and the jobs of a
        claimed batch run one after another. False when another replica has claimed it since (its lease
        ran out); a job no one took meanwhile is still this replica's, and the renewal keeps it so."""
        async with self.pool.acquire() as conn:
            renewed = await conn.fetchval(
                "UPDATE market.fetch_jobs SET lease_until = now() + make_interval(secs => $3)"
                " WHERE job_key = $1 AND claimed_by = $2 RETURNING true",
                job.key,
                self.replica,
                lease_s,
            )
        return bool(renewed)

    async def _still_ours(self, conn: Conn, job: Job) -> bool:
        holder = await conn.fetchval("SELECT claimed_by FROM market.fetch_jobs WHERE job_key = $1 FOR UPDATE", job.key)
        return bool(holder == self.replica)

    async def _finish(
        self, job: Job, status: str, detail: str, fetched: Fetched, source: str, fetched_at: datetime
    ) -> Outcome:
        async with self.pool.acquire() as conn, conn.transaction():
            if not await self._still_ours(conn, job):
                return Outcome(job, "lost", "another replica took the job over (lease expired)")
            await self._finish_in(conn, job, status, detail, fetched, source, fetched_at)
        return Outcome(job, status, detail)

    async def _finish_in(
        self,
        conn: Conn,
        job: Job,
        status: str,
        detail: str,
        fetched: Fetched,
        source: str,
        fetched_at: datetime,
        state: str = "done",
        due_at: datetime | None = None,
    ) -> None:
        await conn.execute(
            "UPDATE market.fetch_jobs SET state = $2, outcome = $3, reason = $4, lease_until = NULL,"
            " finished_at = $5, due_at = COALESCE($6, due_at),"
            # "no data yet" is not a failure: it does not count towards abandoning the job.
            " attempts = CASE WHEN $2 = 'retry' THEN 0 ELSE attempts END WHERE job_key = $1",
            job.key,
            state,
            status,
            detail[:2000],
            fetched_at,
            due_at,
        )
        await conn.execute(
            "INSERT INTO market.fetch_queries (query_key, etag, last_modified, fetched_at) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (query_key) DO UPDATE SET etag = EXCLUDED.etag, last_modified = EXCLUDED.last_modified,"
            " fetched_at = EXCLUDED.fetched_at",
            job.query.key,
            # A "no data" answer's validators would turn the day's first real document into a 304.
            None if fetched.no_data else fetched.validators.etag,
            None if fetched.no_data else fetched.validators.last_modified,
            fetched_at,
        )
        await conn.execute(
            "INSERT INTO market.source_status (source, last_success_at) VALUES ($1, $2)"
            " ON CONFLICT (source) DO UPDATE SET last_success_at = EXCLUDED.last_success_at",
            source,
            fetched_at,
        )

    async def _no_data(self, job: Job, now: datetime, fetched: Fetched, source: str, at: datetime) -> Outcome:
        final = now + timedelta(seconds=self.config.no_data_retry_s) > job.give_up_at
        async with self.pool.acquire() as conn, conn.transaction():
            if not await self._still_ours(conn, job):
                return Outcome(job, "lost", "another replica took the job over (lease expired)")
            # The source answered: it is up, so its success time moves even though the day is not there yet.
            await self._finish_in(
                conn,
                job,
                "no data",
                "" if final else "asking again later",
                fetched,
                source,
                at,
                state="done" if final else "retry",
                due_at=None if final else now + timedelta(seconds=self.config.no_data_retry_s),
            )
        return Outcome(job, "no data")

    async def _failed(self, job: Job, attempt: int, now: datetime, source: str, reason: str, retry: bool) -> Outcome:
        again = retry and attempt < self.config.max_attempts
        delay = min(self.config.retry_max_s, self.config.retry_s * 2.0 ** (attempt - 1)) * (0.5 + self._rng() / 2)
        async with self.pool.acquire() as conn, conn.transaction():
            if not await self._still_ours(conn, job):
                return Outcome(job, "lost", "another replica took the job over (lease expired)")
            await conn.execute(
                "UPDATE market.fetch_jobs SET state = $2, outcome = 'failed', reason = $3, lease_until = NULL,"
                " finished_at = now(), due_at = $4 WHERE job_key = $1",
                job.key,
                "retry" if again else "abandoned",
                reason[:2000],
                now + timedelta(seconds=delay) if again else job.due_at,
            )
            await conn.execute(
                "INSERT INTO market.source_status (source, last_error_at, last_error) VALUES ($1, now(), $2)"
                " ON CONFLICT (source) DO UPDATE SET last_error_at = EXCLUDED.last_error_at,"
                " last_error = EXCLUDED.last_error",
                source,
                reason[:2000],
            )
        log.warning(
            "market fetch failed",
            extra={"job": job.key, "attempt": attempt, "reason": reason[:300], "retry": again},
        )
        return Outcome(job, "failed", reason + (f" (trying again in {delay:.0f} s)" if again else ""))


def _combined(results: Sequence[str]) -> str:
    for status in ("revised", "stored"):
        if status in results:
            return status
    return results[0] if results else "unchanged"


Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class MarketScheduler:
    """The background loop of `emma serve market`: plan, claim due jobs, run them; `start`/`stop` like
    the other domains' workers (TelemetryMaintenance, CommandWorkers)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        replica: str,
        config: SchedulerConfig,
        sources: SourcesConfig,
        clock: Clock = _utcnow,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        interconnect: InterconnectConfig | None = None,
    ) -> None:
        self.pool = pool
        self.replica = replica
        self.config = config
        self.sources = sources
        self.clock = clock
        self._sleep = sleep
        self.lease_s = fetch_lease_s(config, sources)  # refuses a lease shorter than a fetch may take
        self.clients = Clients(sources)
        # Stored flows, capacities and day-ahead prices re-assess their borders' warnings.
        policy = WarningPolicy(interconnect or InterconnectConfig(), config.borders)
        self.runner = Runner(pool, self.clients, config, replica, warnings=policy, lease_s=self.lease_s)
        self._task: asyncio.Task[None] | None = None
        self._cleaned_at: datetime | None = None
        self.outcomes: list[Outcome] = []  # what this replica did, most recent last (bounded)

    @classmethod
    def from_env(cls, pool: asyncpg.Pool, replica: str, env: Mapping[str, str]) -> MarketScheduler:
        return cls(
            pool,
            replica,
            SchedulerConfig.from_env(env),
            SourcesConfig.from_env(env),
            interconnect=InterconnectConfig.from_env(env),
        )

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if not self.config.enabled:
            log.info("market scheduler off (EMMA_MARKET_SCHEDULER): nothing is fetched")
            return
        if not self.sources.entsoe_token:
            log.warning("EMMA_ENTSOE_TOKEN is not set: ENTSO-E prices, flows and capacities are not fetched")
        self._task = asyncio.create_task(self._run(), name="market-scheduler")
        log.info("market scheduler started", extra={"replica": self.replica})

    async def stop(self) -> None:
        if self._task:
            await stop_task(self._task)
            self._task = None
            log.info("market scheduler stopped", extra={"replica": self.replica})
        await self.clients.aclose()

    async def run_once(self) -> list[Outcome]:
        """One pass: plan the due jobs, then claim and run batches until nothing is due."""
        now = self.clock()
        async with self.pool.acquire() as conn:
            await add_jobs(conn, plan(self.config, self.sources, now))
            await report_freshness(conn)
            if self._cleaned_at is None or (now - self._cleaned_at).total_seconds() >= CLEANUP_INTERVAL_S:
                deleted = await delete_old_jobs(conn, self.config.retention_days, now)
                self._cleaned_at = now
                if deleted:
                    log.info("market fetch jobs deleted", extra={"deleted": deleted})
        done: list[Outcome] = []
        while True:
            async with self.pool.acquire() as conn:
                claimed = await claim_due(conn, self.replica, now, self.config.batch, self.lease_s)
            if not claimed:
                break
            for job, attempt in claimed:
                outcome = await self.runner.run(job, attempt, now)
                log.info("market fetch", extra={"job": job.key, "status": outcome.status})
                done.append(outcome)
        self.outcomes = (self.outcomes + done)[-1000:]
        return done

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # a database hiccup or a bug in one pass must not end the loop
                log_failed_pass(log, "market scheduler pass failed")
            await self._sleep(self.config.interval_s)


async def run_backfill(
    pool: asyncpg.Pool,
    sources: SourcesConfig,
    jobs: Sequence[Job],
    replica: str,
    config: SchedulerConfig | None = None,
    say: Callable[[Outcome], None] | None = None,
    interconnect: InterconnectConfig | None = None,
) -> list[Outcome]:
    """Fetch `jobs` now, through the scheduler's runner (one attempt each, "no data" final); stored
    documents assess their borders' warnings as the scheduler's do."""
    config = replace(config or SchedulerConfig(), max_attempts=1)
    lease_s = fetch_lease_s(config, sources)
    clients = Clients(sources)
    policy = WarningPolicy(interconnect or InterconnectConfig(), config.borders)
    runner = Runner(pool, clients, config, replica, warnings=policy, lease_s=lease_s)
    outcomes: list[Outcome] = []
    try:
        for job in jobs:
            async with pool.acquire() as conn:
                claimed = await claim_job(conn, job, replica, lease_s)
            if not claimed:
                outcome = Outcome(job, "failed", "another replica is fetching it right now")
            else:
                outcome = await runner.run(job, 1, job.give_up_at)
            outcomes.append(outcome)
            if say is not None:
                say(outcome)
    finally:
        await clients.aclose()
    return outcomes
