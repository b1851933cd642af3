"""MarketDataService on a real gRPC server (loopback, port 0) over the real PostgreSQL: zones and
products, price curves as published and resampled, the latest published day, hourly border flows
with utilisation, today's summary and its batch form, the publication stream, bad input refused
with FIELD_INVALID naming the field, an anonymous caller refused, and one REST call through the
gateway."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
import grpc
import httpx
import pytest
from emma.market.v1 import market_pb2, market_pb2_grpc
from google.protobuf import timestamp_pb2
from grpc_status import rpc_status

from gateway.app import create_app
from gateway.config import GatewayConfig
from services.errors import error_info_of
from services.market import (
    CapacitySeries,
    DocumentKind,
    MarketDocument,
    PriceSeries,
    Product,
    SaveOutcome,
    Slot,
    Source,
    save_document,
)
from services.market.documents import parse_document
from services.market.servicer import MAX_RANGE
from services.market.zones import BIDDING_ZONES
from tests.support.cloud import Host
from tests.support.identity import authed_channel

DATA = Path(__file__).parent / "data"
DE_LU = "10Y1001A1001A82H"
ES = "10YES-REE------0"
FR = "10YFR-RTE------C"
FETCHED = datetime(2024, 10, 5, 11, 5, tzinfo=UTC)
MADRID = ZoneInfo("Europe/Madrid")


def _doc(name: str) -> MarketDocument:
    return parse_document((DATA / name).read_bytes(), name)


def _ts(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def _today_es() -> tuple[datetime, int]:
    """The UTC start of today's Madrid day and its number of hours (23, 24 or 25)."""
    today = datetime.now(UTC).astimezone(MADRID).date()
    start = datetime.combine(today, time(0), MADRID).astimezone(UTC)
    end = datetime.combine(today + timedelta(days=1), time(0), MADRID).astimezone(UTC)
    return start, int((end - start) / timedelta(hours=1))


@pytest.fixture(scope="module")
async def stored(migrated_url: str) -> dict[str, MarketDocument]:
    """The documents every test reads: two real DE-LU days, flows FR -> DE-LU with a capacity for
    the same border, and today's ES day-ahead prices (hour i costs i - 5 EUR/MWh)."""
    flows = _doc("derived_A11_FR-DE-LU_2024-10-07_flows_gap.xml")
    border = next(s for s in flows.flows if (s.out_zone, s.in_zone) == (FR, DE_LU))
    capacity = MarketDocument(
        Source.ENTSOE,
        DocumentKind.CAPACITIES,
        "test-capacity-fr-de",
        1,
        None,
        capacities=(CapacitySeries(FR, DE_LU, timedelta(hours=1), tuple(Slot(s.start, 2000.0) for s in border.slots)),),
    )
    start, hours = _today_es()
    today = MarketDocument(
        Source.ENTSOE,
        DocumentKind.PRICES,
        "test-es-today",
        1,
        None,
        prices=(
            PriceSeries(
                ES,
                Product.DAY_AHEAD,
                timedelta(hours=1),
                tuple(Slot(start + timedelta(hours=i), float(i - 5)) for i in range(hours)),
            ),
        ),
        interval=(start, start + timedelta(hours=hours)),
    )
    docs = {
        "de_2024": _doc("A44_DE-LU_2024-10-06_07_dayahead_PT60M+PT15M_negative.xml"),
        "de_2026": _doc("A44_DE-LU_2026-02-02_03_dayahead_PT15M_two_sequences.xml"),
        "flows": flows,
        "capacity": capacity,
        "es_today": today,
    }
    conn = await asyncpg.connect(migrated_url)
    try:
        for doc in docs.values():
            await save_document(conn, doc, FETCHED)
    finally:
        await conn.close()
    return docs


def _field_invalid(caught: pytest.ExceptionInfo[grpc.aio.AioRpcError], field: str) -> None:
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    info = error_info_of(status)
    assert info is not None and info.reason == "FIELD_INVALID", caught.value
    assert info.metadata["field"] == field, info


async def test_zones_products_and_curves(host: Host, token: str, stored: dict[str, MarketDocument]) -> None:
    async with host(["market"]) as (server, _), authed_channel(server.port, token) as ch:
        stub = market_pb2_grpc.MarketDataServiceStub(ch)

        zones: list[market_pb2.BiddingZone] = []
        token_ = ""
        while True:
            page = await stub.ListBiddingZones(market_pb2.ListBiddingZonesRequest(page_size=10, page_token=token_))
            zones.extend(page.bidding_zones)
            token_ = page.next_page_token
            if not token_:
                break
        assert {z.eic_code for z in zones} == set(BIDDING_ZONES)
        de = next(z for z in zones if z.eic_code == DE_LU)
        assert (de.name, de.short_name, de.time_zone) == (f"biddingZones/{DE_LU}", "DE-LU", "Europe/Berlin")
        products = await stub.ListProducts(market_pb2.ListProductsRequest())
        assert [p.product for p in products.products] == [1, 2, 3, 4]

        # As published: exactly the stored slots of sequence 1, with their document.
        doc = stored["de_2026"]
        seq1 = [s for s in doc.prices if s.sequence == 1]
        assert doc.interval is not None
        first, last = doc.interval
        curve = await stub.GetPriceCurve(
            market_pb2.GetPriceCurveRequest(
                series=market_pb2.SeriesSelector(zone="DE-LU"), start_time=_ts(first), end_time=_ts(last)
            )
        )
        expected = sorted((slot.start, slot.value) for s in seq1 for slot in s.slots)
        assert [(p.start_time.ToDatetime(UTC), p.value) for p in curve.points] == expected
        assert (curve.zone, curve.currency, curve.unit, curve.sequence) == (DE_LU, "EUR", "MWH", 1)
        assert curve.aggregation == market_pb2.AGGREGATION_AS_PUBLISHED
        assert curve.step.ToTimedelta() == timedelta(minutes=15)
        assert [(p.document_id, p.revision, p.fetch_time.ToDatetime(UTC)) for p in curve.publications] == [
            (doc.document_id, doc.revision, FETCHED)
        ]

        # Resampled to the hour: each hour the mean of its four quarter hours.
        hourly = await stub.GetPriceCurve(
            market_pb2.GetPriceCurveRequest(
                series=market_pb2.SeriesSelector(zone=DE_LU),
                start_time=_ts(first),
                end_time=_ts(last),
                resolution=market_pb2.RESOLUTION_1_HOUR,
            )
        )
        assert hourly.aggregation == market_pb2.AGGREGATION_TIME_WEIGHTED_MEAN
        assert hourly.step.ToTimedelta() == timedelta(hours=1)
        quarters = dict(expected)
        for point in hourly.points:
            hour = point.start_time.ToDatetime(UTC)
            values = [quarters[hour + timedelta(minutes=15 * q)] for q in range(4)]
            assert point.value == pytest.approx(sum(values) / 4)
        assert len(hourly.points) == len(expected) // 4

        latest = await stub.GetLatestPublishedDay(
            market_pb2.GetLatestPublishedDayRequest(series=market_pb2.SeriesSelector(zone="DE-LU"))
        )
        newest = max(slot.start for s in doc.prices for slot in s.slots)
        assert latest.delivery_day == newest.astimezone(ZoneInfo("Europe/Berlin")).date().isoformat()
        assert latest.publication.document_id == doc.document_id


async def test_border_flows_summary_and_batch(host: Host, token: str, stored: dict[str, MarketDocument]) -> None:
    async with host(["market"]) as (server, _), authed_channel(server.port, token) as ch:
        stub = market_pb2_grpc.MarketDataServiceStub(ch)
        flows = next(s for s in stored["flows"].flows if (s.out_zone, s.in_zone) == (FR, DE_LU))
        assert flows.resolution == timedelta(hours=1)
        start = min(s.start for s in flows.slots)
        answer = await stub.ListBorderFlows(
            market_pb2.ListBorderFlowsRequest(
                out_zone="FR", in_zone=DE_LU, start_time=_ts(start), end_time=_ts(start + timedelta(days=1))
            )
        )
        by_hour = {h.start_time.ToDatetime(UTC): h for h in answer.hours}
        for slot in flows.slots:
            hour = by_hour[slot.start]
            assert hour.flow_mw == slot.value and hour.capacity_mw == 2000.0
            assert hour.utilisation_ratio == pytest.approx(slot.value / 2000.0)
        # The published gap: an hour with a capacity but no flow has neither flow nor utilisation.
        gaps = [h for h in answer.hours if not h.HasField("flow_mw")]
        assert all(not h.HasField("utilisation_ratio") and h.capacity_mw == 2000.0 for h in gaps)

        day_start, hours = _today_es()
        summary = await stub.GetMarketSummary(market_pb2.GetMarketSummaryRequest(zone="ES"))
        assert (summary.zone, summary.time_zone, summary.currency) == (ES, "Europe/Madrid", "EUR")
        assert summary.today_minimum.value == -5.0
        assert [s.start_time.ToDatetime(UTC) for s in summary.today_minimum.slots] == [day_start]
        assert summary.today_maximum.value == float(hours - 6)
        assert summary.today_mean == pytest.approx(sum(i - 5 for i in range(hours)) / hours)
        assert (summary.negative_slot_count, summary.today_slot_count, summary.today_complete) == (5, hours, True)
        assert [(i.start_time.ToDatetime(UTC), i.end_time.ToDatetime(UTC)) for i in summary.negative_intervals] == [
            (day_start, day_start + timedelta(hours=5))
        ]
        now_hour = int((summary.read_time.ToDatetime(UTC) - day_start) / timedelta(hours=1))
        assert summary.current.value == float(now_hour - 5)

        batch = await stub.BatchGetMarketSummaries(market_pb2.BatchGetMarketSummariesRequest(zones=["ES", "DE-LU"]))
        assert [s.zone for s in batch.summaries] == [ES, DE_LU]
        assert batch.summaries[0].today_minimum.value == -5.0
        # DE-LU has old days only: no price today, the latest day is stated, and it is stale.
        assert not batch.summaries[1].HasField("today_minimum") and batch.summaries[1].stale
        newest = max(slot.start for s in stored["de_2026"].prices for slot in s.slots)
        assert batch.summaries[1].latest_delivery_day == newest.astimezone(ZoneInfo("Europe/Berlin")).date().isoformat()


async def test_bad_input_is_refused_with_the_field_named(
    host: Host, token: str, stored: dict[str, MarketDocument]
) -> None:
    now = datetime.now(UTC)
    async with host(["market"]) as (server, _), authed_channel(server.port, token) as ch:
        stub = market_pb2_grpc.MarketDataServiceStub(ch)
        cases = [
            (
                stub.GetPriceCurve(
                    market_pb2.GetPriceCurveRequest(
                        series=market_pb2.SeriesSelector(zone="XX"), start_time=_ts(now), end_time=_ts(now)
                    )
                ),
                "series.zone",
            ),
            (
                stub.GetPriceCurve(
                    market_pb2.GetPriceCurveRequest(
                        series=market_pb2.SeriesSelector(zone="ES"),
                        start_time=_ts(now),
                        end_time=_ts(now + MAX_RANGE + timedelta(seconds=1)),
                    )
                ),
                "end_time",
            ),
            (
                stub.GetPriceCurve(
                    market_pb2.GetPriceCurveRequest(series=market_pb2.SeriesSelector(zone="ES"), start_time=_ts(now))
                ),
                "end_time",
            ),
            (stub.GetMarketSummary(market_pb2.GetMarketSummaryRequest(zone="Atlantis")), "zone"),
            (stub.BatchGetMarketSummaries(market_pb2.BatchGetMarketSummariesRequest(zones=["ES", "nope"])), "zones[1]"),
            (
                stub.ListBorderFlows(
                    market_pb2.ListBorderFlowsRequest(
                        out_zone="ES", in_zone="ES", start_time=_ts(now), end_time=_ts(now + timedelta(hours=1))
                    )
                ),
                "in_zone",
            ),
            (
                stub.GetLatestPublishedDay(
                    market_pb2.GetLatestPublishedDayRequest(
                        series=market_pb2.SeriesSelector(zone="ES", product=market_pb2.MARKET_PRODUCT_INTRADAY_AUCTION)
                    )
                ),
                "series.auction",
            ),
        ]
        for call, field in cases:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            _field_invalid(caught, field)
        # Just inside the cap is answered.
        curve = await stub.GetPriceCurve(
            market_pb2.GetPriceCurveRequest(
                series=market_pb2.SeriesSelector(zone="ES"), start_time=_ts(now), end_time=_ts(now + MAX_RANGE)
            )
        )
        assert curve.zone == ES
    async with host(["market"]) as (server, _), grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as anonymous:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await market_pb2_grpc.MarketDataServiceStub(anonymous).ListProducts(market_pb2.ListProductsRequest())
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_watch_publications_streams_what_another_replica_stores(
    host: Host, token: str, db: asyncpg.Connection, stored: dict[str, MarketDocument]
) -> None:
    doc = stored["de_2024"]
    revised = replace(
        doc,
        revision=doc.revision + 1,
        prices=tuple(replace(s, slots=tuple(Slot(x.start, x.value + 1) for x in s.slots)) for s in doc.prices),
    )
    async with host(["market"]) as (server, _), authed_channel(server.port, token) as ch:
        stub = market_pb2_grpc.MarketDataServiceStub(ch)
        only_fr = stub.WatchPublications(market_pb2.WatchPublicationsRequest(zones=["FR"]))
        call = stub.WatchPublications(market_pb2.WatchPublicationsRequest(zones=["DE-LU"]))
        await call.initial_metadata()
        await only_fr.initial_metadata()
        # Stored through a plain connection, as the fetch scheduler on any replica does.
        result = await save_document(db, revised, FETCHED + timedelta(hours=1))
        publication = await asyncio.wait_for(call.read(), timeout=10)
        assert isinstance(publication, market_pb2.Publication)
        assert (publication.document.document_id, publication.document.revision) == (doc.document_id, result.revision)
        assert publication.outcome == market_pb2.PUBLICATION_OUTCOME_REVISED
        assert list(publication.zones) == [DE_LU] and publication.kind == "prices"
        call.cancel()
        # The FR watcher got nothing of it: a capacity for FR arrives as its first message.
        fr_doc = replace(stored["capacity"], document_id="test-capacity-fr-de-2")
        fr_doc = replace(
            fr_doc,
            capacities=(
                replace(fr_doc.capacities[0], slots=tuple(Slot(s.start, 1500.0) for s in fr_doc.capacities[0].slots)),
            ),
        )
        await save_document(db, fr_doc, FETCHED + timedelta(hours=2))
        first_fr = await asyncio.wait_for(only_fr.read(), timeout=10)
        assert isinstance(first_fr, market_pb2.Publication)
        assert first_fr.document.document_id == "test-capacity-fr-de-2"
        only_fr.cancel()


async def test_a_watch_ends_with_aborted_when_the_servers_listen_connection_is_lost(
    host: Host, token: str, db: asyncpg.Connection, stored: dict[str, MarketDocument]
) -> None:
    # What the database announced while the server was not listening is gone: the stream must not go
    # on as if nothing was missed, and a new watch gets what is stored after the server reconnected.
    async with host(["market"]) as (server, _), authed_channel(server.port, token) as ch:
        stub = market_pb2_grpc.MarketDataServiceStub(ch)
        call = stub.WatchPublications(market_pb2.WatchPublicationsRequest())
        await call.initial_metadata()
        (listener,) = await db.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query = 'LISTEN \"emma_market\"'"
        )
        await db.execute("SELECT pg_terminate_backend($1)", listener["pid"])
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(call.read(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.ABORTED
        status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
        assert status is not None
        info = error_info_of(status)
        assert info is not None and info.reason == "WATCH_INTERRUPTED", caught.value
        assert "watch again and re-read" in caught.value.details()

        again = stub.WatchPublications(market_pb2.WatchPublicationsRequest())
        await again.initial_metadata()  # sent once the server listens again
        # New values: a document that only repeats what is stored announces nothing.
        doc = replace(stored["capacity"], document_id="test-capacity-after-reconnect")
        series = doc.capacities[0]
        doc = replace(doc, capacities=(replace(series, slots=tuple(Slot(x.start, 1234.0) for x in series.slots)),))
        result = await save_document(db, doc, FETCHED + timedelta(hours=3))
        assert result.outcome in (SaveOutcome.STORED, SaveOutcome.REVISED), result  # both are announced
        publication = await asyncio.wait_for(again.read(), timeout=10)
        assert isinstance(publication, market_pb2.Publication)
        assert publication.document.document_id == "test-capacity-after-reconnect"
        again.cancel()


async def test_the_summary_over_rest_through_the_gateway(
    host: Host, token: str, stored: dict[str, MarketDocument]
) -> None:
    async with host(["market"]) as (server, _):
        app = create_app(GatewayConfig(target=f"127.0.0.1:{server.port}", port=0))
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://gateway.test",
                headers={"Authorization": f"Bearer {token}"},
            ) as client:
                ok = await client.get("/v1/market/summary", params={"zone": "ES"})
                assert ok.status_code == 200, ok.text
                body = ok.json()
                assert body["zone"] == ES and body["todayMinimum"]["value"] == -5.0
                bad = await client.get("/v1/market/summary", params={"zone": "Atlantis"})
                assert bad.status_code == 400, bad.text
                assert bad.json()["error"]["details"][0]["reason"] == "FIELD_INVALID"
        finally:
            await app.state.gateway.close()
