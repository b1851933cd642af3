"""`emma up`'s market sources: the replay server with generated tokens and `redate`, so the demo's
clients get prices for today; real sources untouched when a real ENTSO-E token is given."""

from __future__ import annotations

from datetime import UTC, datetime

from launcher.up import market_sources
from services.market.documents import parse_document
from services.market.scheduler import DAY_AHEAD, Clients, Query
from services.market.sources import SourcesConfig


async def test_without_a_token_the_demo_fetches_todays_prices_from_the_replay() -> None:
    said: list[str] = []
    async with market_sources({}, said.append) as env:
        assert len(said) == 1 and "replay server" in said[0]
        assert env["EMMA_ENTSOE_URL"].startswith("http://127.0.0.1:")
        assert env["EMMA_ENTSOE_TOKEN"] not in said[0]
        today = datetime.now(UTC).date()
        clients = Clients(SourcesConfig.from_env(env))
        try:
            fetched = await clients.fetch(Query(DAY_AHEAD, today, zone="10Y1001A1001A82H"), None)
        finally:
            await clients.aclose()
    assert not fetched.no_data
    doc = parse_document(fetched.data, fetched.name)
    assert doc.interval is not None
    start, end = Query(DAY_AHEAD, today, zone="10Y1001A1001A82H").period()
    # Moved onto today: prices for slots of today's CET day.
    assert any(slot.start >= start and slot.start < end for series in doc.prices for slot in series.slots)


async def test_a_real_token_keeps_the_real_sources() -> None:
    said: list[str] = []
    async with market_sources({"EMMA_ENTSOE_TOKEN": "a-real-one"}, said.append) as env:
        assert env == {}
    assert len(said) == 1 and "real sources" in said[0] and "a-real-one" not in said[0]
