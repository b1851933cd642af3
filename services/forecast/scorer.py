"""Scoring of stored forecasts once what they forecast has happened (forecast.scores).

A forecast is due when its last slot ended `delay` ago (late uploads of an edge that was offline get
that long to arrive). Its actuals are the site's measured series by the channel convention
(measured.py): PV power, site load, or load minus PV for net load. The reference is persistence: the
last measured value before the forecast's first slot, held flat. Each horizon band (hours after the
issue time: 0-6, 6-24, 24-48, 48-72) gets one row of scores over its slots that have an actual; a
band without any gets no row. A due forecast is marked scored even when nothing could be scored (no
measured channel, an edge that never reported): it is not looked at again.

Replicas claim forecasts with FOR UPDATE SKIP LOCKED inside the transaction that writes the scores,
so two scorers never score one forecast twice and a scorer that dies leaves it unscored.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
import numpy as np

from services.forecast.errors import ForecastInputError
from services.forecast.measured import Measured, read_measured
from services.forecast.model import SLOT
from services.forecast.scoring import Scores, score
from services.names import SiteName
from services.platform.migrations import Conn

BANDS_H: tuple[tuple[int, int], ...] = ((0, 6), (6, 24), (24, 48), (48, 72))
# How far back persistence looks for the last measured value before the first slot.
PERSISTENCE_LOOKBACK = timedelta(hours=6)


@dataclass(frozen=True)
class BandScore:
    band_start_h: int
    band_end_h: int
    scores: Scores


def actuals(kind: str, measured: Measured) -> list[float]:
    """The measured values of `kind` per slot of `measured` (NaN where unknown)."""
    load = [v for _, v in measured.load] if measured.load else None
    pv = [v for _, v in measured.pv] if measured.pv else None
    n = max(len(measured.load), len(measured.pv))
    if kind == "pv_power":
        return pv if pv is not None else [math.nan] * n
    if kind == "site_load":
        return load if load is not None else [math.nan] * n
    if load is None or pv is None:
        return [math.nan] * n
    return [a - b for a, b in zip(load, pv, strict=True)]


def band_scores(
    issue_time: datetime, start: datetime, p50: list[float], actual: list[float], persistence: float
) -> list[BandScore]:
    """Scores per horizon band of a forecast of len(p50) slots from `start`, against `actual` (same slots)."""
    out = []
    hours = np.array([((start + SLOT * i) - issue_time) / timedelta(hours=1) for i in range(len(p50))])
    for lo, hi in BANDS_H:
        pick = np.flatnonzero((hours >= lo) & (hours < hi))
        if len(pick) == 0:
            continue
        try:
            scores = score([p50[i] for i in pick], [actual[i] for i in pick], [persistence] * len(pick))
        except ForecastInputError:
            continue  # no actual in this band
        out.append(BandScore(lo, hi, scores))
    return out


async def _score_one(conn: Conn, row: asyncpg.Record) -> int:
    site = SiteName(row["org_id"], row["site_id"])
    start: datetime = row["start_time"]
    slots: int = row["slot_count"]
    before = start - PERSISTENCE_LOOKBACK
    measured = await read_measured(conn, site, before, start + SLOT * slots)
    values = actuals(row["kind"], measured)
    lead = int(PERSISTENCE_LOOKBACK / SLOT)
    known_before = [v for v in values[:lead] if math.isfinite(v)]
    persistence = known_before[-1] if known_before else math.nan
    stored = await conn.fetch(
        "SELECT p50_w FROM forecast.forecast_values WHERE forecast_id = $1 ORDER BY slot_start", row["forecast_id"]
    )
    p50 = [float(r["p50_w"]) for r in stored]
    actual = values[lead:] if values else [math.nan] * slots
    rows = band_scores(row["issue_time"], start, p50, actual, persistence) if len(actual) == len(p50) else []
    await conn.executemany(
        """INSERT INTO forecast.scores (forecast_id, band_start_h, band_end_h, n, mae_w, rmse_w, nmae, bias_w, skill)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING""",
        [
            (
                row["forecast_id"],
                b.band_start_h,
                b.band_end_h,
                b.scores.n,
                b.scores.mae_w,
                b.scores.rmse_w,
                b.scores.nmae,
                b.scores.bias_w,
                b.scores.skill,
            )
            for b in rows
        ],
    )
    await conn.execute("UPDATE forecast.forecasts SET scored_at = now() WHERE forecast_id = $1", row["forecast_id"])
    return len(rows)


async def score_due(pool: asyncpg.Pool, now: datetime, delay: timedelta, limit: int = 100) -> list[uuid.UUID]:
    """Score up to `limit` forecasts whose last slot ended at least `delay` before `now`; returns their ids."""
    done: list[uuid.UUID] = []
    while len(done) < limit:
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """SELECT forecast_id, org_id, site_id, kind, issue_time, start_time, slot_count
                   FROM forecast.forecasts
                   WHERE scored_at IS NULL AND start_time + slot_count * interval '15 minutes' <= $1
                   ORDER BY issue_time FOR UPDATE SKIP LOCKED LIMIT 1""",
                now - delay,
            )
            if row is None:
                break
            await _score_one(conn, row)
            done.append(uuid.UUID(str(row["forecast_id"])))
    return done
