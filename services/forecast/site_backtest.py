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
    issued every `issue_every` from one day after `start` on, each from what was measured before it,
    and scored against what was measured after it. ForecastError for an unknown site;
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
    if not any(math.isfinite(v) for _, v in history):
        kind = "PV (pv*/ActivePower)" if model == "pv" else "load (load*/ActivePower)"
        raise ForecastInputError("history", f"{site} has no measured {kind} between {first} and {last}")
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
