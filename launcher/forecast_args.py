"""The arguments of `emma forecast run|backtest` (the commands themselves: forecast_cli.py)."""

from __future__ import annotations

import argparse
from typing import Any

from launcher.cloud_args import add_cloud_flags
from launcher.market_args import day_of
from launcher.task_args import add_task_group

# The --kind names; forecast_cli maps each to its ForecastKind.
KIND_NAMES = ("load", "net", "pv")


def add_forecast_parser(sub: Any) -> None:
    forecast_sub = add_task_group(
        sub,
        "forecast",
        help="run and check forecasts of a site's PV and load",
        description="Forecasts of a site's PV production, load and net load (docs/forecasting.md).",
        dest="forecast_command",
    )
    run = forecast_sub.add_parser(
        "run",
        help="run a forecast of a site now and print the run",
        description="Ask the cloud's ForecastService for a forecast run of --site now (an operator's action) and "
        "print the stored run: its state, why it is degraded if it is, and each forecast's energy over the horizon. "
        "Logs in as --email; the password comes from EMMA_PASSWORD, else a prompt on a terminal. Exit code 1 if "
        "the run failed or the cloud refused it.",
    )
    _add_site_flags(run)
    run.add_argument(
        "--kind",
        action="append",
        choices=KIND_NAMES,
        help="only this kind (repeatable; default every kind; a site without PV description needs --kind load)",
    )
    run.add_argument("--horizon-hours", type=float, default=48.0, help="how far ahead, 0.25..72 (default 48)")
    run.add_argument(
        "--request-id", help="idempotency key: the same id again returns the stored run (default: a new UUID)"
    )

    backtest = forecast_sub.add_parser(
        "backtest",
        help="replay a site's measured history as if live and score the forecasts",
        description="Forecast --site's measured load (or PV) every --every-hours over --from..--to (UTC days) as if "
        "live: each forecast sees only what was measured before its issue time and is scored against what was "
        "measured after it, next to persistence, the same time yesterday and last week, per horizon band. Reads the "
        "database directly (DATABASE_URL, else the running emma up's); changes nothing.",
    )
    backtest.add_argument("--site", required=True, help="organizations/{org}/sites/{site}")
    backtest.add_argument("--from", dest="first", required=True, type=day_of, help="first day, YYYY-MM-DD (UTC)")
    backtest.add_argument("--to", dest="last", required=True, type=day_of, help="last day, YYYY-MM-DD (UTC), included")
    backtest.add_argument("--model", choices=("load", "pv"), default="load", help="which series (default load)")
    backtest.add_argument("--every-hours", type=float, default=6.0, help="hours between issues (default 6)")
    backtest.add_argument("--state-dir", help="the running emma up's state folder (EMMA_STATE_DIR, default .emma)")


def _add_site_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--site", required=True, help="organizations/{org}/sites/{site}, e.g. organizations/demo/sites/demo")
    add_cloud_flags(p, "a user of the site's organization, e.g. admin@emma.local")
