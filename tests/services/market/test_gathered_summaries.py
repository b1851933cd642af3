"""GetMarketSummary calls arriving while a summary read runs are answered together by the next read
(services/platform/shared_reads.py), on a real gRPC server over the real PostgreSQL.

The tests hold market.prices locked (ACCESS EXCLUSIVE, in a transaction of their own) so that the first
call's read waits in PostgreSQL while the other calls arrive and gather: what they are answered then
comes from the read that starts when the lock is released, after everything the transaction stored."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, time, timedelta

import asyncpg
import grpc
import pytest
from emma.market.v1 import market_pb2, market_pb2_grpc
from grpc_status import rpc_status

from services.errors import error_info_of
from services.market import DocumentKind, MarketDocument, PriceSeries, Product, Slot, Source, save_document
from services.market.summary import zone_timezone
from services.market.zones import BIDDING_ZONES
from tests.support.cloud import Host
from tests.support.identity import authed_channel

FETCHED = datetime(2026, 1, 1, tzinfo=UTC)
EIC = {short: eic for eic, (short, _) in BIDDING_ZONES.items()}
# Zones with today's hourly prices stored: hour i of the local day costs base + i.
BASES = {"FR": 10.0, "NL": 20.0, "BE": 30.0, "AT": 40.0}


def _today(short: str, base: float, name: str) -> MarketDocument:
    """Today's day-ahead prices of `short` in its local day: slot i costs base + i."""
    zone = EIC[short]
    tz = zone_timezone(zone)
    day = datetime.now(UTC).astimezone(tz).date()
    start = datetime.combine(day, time(0), tz).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(0), tz).astimezone(UTC)
    step = timedelta(hours=1)
    slots = tuple(Slot(start + i * step, base + i) for i in range(int((end - start) / step)))
    series = PriceSeries(zone, Product.DAY_AHEAD, step, slots)
    return MarketDocument(Source.ENTSOE, DocumentKind.PRICES, name, 1, None, prices=(series,), interval=(start, end))


def _comparable(summary: market_pb2.MarketSummary) -> market_pb2.MarketSummary:
    """The summary without the time it was read at (two reads are never at the same instant)."""
    out = market_pb2.MarketSummary()
    out.CopyFrom(summary)
    out.ClearField("read_time")
    return out


@pytest.fixture(scope="module")
async def stored(migrated_url: str) -> None:
    conn = await asyncpg.connect(migrated_url)
    try:
        for short, base in BASES.items():
            await save_document(conn, _today(short, base, f"gathered-{short}"), FETCHED)
        # PT holds two prices for 00:15 today: an hourly day, then one quarter hour from 00:15 that does
        # not replace the 00:00 hour (the store replaces what starts inside a document's interval) and
        # disagrees with it. Its summary is refused with FAILED_PRECONDITION (summarise's AnalyticsError).
        hourly = _today("PT", 1.0, "gathered-PT-hourly")
        await save_document(conn, hourly, FETCHED)
        start = hourly.prices[0].slots[0].start + timedelta(minutes=15)
        quarter = PriceSeries(EIC["PT"], Product.DAY_AHEAD, timedelta(minutes=15), (Slot(start, 99.0),))
        await save_document(
            conn,
            MarketDocument(
                Source.ENTSOE,
                DocumentKind.PRICES,
                "gathered-PT-quarter",
                1,
                None,
                prices=(quarter,),
                interval=(start, start + timedelta(minutes=15)),
            ),
            FETCHED,
        )
    finally:
        await conn.close()


@asynccontextmanager
async def prices_locked(db: asyncpg.Connection) -> AsyncIterator[None]:
    """market.prices locked against reads until the block ends (its transaction commits)."""
    async with db.transaction():
        await db.execute("LOCK TABLE market.prices IN ACCESS EXCLUSIVE MODE")
        yield


async def _reads_waiting(db: asyncpg.Connection) -> int:
    """Queries of the module's database waiting for a lock (the server's summary reads, here)."""
    return int(
        await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    )


async def _until_a_read_waits(db: asyncpg.Connection) -> None:
    async with asyncio.timeout(10):  # a read that never comes fails the test, not the suite's timeout
        while not await _reads_waiting(db):
            await asyncio.sleep(0.01)


async def test_gathered_calls_get_their_own_zones_summary_read_after_they_arrived(
    host: Host, token: str, stored: None, db: asyncpg.Connection
) -> None:
    async with host(["market"]) as (server, _), authed_channel(server.port, token) as ch:
        stub = market_pb2_grpc.MarketDataServiceStub(ch)
        lone = {short: await stub.GetMarketSummary(market_pb2.GetMarketSummaryRequest(zone=short)) for short in BASES}
        before = await stub.GetMarketSummary(market_pb2.GetMarketSummaryRequest(zone="CH"))
        assert not before.HasField("today_minimum")  # CH has no price stored yet

        wanted = ["NL", "BE", "CH", "AT", "NL", "FR"]
        async with prices_locked(db):
            first = asyncio.ensure_future(stub.GetMarketSummary(market_pb2.GetMarketSummaryRequest(zone="FR")))
            await _until_a_read_waits(db)  # the first call's read waits for the lock
            gathered = [
                asyncio.ensure_future(stub.GetMarketSummary(market_pb2.GetMarketSummaryRequest(zone=short)))
                for short in wanted
            ]
            await asyncio.sleep(0.2)  # lets the calls reach the server (what follows holds either way)
            # Stored after the calls were made: the read that answers them starts after this commits.
            await save_document(db, _today("CH", 50.0, "gathered-CH"), FETCHED)
        answers = await asyncio.gather(first, *gathered)

        assert _comparable(answers[0]) == _comparable(lone["FR"])
        for short, answer in zip(wanted, answers[1:], strict=True):
            assert answer.zone == EIC[short]
            if short == "CH":
                assert answer.today_minimum.value == 50.0 and answer.today_complete
            else:
                assert _comparable(answer) == _comparable(lone[short])
                assert answer.today_minimum.value == BASES[short]


async def test_one_zones_failure_fails_only_its_calls(
    host: Host, token: str, stored: None, db: asyncpg.Connection
) -> None:
    async with host(["market"]) as (server, _), authed_channel(server.port, token) as ch:
        stub = market_pb2_grpc.MarketDataServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as alone:
            await stub.GetMarketSummary(market_pb2.GetMarketSummaryRequest(zone="PT"))
        assert alone.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "two prices" in (alone.value.details() or "")

        wanted = ["PT", "NL", "PT", "BE"]
        async with prices_locked(db):
            first = asyncio.ensure_future(stub.GetMarketSummary(market_pb2.GetMarketSummaryRequest(zone="FR")))
            await _until_a_read_waits(db)
            gathered = [
                asyncio.ensure_future(stub.GetMarketSummary(market_pb2.GetMarketSummaryRequest(zone=short)))
                for short in wanted
            ]
            await asyncio.sleep(0.2)  # lets the calls reach the server and gather
        answers = await asyncio.gather(first, *gathered, return_exceptions=True)
        assert isinstance(answers[0], market_pb2.MarketSummary) and answers[0].today_minimum.value == BASES["FR"]
        for short, answer in zip(wanted, answers[1:], strict=True):
            if short == "PT":
                assert isinstance(answer, grpc.aio.AioRpcError), answer
                assert answer.code() == grpc.StatusCode.FAILED_PRECONDITION
            else:
                assert isinstance(answer, market_pb2.MarketSummary), answer
                assert answer.today_minimum.value == BASES[short]

        # A batch is one call: its first failing zone fails it, as before.
        with pytest.raises(grpc.aio.AioRpcError) as batch:
            await stub.BatchGetMarketSummaries(market_pb2.BatchGetMarketSummariesRequest(zones=["NL", "PT"]))
        assert batch.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # Validation stays per call, before any gathering, naming the call's field.
        with pytest.raises(grpc.aio.AioRpcError) as pvpc:
            await stub.GetMarketSummary(
                market_pb2.GetMarketSummaryRequest(zone="FR", product=market_pb2.MARKET_PRODUCT_PVPC)
            )
        assert pvpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_status.from_call(pvpc.value)  # type: ignore[arg-type]
        info = error_info_of(status) if status is not None else None
        assert info is not None and info.metadata["field"] == "zone", pvpc.value


async def test_a_cancelled_call_leaves_the_read_running_for_the_others(
    host: Host, token: str, stored: None, db: asyncpg.Connection
) -> None:
    async with host(["market"]) as (server, _), authed_channel(server.port, token) as ch:
        stub = market_pb2_grpc.MarketDataServiceStub(ch)
        async with prices_locked(db):
            leaving = stub.GetMarketSummary(market_pb2.GetMarketSummaryRequest(zone="FR"))
            await _until_a_read_waits(db)
            gathered_leaving = stub.GetMarketSummary(market_pb2.GetMarketSummaryRequest(zone="NL"))
            staying = asyncio.ensure_future(stub.GetMarketSummary(market_pb2.GetMarketSummaryRequest(zone="BE")))
            await asyncio.sleep(0.2)  # lets the calls reach the server and gather
            leaving.cancel()
            gathered_leaving.cancel()
            for call in (leaving, gathered_leaving):
                with pytest.raises(asyncio.CancelledError):
                    await call
            await asyncio.sleep(0.2)  # lets the cancellations reach the server
            # The read the cancelled call started still waits for the lock: it was not cancelled.
            assert await _reads_waiting(db) == 1
        answer = await staying
        assert answer.zone == EIC["BE"] and answer.today_minimum.value == BASES["BE"]
        # Nothing is left stuck: later calls are read and answered.
        again = await asyncio.gather(
            *(stub.GetMarketSummary(market_pb2.GetMarketSummaryRequest(zone=z)) for z in ("FR", "NL"))
        )
        assert [a.today_minimum.value for a in again] == [BASES["FR"], BASES["NL"]]
