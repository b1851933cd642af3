"""Reads of stored forecasts and runs, mapped to the contract's messages."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from emma.forecast.v1 import forecast_pb2
from google.protobuf import duration_pb2

from services.forecast.model import SLOT
from services.names import SiteName
from services.platform.migrations import Conn
from services.platform.rpc import timestamp

KINDS: dict[forecast_pb2.ForecastKind.ValueType, str] = {
    forecast_pb2.FORECAST_KIND_PV_POWER: "pv_power",
    forecast_pb2.FORECAST_KIND_SITE_LOAD: "site_load",
    forecast_pb2.FORECAST_KIND_NET_LOAD: "net_load",
}
KIND_NUMBERS: dict[str, forecast_pb2.ForecastKind.ValueType] = {v: k for k, v in KINDS.items()}
TRIGGERS = {"scheduled": forecast_pb2.FORECAST_TRIGGER_SCHEDULED, "on_demand": forecast_pb2.FORECAST_TRIGGER_ON_DEMAND}
STATES = {"succeeded": forecast_pb2.FORECAST_RUN_STATE_SUCCEEDED, "failed": forecast_pb2.FORECAST_RUN_STATE_FAILED}


def _duration(delta: timedelta) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(delta)
    return d


def forecast_message(row: Any, slots: list[Any] | None = None) -> forecast_pb2.Forecast:
    site = f"organizations/{row['org_id']}/sites/{row['site_id']}"
    count = len(slots) if slots is not None else row["slot_count"]
    msg = forecast_pb2.Forecast(
        name=f"{site}/forecasts/{row['forecast_id']}",
        run=f"{site}/forecastRuns/{row['run_id']}",
        kind=KIND_NUMBERS[row["kind"]],
        issue_time=timestamp(row["issue_time"]),
        start_time=timestamp(row["start_time"]),
        step=_duration(SLOT),
        horizon=_duration(SLOT * count),
        model_version=row["model_version"],
        degraded_reasons=list(row["degraded_reasons"]),
        weather_source=row["weather_source"],
    )
    if row["weather_fetch_time"] is not None:
        msg.weather_fetch_time.CopyFrom(timestamp(row["weather_fetch_time"]))
    for s in slots or ():
        msg.slots.add(start_time=timestamp(s["slot_start"]), p10_w=s["p10_w"], p50_w=s["p50_w"], p90_w=s["p90_w"])
    return msg


async def slots_of(conn: Conn, forecast_id: uuid.UUID, until: datetime | None = None) -> list[Any]:
    return list(
        await conn.fetch(
            """SELECT slot_start, p10_w, p50_w, p90_w FROM forecast.forecast_values
               WHERE forecast_id = $1 AND ($2::timestamptz IS NULL OR slot_start < $2) ORDER BY slot_start""",
            forecast_id,
            until,
        )
    )


async def run_message(conn: Conn, run_id: uuid.UUID) -> forecast_pb2.ForecastRun:
    run = await conn.fetchrow("SELECT * FROM forecast.runs WHERE run_id = $1", run_id)
    assert run is not None
    rows = await conn.fetch("SELECT * FROM forecast.forecasts WHERE run_id = $1 ORDER BY kind", run_id)
    forecasts = [forecast_message(r) for r in rows]
    reasons = list(dict.fromkeys(reason for f in forecasts for reason in f.degraded_reasons))
    return forecast_pb2.ForecastRun(
        name=f"organizations/{run['org_id']}/sites/{run['site_id']}/forecastRuns/{run['run_id']}",
        issue_time=timestamp(run["issue_time"]),
        state=STATES[run["status"]],
        state_reason=run["status_reason"],
        trigger=TRIGGERS[run["trigger"]],
        forecasts=forecasts,
        degraded_reasons=reasons,
        creator=run["creator"],
    )


async def run_of_request(conn: Conn, creator: str, request_id: str) -> uuid.UUID | None:
    value = await conn.fetchval(
        "SELECT run_id FROM forecast.runs WHERE creator = $1 AND request_id = $2", creator, request_id
    )
    return None if value is None else uuid.UUID(str(value))


async def run_request(conn: Conn, run_id: uuid.UUID) -> tuple[SiteName, set[str], int]:
    """What a stored run was asked for: its site, kinds and horizon in slots (a request_id's content)."""
    run = await conn.fetchrow("SELECT org_id, site_id FROM forecast.runs WHERE run_id = $1", run_id)
    assert run is not None
    rows = await conn.fetch("SELECT kind, slot_count FROM forecast.forecasts WHERE run_id = $1", run_id)
    slots = max((int(r["slot_count"]) for r in rows), default=0)
    return SiteName(run["org_id"], run["site_id"]), {str(r["kind"]) for r in rows}, slots


async def latest(
    conn: Conn, site: SiteName, kind: str, as_of: datetime, horizon: timedelta | None
) -> forecast_pb2.Forecast | None:
    row = await conn.fetchrow(
        """SELECT * FROM forecast.forecasts WHERE org_id = $1 AND site_id = $2 AND kind = $3 AND issue_time <= $4
           ORDER BY issue_time DESC LIMIT 1""",
        site.org,
        site.site,
        kind,
        as_of,
    )
    if row is None:
        return None
    until = row["start_time"] + horizon if horizon is not None else None
    return forecast_message(row, await slots_of(conn, row["forecast_id"], until))


async def list_forecasts(
    conn: Conn,
    site: SiteName,
    kind: str | None,
    start: datetime | None,
    end: datetime | None,
    full: bool,
    offset: int,
    limit: int,
) -> list[forecast_pb2.Forecast]:
    rows = await conn.fetch(
        """SELECT * FROM forecast.forecasts WHERE org_id = $1 AND site_id = $2
             AND ($3::text IS NULL OR kind = $3)
             AND ($4::timestamptz IS NULL OR issue_time >= $4)
             AND ($5::timestamptz IS NULL OR issue_time < $5)
           ORDER BY issue_time DESC, kind OFFSET $6 LIMIT $7""",
        site.org,
        site.site,
        kind,
        start,
        end,
        offset,
        limit,
    )
    return [forecast_message(r, await slots_of(conn, r["forecast_id"]) if full else None) for r in rows]


async def accuracy_bands(
    conn: Conn, site: SiteName, kind: str, start: datetime, end: datetime
) -> list[forecast_pb2.AccuracyBand]:
    """Per band: MAE, bias, nMAE and skill weighted by slots; RMSE from the slot-weighted mean square."""
    rows = await conn.fetch(
        """SELECT s.band_start_h, s.band_end_h, count(*) AS forecasts, sum(s.n) AS n,
                  sum(s.n * s.mae_w) / sum(s.n) AS mae_w,
                  sqrt(sum(s.n * s.rmse_w * s.rmse_w) / sum(s.n)) AS rmse_w,
                  coalesce(sum(s.n * s.nmae) / nullif(sum(s.n) FILTER (WHERE s.nmae IS NOT NULL), 0), 0) AS nmae,
                  sum(s.n * s.bias_w) / sum(s.n) AS bias_w,
                  coalesce(sum(s.n * s.skill) / nullif(sum(s.n) FILTER (WHERE s.skill IS NOT NULL), 0), 0) AS skill
           FROM forecast.scores s JOIN forecast.forecasts f USING (forecast_id)
           WHERE f.org_id = $1 AND f.site_id = $2 AND f.kind = $3 AND f.issue_time >= $4 AND f.issue_time < $5
             AND s.n > 0
           GROUP BY s.band_start_h, s.band_end_h ORDER BY s.band_start_h""",
        site.org,
        site.site,
        kind,
        start,
        end,
    )
    return [
        forecast_pb2.AccuracyBand(
            horizon_start=_duration(timedelta(hours=r["band_start_h"])),
            horizon_end=_duration(timedelta(hours=r["band_end_h"])),
            forecast_count=r["forecasts"],
            slot_count=r["n"],
            mae_w=r["mae_w"],
            rmse_w=r["rmse_w"],
            nmae=r["nmae"],
            bias_w=r["bias_w"],
            skill=r["skill"],
        )
        for r in rows
    ]
