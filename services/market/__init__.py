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
from services.market.store import SaveOutcome, SaveResult, StoreError, save_document, save_warnings
from services.platform.registration import ServiceSpec

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
]

# The services this domain may import (their package faces); see docs/architecture.md.
DEPENDS_ON: tuple[str, ...] = ()
# The tables this domain alone reads and writes (services/migrations/0007_market.sql).
TABLES: tuple[str, ...] = (
    "market.capacities",
    "market.documents",
    "market.flows",
    "market.prices",
    "market.warnings",
)
# The gRPC services this domain serves: none yet.
SERVICES: tuple[ServiceSpec, ...] = ()
# The minimum role of each RPC: none yet.
POLICY: dict[str, object] = {}
