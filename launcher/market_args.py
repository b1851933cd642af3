"""The arguments of `emma market parse|backfill` (the commands themselves: market_cli.py)."""

from __future__ import annotations

import argparse
from datetime import date
from typing import Any

from launcher.task_args import add_task_group


def add_market_parser(sub: Any) -> None:
    market_sub = add_task_group(
        sub,
        "market",
        help="market data documents",
        description="Work with market data documents (prices, flows).",
        dest="market_command",
    )
    parse = market_sub.add_parser(
        "parse",
        help="parse a document and print its series as JSON lines",
        description="Detect the kind of an ENTSO-E XML, REE REData or ESIOS JSON document and print its "
        "normalised series as JSON lines (times in UTC). Exit code 2 if the document cannot be read.",
    )
    parse.add_argument("file", help="the document to parse")
    backfill = market_sub.add_parser(
        "backfill",
        help="fetch a zone's documents for past days and store them",
        description="Fetch and store a bidding zone's documents for each delivery day of --from..--to (CET days, "
        "both included) through the scheduler's own fetch code, printing one line per document. The database is "
        "DATABASE_URL, else the embedded PostgreSQL of an `emma up` running on the state folder. Exit code 1 if "
        "any fetch failed.",
    )
    backfill.add_argument("--zone", required=True, help="bidding zone by short name (ES, DE-LU) or EIC")
    backfill.add_argument("--from", dest="first", required=True, type=day_of, help="first delivery day, YYYY-MM-DD")
    backfill.add_argument("--to", dest="last", required=True, type=day_of, help="last delivery day, YYYY-MM-DD")
    backfill.add_argument(
        "--product",
        action="append",
        choices=("day-ahead", "intraday", "redata", "esios"),
        help="only this product (repeatable; default: every product the zone has)",
    )
    backfill.add_argument("--state-dir", help="the running emma up's state folder (EMMA_STATE_DIR, default .emma)")


def day_of(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None
