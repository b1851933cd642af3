"""Border warnings raised as documents are stored: the fetch scheduler fetches ES-FR flows, capacities and
both zones' day-ahead prices from the real replay server (the derived ES-FR documents moved onto today),
each save assesses the border in its own transaction, the warnings show in GetMarketSummary and travel
with their publication on WatchPublications; storing the same document again changes nothing.

The documents' numbers (tests/services/market/data/SOURCES.md), per hour position of the day:
capacity ES->FR 3000 MW throughout; flow 2850 MW at positions 9-12 and 2700 MW at 18, else 2000 MW;
ES 40 EUR/MWh at 9-12, else 60; FR 95 at 9-12, 100 at 20, else 70. With the defaults (90 %, 20 EUR/MWh):
saturated at 9-12 (0.95) and 18 (exactly 0.90); spread above 20 at 9-12 (55) and 20 (40); both at 9-12."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from emma.market.v1 import market_pb2, market_pb2_grpc

from launcher.market_replay import ReplayServer
from launcher.market_replay.recordings import RECORDINGS, Catalog
from services.market import save_document
from services.market.documents import parse_document
from services.market.scheduler import FLOWS, Clients, MarketScheduler, Query, SchedulerConfig
from tests.support.cloud import Host
from tests.support.identity import authed_channel
from tests.support.market_replay import ENTSOE_TOKEN, ESIOS_TOKEN, sources_config

DATA = Path(__file__).parent / "data"
ES = "10YES-REE------0"
FR = "10YFR-RTE------C"
CET = ZoneInfo("Europe/Brussels")
DOCUMENTS = (
    "derived_A11_ES-FR_2024-10-07_flows_saturated.xml",
    "derived_A61_ES-FR_2024-10-07_capacity.xml",
    "derived_A44_ES_2024-10-07_dayahead.xml",
    "derived_A44_FR_2024-10-07_dayahead.xml",
)


@pytest.fixture
async def replay(tmp_path: Path) -> AsyncIterator[ReplayServer]:
    """The replay server serving the ES-FR documents (and ENTSO-E's "no data" answer for the rest)."""
    folder = tmp_path / "recordings"
    folder.mkdir()
    shutil.copy(RECORDINGS / "entsoe" / "Acknowledgement_999_no_matching_data.xml", folder)
    for name in DOCUMENTS:
        shutil.copy(DATA / name, folder)
    server = ReplayServer(ENTSOE_TOKEN, ESIOS_TOKEN, redate=True, catalog=Catalog.load(folder))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def pool(migrated_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(migrated_url, min_size=1, max_size=6)
    assert pool is not None
    await pool.execute(
        "TRUNCATE market.fetch_jobs, market.fetch_queries, market.source_status, market.documents, market.prices,"
        " market.flows, market.capacities, market.warnings, market.cleared_warnings"
    )
    try:
        yield pool
    finally:
        await pool.close()


async def _read_until_warned(call: object, today: str) -> market_pb2.Publication:
    while True:
        publication = await asyncio.wait_for(call.read(), timeout=20)  # type: ignore[attr-defined]
        assert isinstance(publication, market_pb2.Publication)
        if any(w.delivery_day == today and w.kind == "decoupling" for w in publication.warnings):
            return publication


async def test_a_saturated_border_with_a_spread_is_warned_in_the_summary_and_on_the_stream(
    host: Host, token: str, pool: asyncpg.Pool, replay: ReplayServer
) -> None:
    today = datetime.now(CET).date()
    day = today.isoformat()
    config = SchedulerConfig(zones=(ES, FR), borders=((ES, FR),), retry_s=0.01, retry_max_s=0.02)
    sources = sources_config(replay.url, esios_token="")
    async with host(["market"]) as (server, _), authed_channel(server.port, token) as channel:
        stub = market_pb2_grpc.MarketDataServiceStub(channel)
        call = stub.WatchPublications(market_pb2.WatchPublicationsRequest(zones=["ES"]))
        await call.initial_metadata()
        sched = MarketScheduler(pool, "r1", config, sources)
        try:
            await sched.run_once()
        finally:
            await sched.stop()
        warned = await _read_until_warned(call, day)
        call.cancel()

        rows = await pool.fetch(
            "SELECT warning_key, kind, evidence::text AS evidence FROM market.warnings WHERE delivery_day = $1", today
        )
        found = {r["kind"]: json.loads(r["evidence"]) for r in rows}
        assert sorted(found) == ["decoupling", "price-spread", "saturation"]
        assert {r["warning_key"] for r in rows} == {f"{ES}>{FR}:{kind}:{day}" for kind in found}
        assert [h["utilisation"] for h in found["saturation"]["hours"]] == [0.95] * 4 + [0.9]
        assert [h["spread"] for h in found["price-spread"]["hours"]] == [55.0] * 4 + [40.0]
        decoupled = found["decoupling"]["hours"]
        assert [(h["flow_mw"], h["capacity_mw"], h["out_price"], h["in_price"]) for h in decoupled] == [
            (2850.0, 3000.0, 40.0, 95.0)
        ] * 4
        # The four decoupled hours are consecutive, and the saturated hour 18 comes six hours after them.
        starts = [datetime.fromisoformat(h["start"]) for h in found["saturation"]["hours"]]
        assert [b - a for a, b in itertools.pairwise(starts)] == [timedelta(hours=1)] * 3 + [timedelta(hours=6)]

        # On the stream: the publication that raised the decoupling carries it, with its evidence.
        streamed = {w.key: w for w in warned.warnings}
        decoupling = streamed[f"{ES}>{FR}:decoupling:{day}"]
        assert decoupling.message == "ES-FR interconnection saturated, price decoupling likely"
        assert (decoupling.out_zone, decoupling.in_zone) == (ES, FR)
        assert json.loads(decoupling.evidence_json) == found["decoupling"]

        # In the summary of either zone.
        for zone in ("ES", "FR"):
            summary = await stub.GetMarketSummary(market_pb2.GetMarketSummaryRequest(zone=zone))
            todays = {w.key for w in summary.warnings if w.delivery_day == day}
            assert todays == {r["warning_key"] for r in rows}

        # The same flows document stored again: unchanged, nothing raised, no duplicate, nothing rewritten.
        before = await pool.fetch("SELECT warning_key, update_time FROM market.warnings ORDER BY 1")
        clients = Clients(sources)
        try:
            fetched = await clients.fetch(Query(FLOWS, today, out_zone=ES, in_zone=FR), None)
        finally:
            await clients.aclose()
        async with pool.acquire() as conn:
            again = await save_document(conn, parse_document(fetched.data, fetched.name), datetime.now(UTC))
        assert (again.outcome.value, again.warnings) == ("unchanged", ())
        assert await pool.fetch("SELECT warning_key, update_time FROM market.warnings ORDER BY 1") == before


async def test_a_revision_that_ends_the_saturation_announces_the_cleared_warnings(
    host: Host, token: str, pool: asyncpg.Pool, replay: ReplayServer
) -> None:
    today = datetime.now(CET).date()
    day = today.isoformat()
    config = SchedulerConfig(zones=(ES, FR), borders=((ES, FR),), retry_s=0.01, retry_max_s=0.02)
    sources = sources_config(replay.url, esios_token="")
    async with host(["market"]) as (server, _), authed_channel(server.port, token) as channel:
        stub = market_pb2_grpc.MarketDataServiceStub(channel)
        call = stub.WatchPublications(market_pb2.WatchPublicationsRequest(zones=["ES"]))
        await call.initial_metadata()
        sched = MarketScheduler(pool, "r1", config, sources)
        try:
            await sched.run_once()
        finally:
            await sched.stop()
        await _read_until_warned(call, day)

        # The flows document revised: 2000 MW every hour (0.67 of 3000 MW), so no hour is saturated.
        clients = Clients(sources)
        try:
            fetched = await clients.fetch(Query(FLOWS, today, out_zone=ES, in_zone=FR), None)
        finally:
            await clients.aclose()
        flows = parse_document(fetched.data, fetched.name)
        calm = tuple(
            dataclasses.replace(s, slots=tuple(dataclasses.replace(slot, value=2000.0) for slot in s.slots))
            for s in flows.flows
        )
        revised = dataclasses.replace(flows, revision=flows.revision + 1, flows=calm)
        async with pool.acquire() as conn:
            result = await save_document(conn, revised, datetime.now(UTC))
        gone = {f"{ES}>{FR}:saturation:{day}", f"{ES}>{FR}:decoupling:{day}"}
        assert result.outcome.value == "revised"
        assert set(result.cleared) == gone

        while True:
            publication = await asyncio.wait_for(call.read(), timeout=20)
            assert isinstance(publication, market_pb2.Publication)
            if publication.document.revision == revised.revision:
                break
        call.cancel()
        assert publication.document.document_id == revised.document_id
        assert set(publication.cleared_warning_keys) == gone
        # What stays: the price spread, which the flows do not change.
        left = {r["warning_key"] for r in await pool.fetch("SELECT warning_key FROM market.warnings")}
        assert f"{ES}>{FR}:price-spread:{day}" in left and not gone & left
