"""Market intelligence: day-ahead and intraday prices, cross-border flows and transfer capacities read
from ENTSO-E, REE REData and ESIOS documents, normalised into one vocabulary (services/market/model.py).

For now the domain is its document parsers; storage, contracts and its service come later.
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
    "Slot",
    "Source",
]

# The services this domain may import (their package faces); see docs/architecture.md.
DEPENDS_ON: tuple[str, ...] = ()
# The tables this domain alone reads and writes: none yet (the parsers store nothing).
TABLES: tuple[str, ...] = ()
# The gRPC services this domain serves: none yet.
SERVICES: tuple[ServiceSpec, ...] = ()
# The minimum role of each RPC: none yet.
POLICY: dict[str, object] = {}
