"""The receding horizon (docs/optimizer.md): every plan in force whose inputs were assembled from the
platform is re-optimised at least every EMMA_OPTIMIZER_INTERVAL_S (15 minutes), and sooner when a
price, a forecast or a measured state of charge moved beyond its threshold. The new plan starts at the
current quarter hour from the state measured now, and goes as far as the prices reach (at most
EMMA_OPTIMIZER_HORIZON_SLOTS).

Replicas take turns through a transaction-scoped advisory lock per set of sites: the replica holding
it re-reads the plan in force, decides, solves and stores the new run before the lock is released at
commit, so a second replica sees the new run and finds nothing due. A plan given explicit inputs is
never touched (nothing could refresh its inputs), nor one a newer explicit run replaced.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from collections.abc import Callable

import asyncpg
from emma.optimizer.v1 import optimizer_pb2 as pb

from core.tasks import stop_task
from services.names import SiteName, parse_site
from services.optimizer import convert, store
from services.optimizer.assemble import assemble, price_slots, quarter_hour
from services.optimizer.config import AssemblyConfig, HorizonConfig
from services.optimizer.errors import OptimizerInputError
from services.optimizer.inputs import SLOT
from services.optimizer.runs import solve_run, store_run
from services.platform.runtime import Runtime

log = logging.getLogger("emma.optimizer")

Clock = Callable[[], dt.datetime]
CREATOR = "optimizer:receding-horizon"
_LOCK_SPACE = "emma-optimizer-horizon"


def _times(inputs: pb.OptimizationInputs) -> list[dt.datetime]:
    start = inputs.start_time.ToDatetime(dt.UTC)
    return [start + SLOT * i for i in range(inputs.slot_count)]


def _moved(
    old: list[float], old_times: list[dt.datetime], new: list[float], new_times: list[dt.datetime]
) -> tuple[float, dt.datetime] | None:
    """The largest move of a per-slot series between two plans over the slots both cover."""
    before = dict(zip(old_times, old, strict=True))
    worst: tuple[float, dt.datetime] | None = None
    for t, v in zip(new_times, new, strict=True):
        if t in before:
            d = abs(v - before[t])
            if worst is None or d > worst[0]:
                worst = (d, t)
    return worst


def _planned_soc(run: store.StoredRun, device: str, at: dt.datetime) -> float | None:
    """The plan's state of charge of `device` at the start of the slot beginning `at`, Wh."""
    start = run.inputs.start_time.ToDatetime(dt.UTC)
    index = int((at - start) / SLOT)
    if index <= 0:
        return next((b.soc_wh for b in run.inputs.batteries if b.device == device), None)
    for s in run.result.schedules:
        if s.asset == device and s.kind == pb.ASSET_KIND_BATTERY and index - 1 < len(s.soc_wh):
            return s.soc_wh[index - 1]
    return None


def drift(current: store.StoredRun, fresh: pb.OptimizationInputs, config: HorizonConfig) -> str | None:
    """Why the fresh inputs call for a new plan, or None when they are within every threshold."""
    old, old_t, new_t = current.inputs, _times(current.inputs), _times(fresh)
    if sorted(b.device for b in old.batteries) != sorted(b.device for b in fresh.batteries) or sorted(
        a.device for a in old.pv_arrays
    ) != sorted(a.device for a in fresh.pv_arrays):
        return "the sites' devices changed"
    if sorted(e.device for e in old.ev_chargers) != sorted(e.device for e in fresh.ev_chargers):
        return "an EV session began or ended"
    moved = _moved(list(old.prices.market_price_eur_per_mwh), old_t, list(fresh.prices.market_price_eur_per_mwh), new_t)
    if moved is not None and moved[0] > config.price_threshold_eur_per_mwh:
        return f"prices moved {moved[0]:.2f} EUR/MWh at {moved[1].isoformat()}"
    series: list[tuple[str, list[float], list[float]]] = []
    old_sites = {s.site: s for s in old.sites}
    for s in fresh.sites:
        if s.site in old_sites:
            series.append((f"the load forecast of {s.site}", list(old_sites[s.site].load_w), list(s.load_w)))
    old_pv = {a.device: a for a in old.pv_arrays}
    for a in fresh.pv_arrays:
        series.append((f"the PV forecast of {a.device}", list(old_pv[a.device].forecast_w), list(a.forecast_w)))
    for what, before, after in series:
        moved = _moved(before, old_t, after, new_t)
        if moved is not None and moved[0] > config.forecast_threshold_w:
            return f"{what} moved {moved[0]:.0f} W at {moved[1].isoformat()}"
    start = fresh.start_time.ToDatetime(dt.UTC)
    for b in fresh.batteries:
        planned = _planned_soc(current, b.device, start)
        if planned is not None and abs(b.soc_wh - planned) > config.soc_threshold * b.capacity_wh:
            return f"the state of charge of {b.device} is {b.soc_wh:.0f} Wh, the plan expected {planned:.0f} Wh"
    return None


class RecedingHorizon:
    def __init__(
        self,
        pool: asyncpg.Pool,
        config: HorizonConfig,
        assembly: AssemblyConfig,
        clock: Clock = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._pool = pool
        self._config = config
        self._assembly = assembly
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def tick(self) -> list[pb.OptimizationRun]:
        """One pass over the plans in force; returns the runs this replica made."""
        now = self._clock()
        async with self._pool.acquire() as conn:
            plans = await store.active_assembled_runs(conn, now)
        made: list[pb.OptimizationRun] = []
        for plan in plans:
            try:
                run = await self._refresh(list(plan.result.sites), now)
            except (OptimizerInputError, ValueError) as exc:
                # Inputs the model refuses (a forecast out of its range): the old plan stays in force.
                log.warning("receding horizon: %s: %s", ",".join(plan.result.sites), exc)
                continue
            if run is not None:
                made.append(run)
        return made

    async def _refresh(self, site_names: list[str], now: dt.datetime) -> pb.OptimizationRun | None:
        key = ",".join(sorted(site_names))
        async with self._pool.acquire() as conn, conn.transaction():
            locked = await conn.fetchval(
                "SELECT pg_try_advisory_xact_lock(hashtext($1), hashtext($2))", _LOCK_SPACE, key
            )
            if not locked:
                return None  # another replica is on these sites right now
            # Re-read under the lock: another replica may have just stored a newer plan.
            current = await store.active_run(conn, site_names[0], now)
            if (
                current is None
                or not current.result.inputs_assembled
                or sorted(current.result.sites) != sorted(site_names)
            ):
                return None
            # Fresh inputs that admitted no schedule are tried again after an interval, not every poll.
            failed = await store.latest_failed_time(conn, site_names, CREATOR)
            if failed is not None and (now - failed).total_seconds() < self._config.interval_s:
                return None
            sites: list[SiteName] = [parse_site(s) for s in site_names]
            start = quarter_hour(now)
            slots = await price_slots(conn, sites, start, self._config.horizon_slots, self._assembly)
            slots = max(slots, self._config.min_slots)
            fresh = await assemble(
                conn,
                sites,
                start=start,
                slots=slots,
                now=now,
                config=self._assembly,
                objective=current.inputs.objective,
            )
            if fresh.missing:
                log.warning(
                    "receding horizon: %s cannot be re-optimised, the plan in force stays; missing: %s",
                    key,
                    "; ".join(fresh.missing),
                )
                return None
            age = (now - current.result.create_time.ToDatetime(dt.UTC)).total_seconds()
            # Due when the next pass would come too late: no plan is older than the interval.
            due = age + self._config.poll_s >= self._config.interval_s
            reason = "interval" if due else drift(current, fresh.inputs, self._config)
            if reason is None:
                return None
            inputs = fresh.inputs
            if current.inputs.HasField("time_limit"):
                inputs.time_limit.CopyFrom(current.inputs.time_limit)
            problem = convert.problem(inputs)
            # The plan in force is the newest by create_time, a tie broken by the random run id: two
            # plans made at one clock reading must not tie, or the older could stay in force.
            current_created = current.result.create_time.ToDatetime(dt.UTC)
            created = now if now != current_created else now + dt.timedelta(microseconds=1)
            run_id, run, infeasible = await solve_run(
                current.org, site_names, inputs, problem, assembled=True, trigger_reason=reason, created=created
            )
            await store_run(conn, run_id, run, inputs, problem, org=current.org, creator=CREATOR)
        if infeasible is not None:
            log.warning("receding horizon: %s: the fresh inputs admit no schedule: %s", key, infeasible)
        else:
            log.info("receding horizon: %s re-optimised (%s): %s", key, reason, run.name)
        run.inputs.CopyFrom(inputs)
        return run

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("receding horizon: %s; retrying", exc)
            except Exception:  # the task must outlive a bug: a dead task would re-plan nothing again
                log.exception("receding horizon: unexpected error; retrying")
            await asyncio.sleep(self._config.poll_s)

    async def start(self) -> None:
        if not self._config.enabled:
            log.info("receding horizon off (EMMA_OPTIMIZER_SCHEDULER): plans are not re-optimised")
            return
        self._task = asyncio.create_task(self._loop(), name="optimizer-receding-horizon")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None


def horizon_of(runtime: Runtime) -> RecedingHorizon:
    """The worker factory ServiceSpec names: settings from the process's environment."""
    env = runtime.config.env or os.environ
    return RecedingHorizon(runtime.pool, HorizonConfig.from_env(env), AssemblyConfig.from_env(env))
