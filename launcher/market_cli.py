"""`emma market parse FILE`: read a market document (ENTSO-E XML, REE REData or ESIOS JSON) and print
what EMMA makes of it as JSON lines: first the document, then one line per series with every slot's
start in UTC and its value. A document EMMA cannot read is one error line naming it and the field,
and exit code 2, so a script can tell a bad document (2) from a failure of EMMA's own (1).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from services.market import CapacitySeries, DocumentError, FlowSeries, MarketDocument, PriceSeries, Product

EXIT_BAD_DOCUMENT = 2
# ENTSO-E's contract_MarketAgreement.type of each auction product; REE's products have none.
_CONTRACT_TYPES = {Product.DAY_AHEAD: "A01", Product.INTRADAY_AUCTION: "A07"}


def add_market_parser(sub: Any) -> None:
    market = sub.add_parser(
        "market", help="market data documents", description="Work with market data documents (prices, flows)."
    )
    market_sub = market.add_subparsers(dest="market_command", metavar="TASK", parser_class=type(market))
    market_sub.required = True
    parse = market_sub.add_parser(
        "parse",
        help="parse a document and print its series as JSON lines",
        description="Detect the kind of an ENTSO-E XML, REE REData or ESIOS JSON document and print its "
        "normalised series as JSON lines (times in UTC). Exit code 2 if the document cannot be read.",
    )
    parse.add_argument("file", help="the document to parse")


def _utc(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _duration(step: timedelta) -> str:
    minutes = int(step.total_seconds()) // 60
    return f"PT{minutes}M"


def _slots(series: PriceSeries | FlowSeries | CapacitySeries) -> list[dict[str, object]]:
    return [{"start": _utc(s.start), "value": s.value} for s in series.slots]


def document_lines(doc: MarketDocument) -> Iterator[dict[str, object]]:
    yield {
        "document": doc.document_id,
        "source": doc.source.value,
        "kind": doc.kind.value,
        "revision": doc.revision,
        "created_at": _utc(doc.created_at) if doc.created_at else None,
        "interval": [_utc(doc.interval[0]), _utc(doc.interval[1])] if doc.interval else None,
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
