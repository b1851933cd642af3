"""The forecast domain's SQL: runs, their forecasts and slots, written once and never overwritten."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from services.forecast.model import Forecast
from services.names import SiteName
from services.platform.migrations import Conn


@dataclass(frozen=True)
class MadeForecast:
    """One kind of a run, as the runner made it."""

    kind: str  # pv_power, site_load, net_load
    forecast: Forecast
    weather_source: str = ""
    weather_fetch_time: datetime | None = None


async def save_run(
    conn: Conn,
    site: SiteName,
    issue_time: datetime,
    made: list[MadeForecast],
    *,
    trigger: str,
    creator: str,
    request_id: str | None,
) -> uuid.UUID:
    """Store a run with its forecasts and slots in the caller's transaction; returns the run id."""
    run_id = uuid.uuid4()
    await conn.execute(
        """INSERT INTO forecast.runs (run_id, org_id, site_id, issue_time, status, trigger, creator, request_id)
           VALUES ($1, $2, $3, $4, 'succeeded', $5, $6, $7)""",
        run_id,
        site.org,
        site.site,
        issue_time,
        trigger,
        creator,
        request_id,
    )
    for m in made:
        forecast_id = uuid.uuid4()
        f = m.forecast
        await conn.execute(
            """INSERT INTO forecast.forecasts (forecast_id, run_id, org_id, site_id, kind, issue_time, start_time,
                   slot_count, model_version, degraded_reasons, weather_source, weather_fetch_time)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)""",
            forecast_id,
            run_id,
            site.org,
            site.site,
            m.kind,
            issue_time,
            f.start,
            f.slots,
            f.model_version,
            list(f.degraded),
            m.weather_source,
            m.weather_fetch_time,
        )
        await conn.copy_records_to_table(
            "forecast_values",
            schema_name="forecast",
            columns=["forecast_id", "slot_start", "p10_w", "p50_w", "p90_w"],
            records=[
                (forecast_id, t, lo, mid, hi) for t, lo, mid, hi in zip(f.times(), f.p10, f.p50, f.p90, strict=True)
            ],
        )
    return run_id
