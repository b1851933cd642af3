"""`emma forecast run`: ask the running cloud's ForecastService for a forecast of a site now and print
the stored run, each forecast with its energy over the horizon (p10/p50/p90).

It goes through the API as `emma edge init` does (a login as --email, the password from EMMA_PASSWORD
or a prompt), so the caller's role is checked (an operator's action), the run is audited and stored
like any other, and the same command works against `emma up` and a cloud elsewhere. A run that failed
exits 1; an error the cloud answered (an unknown site, a site without PV description) is one line
naming it, exit 1.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import grpc
from emma.forecast.v1 import forecast_pb2, forecast_pb2_grpc
from emma.identity.v1 import identity_pb2, identity_pb2_grpc
from google.protobuf import duration_pb2, timestamp_pb2

from core.errors import ConfigError, EmmaError
from launcher.cloud_client import cloud_channel, failure_text, operator_password, tls_for
from launcher.operator_db import operator_dsn
from launcher.times import utc_text
from services.errors import ServiceError
from services.names import parse_site

CALL_TIMEOUT_S = 60.0
KINDS = {
    "pv": forecast_pb2.FORECAST_KIND_PV_POWER,
    "load": forecast_pb2.FORECAST_KIND_SITE_LOAD,
    "net": forecast_pb2.FORECAST_KIND_NET_LOAD,
}
MAX_HORIZON_H = 72.0
SLOT_S = 900


class ForecastCliError(EmmaError):
    """The cloud refused or could not be reached; the message says which call and why."""


@dataclass(frozen=True)
class Connection:
    cloud: str
    email: str
    password: str
    tls: bool
    ca_file: Path | None


def connection_from_args(args: argparse.Namespace, env: dict[str, str]) -> Connection:
    password = operator_password(env, args.email)
    return Connection(
        cloud=args.cloud,
        email=args.email,
        password=password,
        tls=tls_for(args.cloud, args.tls),
        ca_file=args.ca_file,
    )


def site_of(text: str) -> str:
    try:
        return str(parse_site(text, "--site"))
    except ServiceError:
        raise ConfigError(f"--site {text!r} is not organizations/{{organization}}/sites/{{site}}") from None


def horizon_of(hours: float) -> duration_pb2.Duration:
    seconds = hours * 3600
    # Checked here too so a typo is named by its flag, not by the contract's field.
    if not (SLOT_S <= seconds <= MAX_HORIZON_H * 3600) or seconds % SLOT_S:
        raise ConfigError(f"--horizon-hours {hours:g} is not whole quarter hours between 0.25 and {MAX_HORIZON_H:g}")
    return duration_pb2.Duration(seconds=int(seconds))


def _kind(kind: forecast_pb2.ForecastKind.ValueType) -> str:
    return forecast_pb2.ForecastKind.Name(kind).removeprefix("FORECAST_KIND_").lower()


def _hours(d: duration_pb2.Duration) -> str:
    return f"{d.seconds / 3600:g} h"


def _time(t: timestamp_pb2.Timestamp) -> str:
    return utc_text(t.ToDatetime(tzinfo=UTC).replace(microsecond=0))


def energy_kwh(slots: Sequence[forecast_pb2.ForecastSlot]) -> tuple[float, float, float]:
    """(p10, p50, p90) energy over the slots in kWh: each slot is 15 minutes of mean power."""
    quarter_h = 0.25 / 1000
    return (
        sum(s.p10_w for s in slots) * quarter_h,
        sum(s.p50_w for s in slots) * quarter_h,
        sum(s.p90_w for s in slots) * quarter_h,
    )


def run_lines(run: forecast_pb2.ForecastRun, full: dict[str, forecast_pb2.Forecast]) -> list[str]:
    """The run as a person reads it: a header, its degraded reasons, then one line per forecast."""
    state = forecast_pb2.ForecastRunState.Name(run.state).removeprefix("FORECAST_RUN_STATE_").lower()
    trigger = forecast_pb2.ForecastTrigger.Name(run.trigger).removeprefix("FORECAST_TRIGGER_").lower()
    lines = [f"{run.name} {state} issued {_time(run.issue_time)} ({trigger}, by {run.creator})"]
    if run.state_reason:
        lines.append(f"  reason: {run.state_reason}")
    lines += [f"  degraded: {r}" for r in run.degraded_reasons]
    for f in run.forecasts:
        slots = full[f.name].slots if f.name in full else []
        p10, p50, p90 = energy_kwh(slots)
        weather = f.weather_source or "none"
        lines.append(
            f"  {_kind(f.kind):<9} {_hours(f.horizon)} from {_time(f.start_time)}: "
            f"{p50:.2f} kWh (p10 {p10:.2f}, p90 {p90:.2f}) in {len(slots)} slots; "
            f"model {f.model_version}; weather {weather}" + ("; degraded" if f.degraded_reasons else "")
        )
    return lines


async def run_forecast(
    c: Connection,
    site: str,
    kinds: Sequence[forecast_pb2.ForecastKind.ValueType],
    horizon: duration_pb2.Duration,
    request_id: str,
    say: Callable[[str], None] = print,
) -> forecast_pb2.ForecastRun:
    step = f"logging in as {c.email}"
    async with cloud_channel(c.cloud, c.tls, c.ca_file) as channel:
        try:
            login = await identity_pb2_grpc.IdentityServiceStub(channel).Login(
                identity_pb2.LoginRequest(email=c.email, password=c.password), timeout=CALL_TIMEOUT_S
            )
            auth = (("authorization", f"Bearer {login.access_token}"),)
            stub = forecast_pb2_grpc.ForecastServiceStub(channel)
            step = f"running a forecast of {site}"
            run = await stub.RunForecast(
                forecast_pb2.RunForecastRequest(site=site, kinds=kinds, horizon=horizon, request_id=request_id),
                metadata=auth,
                timeout=CALL_TIMEOUT_S,
            )
            # The run carries its forecasts without slots; read them with the slots to show energies.
            step = f"reading the forecasts of {run.name}"
            full: dict[str, forecast_pb2.Forecast] = {}
            start = timestamp_pb2.Timestamp()
            start.FromDatetime(run.issue_time.ToDatetime())
            end = timestamp_pb2.Timestamp()
            end.FromDatetime(run.issue_time.ToDatetime() + timedelta(microseconds=1))
            if run.forecasts:
                listed = await stub.ListForecasts(
                    forecast_pb2.ListForecastsRequest(
                        parent=site,
                        start_time=start,
                        end_time=end,
                        view=forecast_pb2.FORECAST_VIEW_FULL,
                        page_size=1000,
                    ),
                    metadata=auth,
                    timeout=CALL_TIMEOUT_S,
                )
                full = {f.name: f for f in listed.forecasts if f.run == run.name}
        except grpc.aio.AioRpcError as exc:
            raise ForecastCliError(failure_text(step, exc, c.cloud)) from None
    for line in run_lines(run, full):
        say(line)
    return run


async def run_forecast_command(args: argparse.Namespace, env: dict[str, str]) -> int:
    site = site_of(args.site)
    horizon = horizon_of(args.horizon_hours)
    kinds = [KINDS[k] for k in dict.fromkeys(args.kind or [])]
    request_id = args.request_id or str(uuid.uuid4())
    connection = connection_from_args(args, env)
    run = await run_forecast(connection, site, kinds, horizon, request_id)
    return 0 if run.state == forecast_pb2.FORECAST_RUN_STATE_SUCCEEDED else 1


def _score(s: Any) -> str:
    # services.forecast's Scores (n, mae_w, rmse_w, nmae, bias_w, skill); None where not computed.
    if s is None:
        return "-"
    nmae = "-" if s.nmae is None else f"{s.nmae:.3f}"
    skill = "-" if s.skill is None else f"{s.skill:+.3f}"
    return f"MAE {s.mae_w:.1f} W, RMSE {s.rmse_w:.1f} W, nMAE {nmae}, bias {s.bias_w:+.1f} W, skill {skill}"


def backtest_lines(site: str, result: Any) -> list[str]:
    """What `emma forecast backtest` prints: the replay, then per horizon band the model's scores (skill
    against persistence) and each reference's own."""
    lines = [
        f"{site}: {result.model} backtest, {result.issues} forecasts issued "
        f"{utc_text(result.first_issue)} .. {utc_text(result.last_issue)}"
    ]
    for band in result.bands:
        lines.append(f"  {band.label}: model: {_score(band.model)} (n {band.model.n})")
        lines.append(f"  {band.label}: persistence: {_score(band.persistence)}")
        if band.model_vs_yesterday is not None:
            lines.append(f"  {band.label}: skill vs same time yesterday {_score(band.model_vs_yesterday)}")
        if band.model_vs_last_week is not None:
            lines.append(f"  {band.label}: skill vs same time last week {_score(band.model_vs_last_week)}")
    lines.extend(f"  degraded: {reason}" for reason in result.degraded)
    return lines


async def run_backtest_command(args: argparse.Namespace, env: dict[str, str]) -> int:
    from services.forecast import ForecastError, ForecastInputError, MissingSiteData, backtest_site
    from services.platform import db
    from services.platform.config import PlatformConfig

    site = parse_site(site_of(args.site), "--site")
    if args.last < args.first:
        raise ConfigError(f"--to {args.last} is before --from {args.first}")
    if not 0.25 <= args.every_hours <= 168:
        raise ConfigError(f"--every-hours {args.every_hours:g} is not between 0.25 and 168")
    if args.state_dir:
        env = {**env, "EMMA_STATE_DIR": args.state_dir}
    start = datetime.combine(args.first, time(), UTC)
    end = datetime.combine(args.last, time(), UTC) + timedelta(days=1)
    dsn, _where = await operator_dsn(env)
    pool = await db.create_pool(PlatformConfig.from_env(env).database, dsn)
    try:
        result = await backtest_site(pool, site, args.model, start, end, issue_every=timedelta(hours=args.every_hours))
    except MissingSiteData as exc:
        raise ForecastCliError(f"{args.site}: no {exc.missing} in the registry: {exc}") from None
    except (ForecastInputError, ForecastError) as exc:
        raise ForecastCliError(f"{args.site}: {exc}") from None
    finally:
        await pool.close()
    for line in backtest_lines(args.site, result):
        print(line, flush=True)
    return 0


def run_forecast_cli(args: argparse.Namespace, env: dict[str, str]) -> Coroutine[Any, Any, int]:
    if args.forecast_command == "run":
        return run_forecast_command(args, env)
    if args.forecast_command == "backtest":
        return run_backtest_command(args, env)
    raise AssertionError(args.forecast_command)
