"""Red Eléctrica's two APIs: REData (apidatos.ree.es, open) and ESIOS (api.esios.ree.es, with a key).

REData `mercados/precios-mercados-tiempo-real` gives the PVPC and the spot price per hour; its dates
are local peninsular time (`start_date=2023-11-29T00:00&end_date=2023-11-29T23:59&time_trunc=hour`),
and "no data" is a 502 whose JSON says so in an `errors` array, which is an answer, not an outage.
ESIOS `indicators/<id>` (1001 is the PVPC 2.0TD per geography) wants the key in `x-api-key` and the
Accept header `application/json; application/vnd.esios-api-v1+json`, as aiopvpc and REE's own
examples send them; an indicator without values in the period is its "no data".
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import httpx

from services.market.model import Source
from services.market.sources.base import SourceClient
from services.market.sources.config import SourcesConfig
from services.market.sources.errors import QueryRefused, SourceConfigError
from services.market.sources.fetch import Dialect, Fetched, Sleep, Validators

MADRID = ZoneInfo("Europe/Madrid")
PVPC_INDICATOR = 1001
ESIOS_ACCEPT = "application/json; application/vnd.esios-api-v1+json"
REDATA_PRICES_PATH = "/es/datos/mercados/precios-mercados-tiempo-real"
MAX_PERIOD = timedelta(days=366)


def _json(body: bytes) -> object:
    try:
        return json.loads(body[:1_000_000])
    except ValueError:
        return None


class RedataDialect(Dialect):
    def no_data(self, status: int, content_type: str, body: bytes) -> bool:
        doc = _json(body) if status >= 400 else None
        if not isinstance(doc, dict) or not isinstance(doc.get("errors"), list):
            return False
        return any(isinstance(e, dict) and "no data" in str(e.get("detail", "")).lower() for e in doc["errors"])

    def explain(self, body: bytes) -> str:
        doc = _json(body)
        if isinstance(doc, dict) and isinstance(doc.get("errors"), list) and doc["errors"]:
            first = doc["errors"][0]
            if isinstance(first, dict):
                return f"{first.get('title', '')}: {first.get('detail', '')}".strip(": ")
        return super().explain(body)


class EsiosDialect(Dialect):
    def no_data(self, status: int, content_type: str, body: bytes) -> bool:
        doc = _json(body) if status == 200 else None
        indicator = doc.get("indicator") if isinstance(doc, dict) else None
        return isinstance(indicator, dict) and indicator.get("values") == []


def _checked_period(source: Source, start: datetime, end: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise QueryRefused(source.value, "period bounds must be timezone-aware; query not sent")
    if not start < end or end - start > MAX_PERIOD:
        raise QueryRefused(source.value, f"period {start.isoformat()}..{end.isoformat()} is empty or over a year")


class RedataClient(SourceClient):
    """REData's real-time market prices (PVPC and spot), hourly."""

    def __init__(
        self, config: SourcesConfig, client: httpx.AsyncClient | None = None, sleep: Sleep = asyncio.sleep
    ) -> None:
        super().__init__(Source.REE_REDATA, config, client, config.ree_per_minute, RedataDialect(), sleep)
        self._url = config.redata_url.rstrip("/") + REDATA_PRICES_PATH

    async def market_prices(self, start: datetime, end: datetime, validators: Validators | None = None) -> Fetched:
        """Prices of [start, end); REData's end is inclusive to the minute, so it gets end - 1 minute."""
        _checked_period(Source.REE_REDATA, start, end)
        first = start.astimezone(MADRID).strftime("%Y-%m-%dT%H:%M")
        last = (end - timedelta(minutes=1)).astimezone(MADRID).strftime("%Y-%m-%dT%H:%M")
        params = {"start_date": first, "end_date": last, "time_trunc": "hour"}
        name = f"redata_precios-mercados-tiempo-real_{first}_{last}.json".replace(":", "")
        return await self._fetcher.get(self._url, name, params, {"Accept": "application/json"}, validators)


class EsiosClient(SourceClient):
    """ESIOS indicators (1001: the PVPC 2.0TD for each geography)."""

    def __init__(
        self, config: SourcesConfig, client: httpx.AsyncClient | None = None, sleep: Sleep = asyncio.sleep
    ) -> None:
        if not config.esios_token:
            raise SourceConfigError("EMMA_ESIOS_TOKEN is not set: the source refuses every request without it")
        super().__init__(Source.REE_ESIOS, config, client, config.ree_per_minute, EsiosDialect(), sleep)
        self._token = config.esios_token
        self._url = config.esios_url.rstrip("/")

    async def indicator(
        self, start: datetime, end: datetime, indicator_id: int = PVPC_INDICATOR, validators: Validators | None = None
    ) -> Fetched:
        """Values of [start, end) in UTC; ESIOS's end_date is inclusive, so it gets end - 1 second."""
        _checked_period(Source.REE_ESIOS, start, end)
        if not 0 < indicator_id < 10_000_000:
            raise QueryRefused(Source.REE_ESIOS.value, f"indicator {indicator_id} is out of range; query not sent")
        first = start.astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%SZ")
        last = (end - timedelta(seconds=1)).astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%SZ")
        headers = {"Accept": ESIOS_ACCEPT, "Content-Type": "application/json", "x-api-key": self._token}
        name = f"esios_indicator_{indicator_id}_{first}_{last}.json".replace(":", "")
        return await self._fetcher.get(
            f"{self._url}/indicators/{indicator_id}", name, {"start_date": first, "end_date": last}, headers, validators
        )
