"""What can go wrong when EMMA asks an outside market data source, as errors under MarketError.

Each error says whether trying again can help: TokenRefused and QueryRefused never get better by
repetition (so they are never retried), SourceUnavailable is what is left after the retries.
Messages name the source and a URL with its secrets replaced by `***`, never the token.
"""

from __future__ import annotations

from core.errors import ConfigError
from services.market.model import MarketError


class SourceError(MarketError):
    """Root of the errors of the market sources' HTTP clients."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source


class TokenRefused(SourceError):
    """The source refused our credentials (401/403): a configuration problem, never retried."""


class QueryRefused(SourceError):
    """The source refused the query itself (a 4xx other than 401/403/429, or a query EMMA would not
    send): sending it again gives the same answer, so it is never retried."""


class SourceUnavailable(SourceError):
    """No usable answer after the configured retries (5xx, 429, timeouts, refused connections)."""

    def __init__(self, source: str, message: str, attempts: int) -> None:
        super().__init__(source, message)
        self.attempts = attempts


class BadResponse(SourceError):
    """An answer EMMA will not read: larger than allowed, or a broken or oversized zip."""


class SourceConfigError(SourceError, ConfigError):
    """An EMMA_* setting of the market sources is invalid; the message names the variable."""

    def __init__(self, message: str) -> None:
        super().__init__("market sources", message)
