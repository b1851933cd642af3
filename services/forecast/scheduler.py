"""The forecast scheduler: every site once per round (EMMA_FORECAST_INTERVAL, 6 hours by default).

Rounds start at multiples of the interval since the Unix epoch (00:00, 06:00, 12:00, 18:00 UTC for 6
hours), so every replica computes the same round. A replica inserts the round's rows for every site
(ON CONFLICT DO NOTHING) and claims one at a time with FOR UPDATE SKIP LOCKED and a lease, the market
fetch scheduler's approach: with two replicas each site is forecast once per round.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg

from core.tasks import stop_task
from services.forecast.config import SchedulerConfig
from services.forecast.errors import ForecastError
from services.forecast.runner import WeatherSource, kinds_for, run_site
from services.forecast.scorer import score_due
from services.forecast.weather import SharedWeather, WeatherConfig
from services.names import SiteName
from services.platform.runtime import Runtime
from services.registry import all_sites, site_profile

log = logging.getLogger("emma.forecast")

Clock = Callable[[], datetime]


def round_start(now: datetime, interval_s: float) -> datetime:
    """The start of the round `now` is in."""
    seconds = now.timestamp()
    return datetime.fromtimestamp(seconds - seconds % interval_s, UTC)


class ForecastScheduler:
    def __init__(
        self,
        pool: asyncpg.Pool,
        replica: str,
        config: SchedulerConfig,
        weather: WeatherConfig,
        clock: Clock = lambda: datetime.now(UTC),
        source: WeatherSource | None = None,
    ) -> None:
        self._pool = pool
        self._replica = replica
        self._config = config
        self._weather = weather
        # The process's shared weather client (scheduler_of); None: a client per run from `weather`.
        self._source = source
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def run_due(self) -> list[SiteName]:
        """Forecast every site of the current round not yet claimed; returns the sites this replica ran."""
        now = self._clock()
        start = round_start(now, self._config.interval_s)
        async with self._pool.acquire() as conn:
            sites = await all_sites(conn)
            await conn.executemany(
                """INSERT INTO forecast.schedule (org_id, site_id, round_start) VALUES ($1, $2, $3)
                   ON CONFLICT DO NOTHING""",
                [(s.org, s.site, start) for s in sites],
            )
        ran: list[SiteName] = []
        while (site := await self._claim(start, now)) is not None:
            await self._run(site, start, now)
            ran.append(site)
        return ran

    async def _claim(self, start: datetime, now: datetime) -> SiteName | None:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                """UPDATE forecast.schedule s SET claimed_by = $2, lease_until = $3 + make_interval(secs => $4)
                   FROM (SELECT org_id, site_id FROM forecast.schedule
                         WHERE round_start = $1 AND state = 'pending' AND (lease_until IS NULL OR lease_until < $3)
                         ORDER BY org_id, site_id FOR UPDATE SKIP LOCKED LIMIT 1) c
                   WHERE s.org_id = c.org_id AND s.site_id = c.site_id AND s.round_start = $1
                   RETURNING s.org_id, s.site_id""",
                start,
                self._replica,
                now,
                self._config.lease_s,
            )
        return None if row is None else SiteName(row["org_id"], row["site_id"])

    async def _run(self, site: SiteName, start: datetime, now: datetime) -> None:
        state, reason, run_id = "done", "", None
        async with self._pool.acquire() as conn:
            profile = await site_profile(conn, site)
        if profile is None:
            state, reason = "failed", "the site was deleted"
        else:
            try:
                run_id = await run_site(
                    self._pool,
                    profile,
                    kinds_for(profile),
                    self._config.horizon_slots,
                    self._weather,
                    issue_time=now,
                    trigger="scheduled",
                    creator="scheduler",
                    weather=self._source,
                )
            except ForecastError as exc:
                state, reason = "failed", str(exc)
                log.warning("forecast of %s failed: %s", site, exc)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                raise  # the database or the network: the loop retries, the lease hands the site on
            except Exception as exc:  # a bug on one site's data must not stop every other site's forecast
                state, reason = "failed", f"internal error ({type(exc).__name__}; the server logged it)"
                log.exception("forecast of %s failed unexpectedly", site)
        async with self._pool.acquire() as conn:
            await conn.execute(
                """UPDATE forecast.schedule SET state = $4, reason = $5, run_id = $6
                   WHERE org_id = $1 AND site_id = $2 AND round_start = $3""",
                site.org,
                site.site,
                start,
                state,
                reason,
                run_id,
            )

    async def score_due(self) -> list[uuid.UUID]:
        """Score the stored forecasts whose actuals have arrived (scorer.py); returns their ids."""
        return await score_due(self._pool, self._clock(), timedelta(seconds=self._config.score_delay_s))

    async def tick(self) -> None:
        """One pass of the worker: this round's unclaimed sites, then the forecasts due for scoring."""
        await self.run_due()
        await self.score_due()

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("forecast scheduler: %s; retrying", exc)
            except Exception:  # the task must outlive a bug: a dead task would forecast nothing again
                log.exception("forecast scheduler: unexpected error; retrying")
            await asyncio.sleep(self._config.poll_s)

    async def start(self) -> None:
        if not self._config.enabled:
            log.info("forecast scheduler off (EMMA_FORECAST_SCHEDULER): no scheduled runs")
            return
        self._task = asyncio.create_task(self._loop(), name="forecast-scheduler")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None


def scheduler_of(runtime: Runtime) -> ForecastScheduler:
    """The worker factory ServiceSpec names: settings from the process's environment."""
    env = runtime.config.env or os.environ
    weather = WeatherConfig.from_env(env)
    return ForecastScheduler(
        runtime.pool,
        runtime.replica_id,
        SchedulerConfig.from_env(env),
        weather,
        source=SharedWeather.of(runtime, weather),
    )
