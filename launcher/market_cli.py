"""`emma market parse FILE`: read a market document (ENTSO-E XML, REE REData or ESIOS JSON) and print
what EMMA makes of it as JSON lines: first the document, then one line per series with every slot's
start in UTC and its value. A document EMMA cannot read is one error line naming it and the field,
and exit code 2, so a script can tell a bad document (2) from a failure of EMMA's own (1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import ConfigError
from launcher.operator_db import operator_dsn
from launcher.times import utc_text
from services.market import CapacitySeries, DocumentError, FlowSeries, MarketDocument, PriceSeries, Product

if TYPE_CHECKING:
    from services.market.scheduler import Outcome

EXIT_BAD_DOCUMENT = 2
# ENTSO-E's contract_MarketAgreement.type of each auction product; REE's products have none.
_CONTRACT_TYPES = {Product.DAY_AHEAD: "A01", Product.INTRADAY_AUCTION: "A07"}


# More days than this in one backfill is a typo more often than a plan (and a burst on the source).
MAX_BACKFILL_DAYS = 366


def _duration(step: timedelta) -> str:
    minutes = int(step.total_seconds()) // 60
    return f"PT{minutes}M"


def _slots(series: PriceSeries | FlowSeries | CapacitySeries) -> list[dict[str, object]]:
    return [{"start": utc_text(s.start), "value": s.value} for s in series.slots]


def document_lines(doc: MarketDocument) -> Iterator[dict[str, object]]:
    yield {
        "document": doc.document_id,
        "source": doc.source.value,
        "kind": doc.kind.value,
        "revision": doc.revision,
        "created_at": utc_text(doc.created_at) if doc.created_at else None,
        "interval": [utc_text(doc.interval[0]), utc_text(doc.interval[1])] if doc.interval else None,
        "no_data_reason": doc.no_data_reason or None,
    }
    for p in doc.prices:
        yield {
            "series": "price",
            "zone": p.zone,
            "product": p.product.name.lower(),
            "contract_type": _CONTRACT_TYPES.get(p.product),
            "auction": p.auction,
            "sequence": p.sequence,
            "geography": p.geography or None,
            "currency": p.currency,
            "unit": p.unit,
            "resolution": _duration(p.resolution),
            "slots": _slots(p),
        }
    for kind, directed in (("flow", doc.flows), ("capacity", doc.capacities)):
        for d in directed:
            yield {
                "series": kind,
                "out_zone": d.out_zone,
                "in_zone": d.in_zone,
                "unit": "MW",
                "resolution": _duration(d.resolution),
                "slots": _slots(d),
            }


def run_market(args: argparse.Namespace) -> int:
    if args.market_command == "backfill":
        return asyncio.run(run_backfill_command(args))
    from services.market.documents import MAX_DOCUMENT_BYTES, parse_document

    path = Path(args.file)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_DOCUMENT_BYTES + 1)
        for line in document_lines(parse_document(data, path.name)):
            sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
    except DocumentError as exc:
        # One line, whatever the document put in its error text or its name.
        print(f"emma market parse: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_BAD_DOCUMENT
    except OSError as exc:
        print(f"emma market parse: error: {path}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_DOCUMENT
    return 0


async def run_backfill_command(args: argparse.Namespace) -> int:
    from services.market.interconnect import InterconnectConfig
    from services.market.scheduler import (
        SchedulerConfig,
        backfill_jobs,
        run_backfill,
        zone_code,
        zone_products,
    )
    from services.market.sources import SourcesConfig
    from services.platform import db
    from services.platform.config import PlatformConfig

    if args.last < args.first:
        raise ConfigError(f"--to {args.last} is before --from {args.first}")
    if (args.last - args.first).days + 1 > MAX_BACKFILL_DAYS:
        raise ConfigError(f"--from..--to spans more than {MAX_BACKFILL_DAYS} days; split it")
    env = dict(os.environ)
    if args.state_dir:
        env["EMMA_STATE_DIR"] = args.state_dir
    zone = zone_code(args.zone)
    sources = SourcesConfig.from_env(env)
    scheduler_config = SchedulerConfig.from_env(env)
    interconnect = InterconnectConfig.from_env(env)  # a bad threshold fails before anything is fetched
    products = tuple(args.product) if args.product else zone_products(zone, sources)
    dsn, where = await operator_dsn(env)
    config = PlatformConfig.from_env(env)
    pool = await db.create_pool(config.database, dsn)
    failed = 0
    try:
        jobs = backfill_jobs(zone, products, args.first, args.last, datetime.now(UTC))
        print(f"emma market backfill: {len(jobs)} fetch(es) for {args.zone} into {where}", flush=True)

        def say(outcome: Outcome) -> None:
            print(outcome.line(), flush=True)

        outcomes = await run_backfill(
            pool, sources, jobs, f"backfill-{os.getpid()}", scheduler_config, say=say, interconnect=interconnect
        )
        failed = sum(1 for o in outcomes if o.status in ("failed", "lost"))
    finally:
        await pool.close()
    return 1 if failed else 0
