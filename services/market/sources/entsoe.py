"""ENTSO-E Transparency Platform REST API client (https://web-api.tp.entsoe.eu/api).

Every query is a GET of the one endpoint with `securityToken`, `documentType`, the domains and
`periodStart`/`periodEnd` (yyyyMMddHHmm, UTC), the parameter names of ENTSO-E's API guide (as entsoe-py
sends them). The API answers 200 with an Acknowledgement_MarketDocument (reason 999, "No matching data
found") when there is no data - older deployments answered 400 with the same document, so both count as
"no data" - 400 with an Acknowledgement for other bad queries, 401 (an HTML page) for a bad token, 429
when over 400 requests a minute, and zips for some document types (unpacked by the fetch layer).
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

import httpx

from services.market.model import Source
from services.market.sources.base import SourceClient
from services.market.sources.config import SourcesConfig
from services.market.sources.errors import QueryRefused, SourceConfigError
from services.market.sources.fetch import Dialect, Fetched, Sleep, Validators
from services.market.zones import is_eic

_REASON = re.compile(rb"<Reason>\s*<code>([^<]*)</code>\s*(?:<text>([^<]*)</text>)?", re.DOTALL)
# The API's longest period for these document types is one year.
MAX_PERIOD = timedelta(days=366)

DAY_AHEAD = "A01"  # contract_MarketAgreement.type of the day-ahead auction
INTRADAY = "A07"  # ... of the intraday auctions (IDA1..3 as classificationSequence positions)


def period_param(moment: datetime) -> str:
    """yyyyMMddHHmm in UTC, the format of periodStart and periodEnd."""
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M")


def _reason(body: bytes) -> tuple[str, str] | None:
    if b"Acknowledgement_MarketDocument" not in body[:2000]:
        return None
    found = _REASON.search(body[:20000])
    if found is None:
        return None
    return found.group(1).decode("utf-8", "replace").strip(), (found.group(2) or b"").decode("utf-8", "replace").strip()


class EntsoeDialect(Dialect):
    def no_data(self, status: int, content_type: str, body: bytes) -> bool:
        reason = _reason(body) if status in (200, 400) else None
        return reason is not None and reason[0] == "999" and "no matching data" in reason[1].lower()

    def explain(self, body: bytes) -> str:
        reason = _reason(body)
        if reason is not None:
            return f"Acknowledgement reason {reason[0]}: {reason[1]}"
        return super().explain(body)


class EntsoeClient(SourceClient):
    """Day-ahead and intraday prices (A44), physical flows (A11), forecasted transfer capacity (A61)."""

    def __init__(
        self,
        config: SourcesConfig,
        client: httpx.AsyncClient | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not config.entsoe_token:
            raise SourceConfigError("EMMA_ENTSOE_TOKEN is not set: the source refuses every request without it")
        super().__init__(Source.ENTSOE, config, client, config.entsoe_per_minute, EntsoeDialect(), sleep)
        self._token = config.entsoe_token
        self._url = config.entsoe_url.rstrip("/")

    async def day_ahead_prices(
        self, zone: str, start: datetime, end: datetime, validators: Validators | None = None
    ) -> Fetched:
        return await self._prices(zone, start, end, DAY_AHEAD, validators)

    async def intraday_prices(
        self, zone: str, start: datetime, end: datetime, validators: Validators | None = None
    ) -> Fetched:
        return await self._prices(zone, start, end, INTRADAY, validators)

    async def physical_flows(
        self, out_zone: str, in_zone: str, start: datetime, end: datetime, validators: Validators | None = None
    ) -> Fetched:
        """Measured flow from `out_zone` into `in_zone` (A11)."""
        params = {"documentType": "A11", "in_Domain": self._zone(in_zone), "out_Domain": self._zone(out_zone)}
        return await self._query(params, start, end, validators)

    async def forecast_capacity(
        self, out_zone: str, in_zone: str, start: datetime, end: datetime, validators: Validators | None = None
    ) -> Fetched:
        """Day-ahead forecasted transfer capacity from `out_zone` into `in_zone` (A61, contract A01)."""
        params = {
            "documentType": "A61",
            "contract_MarketAgreement.Type": DAY_AHEAD,
            "in_Domain": self._zone(in_zone),
            "out_Domain": self._zone(out_zone),
        }
        return await self._query(params, start, end, validators)

    async def _prices(
        self, zone: str, start: datetime, end: datetime, contract: str, validators: Validators | None
    ) -> Fetched:
        code = self._zone(zone)
        params = {
            "documentType": "A44",
            "in_Domain": code,
            "out_Domain": code,
            "contract_MarketAgreement.type": contract,
        }
        return await self._query(params, start, end, validators)

    def _zone(self, code: str) -> str:
        if not is_eic(code):
            raise QueryRefused(Source.ENTSOE.value, f"{code[:40]!r} is not an EIC code; query not sent")
        return code

    async def _query(
        self, params: dict[str, str], start: datetime, end: datetime, validators: Validators | None
    ) -> Fetched:
        if start.tzinfo is None or end.tzinfo is None:
            raise QueryRefused(Source.ENTSOE.value, "period bounds must be timezone-aware; query not sent")
        if not start < end or end - start > MAX_PERIOD:
            raise QueryRefused(
                Source.ENTSOE.value,
                f"period {start.isoformat()}..{end.isoformat()} is empty or over a year; query not sent",
            )
        params = {**params, "periodStart": period_param(start), "periodEnd": period_param(end)}
        contract = params.get("contract_MarketAgreement.type") or params.get("contract_MarketAgreement.Type")
        name = (
            "_".join(
                p
                for p in (
                    "entsoe",
                    params["documentType"],
                    contract or "",
                    params["out_Domain"],
                    params["in_Domain"],
                    params["periodStart"],
                    params["periodEnd"],
                )
                if p
            )
            + ".xml"
        )
        # The token goes last and only into the request; `name` and every message leave it out.
        return await self._fetcher.get(self._url, name, {**params, "securityToken": self._token}, validators=validators)
