"""What the source clients share: a Fetcher for one source, and the httpx client they own or borrow."""

from __future__ import annotations

from typing import Self

import httpx

from services.market.model import Source
from services.market.sources.config import SourcesConfig
from services.market.sources.fetch import Dialect, Fetcher, RetryPolicy, Sleep, TokenBucket, new_http_client


class SourceClient:
    """Builds the Fetcher of `source`; closes the httpx client only if it made it (none was passed)."""

    def __init__(
        self,
        source: Source,
        config: SourcesConfig,
        client: httpx.AsyncClient | None,
        per_minute: int,
        dialect: Dialect,
        sleep: Sleep,
    ) -> None:
        self._own_client = client is None
        self._client = client or new_http_client(config)
        self._fetcher = Fetcher(
            source,
            self._client,
            TokenBucket(per_minute),
            RetryPolicy.of(config),
            config.max_response_bytes,
            dialect,
            sleep=sleep,
            deadline_s=config.request_deadline_s,
        )

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
