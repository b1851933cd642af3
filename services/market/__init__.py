"""Market intelligence: day-ahead and intraday prices, cross-border flows and transfer capacities read
from ENTSO-E, REE REData and ESIOS documents, normalised into one vocabulary (services/market/model.py).

Storage (services/market/store.py): `save_document(conn, doc, fetched_at) -> SaveResult` stores one
parsed document in one transaction and says whether it was STORED, REVISED (a new revision or a
re-published day replaced values), UNCHANGED (stored before, or the same values again) or OUTDATED
(an older revision than the one held: nothing written). The fetch scheduler calls it; a StoreError
or a database error leaves nothing of the document stored. `save_warnings` upserts border warnings
by their stable key. docs/market.md, "Storage and service", has the rules.
"""

from __future__ import annotations

import os
from typing import Any

from emma.market.v1 import market_pb2, market_pb2_grpc

from services.identity import Access
from services.market.model import (
    CapacitySeries,
    DocumentError,
    DocumentKind,
    FlowSeries,
    MarketDocument,
    MarketError,
    PriceSeries,
    Product,
    Slot,
    Source,
)
from services.market.readers import zone_eic, zone_prices, zone_warnings
from services.market.store import SaveOutcome, SaveResult, StoreError, save_document, save_warnings
from services.platform.registration import ServiceSpec, Worker, service_spec
from services.platform.runtime import Runtime

# What other packages may use of market; everything else in services/market/ is private.
__all__ = [
    "DEPENDS_ON",
    "POLICY",
    "SERVICES",
    "TABLES",
    "CapacitySeries",
    "DocumentError",
    "DocumentKind",
    "FlowSeries",
    "MarketDocument",
    "MarketError",
    "PriceSeries",
    "Product",
    "SaveOutcome",
    "SaveResult",
    "Slot",
    "Source",
    "StoreError",
    "save_document",
    "save_warnings",
    "zone_eic",
    "zone_prices",
    "zone_warnings",
]

# The services this domain may import (their package faces); see docs/architecture.md. Only
# identity, for the Access values of POLICY: market data belongs to no organization.
DEPENDS_ON: tuple[str, ...] = ("identity",)
# The tables this domain alone reads and writes (services/migrations/0007_market.sql).
TABLES: tuple[str, ...] = (
    "market.capacities",
    "market.cleared_warnings",  # warnings a publication cleared (0014_market_cleared_warnings.sql)
    "market.documents",
    "market.fetch_jobs",  # the fetch scheduler's (0008_market_fetch.sql)
    "market.fetch_queries",
    "market.flows",
    "market.prices",
    "market.source_status",
    "market.warnings",
)


def _market(runtime: Runtime) -> Any:
    from services.market.servicer import MarketDataServicer

    return MarketDataServicer(runtime)


def _scheduler(runtime: Runtime) -> Worker:
    # The fetch scheduler runs wherever the market service runs (`emma serve market`, `emma up`);
    # EMMA_MARKET_SCHEDULER=off leaves it idle. Replicas share the work through market.fetch_jobs.
    from services.market.scheduler import MarketScheduler

    return MarketScheduler.from_env(runtime.pool, runtime.replica_id, runtime.config.env or os.environ)


# The gRPC services this domain serves (services/catalog.py hosts them) and their background workers.
SERVICES: tuple[ServiceSpec, ...] = (
    service_spec(
        "market",
        market_pb2,
        "MarketDataService",
        market_pb2_grpc.add_MarketDataServiceServicer_to_server,
        _market,
        workers=(_scheduler,),
    ),
)

_MKT = "/emma.market.v1.MarketDataService/"
# Market data is reference data, the same for every organization and secret to none: any signed-in
# user may read it, also one without a membership (USER). Not PUBLIC: an anonymous caller could
# otherwise use EMMA as a free relay of the sources' rate-limited APIs. Not EDGE: edges get prices
# through their site's schedules, not by asking.
POLICY: dict[str, Access] = {
    _MKT + "ListBiddingZones": Access.USER,
    _MKT + "ListProducts": Access.USER,
    _MKT + "GetPriceCurve": Access.USER,
    _MKT + "GetLatestPublishedDay": Access.USER,
    _MKT + "ListBorderFlows": Access.USER,
    _MKT + "GetMarketSummary": Access.USER,
    _MKT + "BatchGetMarketSummaries": Access.USER,
    _MKT + "WatchPublications": Access.USER,
}
