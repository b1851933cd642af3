"""HTTP clients of the market domain's outside sources (ENTSO-E, REE REData, ESIOS) over one fetch
layer (rate limits, retries, conditional re-fetch), and their configuration. Parsing is elsewhere
(services.market.documents); these return the documents as received.
"""

from __future__ import annotations

from services.market.sources.config import ENTSOE_URL, ESIOS_URL, REDATA_URL, SourcesConfig
from services.market.sources.entsoe import EntsoeClient
from services.market.sources.errors import (
    BadResponse,
    QueryRefused,
    SourceConfigError,
    SourceError,
    SourceUnavailable,
    TokenRefused,
)
from services.market.sources.fetch import Fetched, TokenBucket, Validators, redact
from services.market.sources.ree import PVPC_INDICATOR, EsiosClient, RedataClient

__all__ = [
    "ENTSOE_URL",
    "ESIOS_URL",
    "PVPC_INDICATOR",
    "REDATA_URL",
    "BadResponse",
    "EntsoeClient",
    "EsiosClient",
    "Fetched",
    "QueryRefused",
    "RedataClient",
    "SourceConfigError",
    "SourceError",
    "SourceUnavailable",
    "SourcesConfig",
    "TokenBucket",
    "TokenRefused",
    "Validators",
    "redact",
]
