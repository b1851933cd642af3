"""The arguments of `emma optimize replay|savings` (the commands themselves: optimizer_cli.py)."""

from __future__ import annotations

from typing import Any

from launcher.cloud_args import add_cloud_flags
from launcher.task_args import add_task_group


def add_optimize_parser(sub: Any) -> None:
    optimize_sub = add_task_group(
        sub,
        "optimize",
        help="check optimisation runs",
        description="Optimisation runs of the cloud's OptimizerService (docs/optimizer.md).",
        dest="optimize_command",
    )
    replay = optimize_sub.add_parser(
        "replay",
        help="solve a stored run again from its stored inputs and compare the objectives",
        description="Ask the cloud's OptimizerService to replay RUN (an operator's action): the stored inputs are "
        "solved again and stored as a new run. Prints the original and the replay; exit code 0 when the replay "
        "reproduces the stored objective exactly, 1 otherwise. Logs in as --email; the password comes from "
        "EMMA_PASSWORD, else a prompt on a terminal.",
    )
    replay.add_argument("run", metavar="RUN", help="organizations/{org}/optimizationRuns/{uuid}")
    add_cloud_flags(replay, "an operator of the run's organization")
    replay.add_argument(
        "--request-id", help="idempotency key: the same id again returns the same replay (default: a new UUID)"
    )

    savings = optimize_sub.add_parser(
        "savings",
        help="what the plans saved, per site and for all sites, per day",
        description="Ask the cloud's OptimizerService what the plans saved in fact (GetRealisedSavings): for each "
        "UTC day of [--from, --to), per site and for all the sites together, the realised, planned and baseline "
        "cost (EUR) and emissions (kg CO2) of the slots a plan was in force and the grid was measured, and the "
        "savings against the baseline (self-consumption alone); then the period's sums. Logs in as --email (a "
        "viewer suffices); the password comes from EMMA_PASSWORD, else a prompt on a terminal.",
    )
    savings.add_argument(
        "--site",
        action="append",
        required=True,
        dest="sites",
        metavar="SITE",
        help="organizations/{org}/sites/{site}; repeat for a community (all of one organization)",
    )
    savings.add_argument("--from", dest="first", required=True, metavar="DATE", help="first UTC day, YYYY-MM-DD")
    savings.add_argument(
        "--to", dest="last", metavar="DATE", help="the UTC day after the last one, YYYY-MM-DD (default: --from + 1 day)"
    )
    add_cloud_flags(savings, "a member of the sites' organization")
