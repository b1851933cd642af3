"""A backtest of one stored site: its measured load or PV from the telemetry store (the channel
convention of measured.py) replayed as if live by backtest.py, off the event loop."""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import Executor
from datetime import datetime, timedelta
from functools import partial

import asyncpg

from services.forecast.backtest import BacktestResult, Model, backtest
from services.forecast.errors import ForecastError, ForecastInputError
from services.forecast.measured import read_measured
from services.forecast.model import SLOT
from services.forecast.runner import pv_system_of
from services.forecast.series import floor_slot
from services.names import SiteName
from services.registry import site_profile


async def backtest_site(
    pool: asyncpg.Pool,
    site: SiteName,
    model: Model,
    start: datetime,
    end: datetime,
    *,
    issue_every: timedelta = timedelta(hours=6),
    horizon_slots: int = 4 * 48,
    executor: Executor | None = None,
) -> BacktestResult:
    """Replay the site's measured `model` series ("load" or "pv") over [start, end): a forecast is
    issued every `issue_every` (on a grid from UTC midnight) from one day after the first measured
    slot in the range on, each from what was measured before it, and scored against what was
    measured after it. ForecastError for an unknown site;
    MissingSiteData for PV without a description; ForecastInputError when there is too little
    history (e.g. the site has no load*/pv* channel)."""
    if model not in ("load", "pv"):
        raise ForecastInputError("model", f"must be 'load' or 'pv', got {model!r}")
    if not start < end:
        raise ForecastInputError("end", "must be after start")
    async with pool.acquire() as conn:
        profile = await site_profile(conn, site)
        if profile is None:
            raise ForecastError(f"{site}: no such site")
        system = pv_system_of(profile) if model == "pv" else None
        first = floor_slot(start)
        last = floor_slot(end - timedelta(microseconds=1)) + SLOT
        measured = await read_measured(conn, site, first, last)
    history = measured.pv if model == "pv" else measured.load
    known = [i for i, (_, v) in enumerate(history) if math.isfinite(v)]
    if not known:
        kind = "PV (pv*/ActivePower)" if model == "pv" else "load (load*/ActivePower)"
        raise ForecastInputError("history", f"{site} has no measured {kind} between {first} and {last}")
    # The replay starts at the first measured slot, not at `start`: a range opening before the site
    # reported would otherwise issue its first forecasts from nothing (cold starts that say nothing
    # about the model), and the same series gives the same scores whether it is read from the store
    # or from a file (backtest() anchors its issues on the series' first slot).
    history = history[known[0] : known[-1] + 1]
    work = partial(
        backtest,
        history,
        model,
        issue_every=issue_every,
        horizon_slots=horizon_slots,
        country=profile.country_code,
        time_zone=profile.time_zone,
        system=system,
    )
    return await asyncio.get_running_loop().run_in_executor(executor, work)
