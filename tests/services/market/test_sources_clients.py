"""The real market clients against the replay server on loopback: each source's recorded document comes
back byte for byte and parses; "no data" is recognised per source; a conditional re-fetch gets a 304."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from launcher.market_replay.recordings import RECORDINGS
from services.market.documents import parse_document
from services.market.model import DocumentKind, Product, Source
from services.market.sources import EntsoeClient, EsiosClient, RedataClient, Validators
from tests.support.market_replay import replay_server, sources_config

DE_LU = "10Y1001A1001A82H"
DAY_2024_10_06 = (datetime(2024, 10, 5, 22, tzinfo=UTC), datetime(2024, 10, 6, 22, tzinfo=UTC))
ENTSOE_2024 = RECORDINGS / "entsoe" / "A44_DE-LU_2024-10-06_07_dayahead_PT60M+PT15M_negative.xml"
ENTSOE_2026 = RECORDINGS / "entsoe" / "A44_DE-LU_2026-02-02_03_dayahead_PT15M_two_sequences.xml"
ACK = RECORDINGS / "entsoe" / "Acknowledgement_999_no_matching_data.xml"
REDATA = RECORDINGS / "redata" / "redata_precios-mercados-tiempo-real_2023-11-29_pvpc+spot.json"
ESIOS = RECORDINGS / "redata" / "esios_indicator_1001_PVPC_2024-03-09.json"


async def test_entsoe_day_ahead_prices_are_the_recorded_document_and_parse() -> None:
    async with replay_server() as server, EntsoeClient(sources_config(server.url)) as client:
        fetched = await client.day_ahead_prices(DE_LU, *DAY_2024_10_06)
        later = await client.day_ahead_prices(
            DE_LU, datetime(2026, 2, 2, 23, tzinfo=UTC), datetime(2026, 2, 3, 23, tzinfo=UTC)
        )
    assert fetched.data == ENTSOE_2024.read_bytes()
    assert later.data == ENTSOE_2026.read_bytes()
    assert (fetched.status, fetched.no_data, fetched.attempts) == (200, False, 1)
    assert fetched.validators.etag and fetched.validators.last_modified
    document = parse_document(fetched.data, fetched.name)
    assert document.kind is DocumentKind.PRICES
    assert {(p.zone, p.product) for p in document.prices} == {(DE_LU, Product.DAY_AHEAD)}
    # What the replay saw is what the real API is sent: its parameter names, yyyyMMddHHmm in UTC, no token kept.
    params = server.seen[0].params
    assert params == {
        "documentType": "A44",
        "in_Domain": DE_LU,
        "out_Domain": DE_LU,
        "contract_MarketAgreement.type": "A01",
        "periodStart": "202410052200",
        "periodEnd": "202410062200",
    }


async def test_entsoe_without_data_answers_the_acknowledgement_999() -> None:
    async with replay_server() as server:
        client = EntsoeClient(sources_config(server.url))
        try:
            # A day no recording covers, and the intraday contract the recordings do not carry.
            empty_day = await client.day_ahead_prices(
                DE_LU, datetime(2025, 6, 1, 22, tzinfo=UTC), datetime(2025, 6, 2, 22, tzinfo=UTC)
            )
            intraday = await client.intraday_prices(DE_LU, *DAY_2024_10_06)
            flows = await client.physical_flows("10YFR-RTE------C", DE_LU, *DAY_2024_10_06)
            capacity = await client.forecast_capacity("10YFR-RTE------C", DE_LU, *DAY_2024_10_06)
        finally:
            await client.aclose()
    for fetched in (empty_day, intraday, flows, capacity):
        assert fetched.no_data
        assert fetched.data == ACK.read_bytes()
        assert parse_document(fetched.data, fetched.name).kind is DocumentKind.NO_DATA
    assert [s.params["documentType"] for s in server.seen] == ["A44", "A44", "A11", "A61"]
    assert server.seen[1].params["contract_MarketAgreement.type"] == "A07"
    assert server.seen[3].params["contract_MarketAgreement.Type"] == "A01"
    assert (server.seen[2].params["out_Domain"], server.seen[2].params["in_Domain"]) == ("10YFR-RTE------C", DE_LU)


async def test_redata_prices_are_the_recorded_document_and_parse() -> None:
    start = datetime(2023, 11, 28, 23, tzinfo=UTC)
    async with replay_server() as server, RedataClient(sources_config(server.url)) as client:
        fetched = await client.market_prices(start, start + timedelta(days=1))
    assert fetched.data == REDATA.read_bytes()
    assert server.seen[0].path == "/es/datos/mercados/precios-mercados-tiempo-real"
    # REData's dates are local peninsular time, its end inclusive to the minute.
    assert server.seen[0].params == {
        "start_date": "2023-11-29T00:00",
        "end_date": "2023-11-29T23:59",
        "time_trunc": "hour",
    }
    document = parse_document(fetched.data, fetched.name)
    assert {p.product for p in document.prices} == {Product.PVPC, Product.SPOT}


async def test_redata_no_data_is_its_502_error_body_and_is_not_retried() -> None:
    start = datetime(2022, 1, 1, tzinfo=UTC)
    async with replay_server() as server, RedataClient(sources_config(server.url)) as client:
        fetched = await client.market_prices(start, start + timedelta(days=1))
    assert fetched.no_data and fetched.status == 502 and fetched.attempts == 1
    assert "There are no data" in json.loads(fetched.data)["errors"][0]["detail"]
    assert [s.status for s in server.seen] == [502]


async def test_esios_indicator_is_the_recorded_document_and_parses() -> None:
    start = datetime(2024, 3, 8, 23, tzinfo=UTC)
    async with replay_server() as server, EsiosClient(sources_config(server.url)) as client:
        fetched = await client.indicator(start, start + timedelta(days=1))
        empty = await client.indicator(start + timedelta(days=30), start + timedelta(days=31))
    assert fetched.data == ESIOS.read_bytes()
    assert server.seen[0].path == "/indicators/1001"
    assert server.seen[0].params == {"start_date": "2024-03-08T23:00:00Z", "end_date": "2024-03-09T22:59:59Z"}
    document = parse_document(fetched.data, fetched.name)
    assert document.source is Source.REE_ESIOS
    assert {p.geography for p in document.prices} == {"8741", "8742", "8743", "8744", "8745"}
    assert empty.no_data and json.loads(empty.data)["indicator"]["values"] == []


@pytest.mark.parametrize("by", ["etag", "last_modified"])
async def test_a_conditional_refetch_of_an_unchanged_document_is_a_304(by: str) -> None:
    async with replay_server() as server, EntsoeClient(sources_config(server.url)) as client:
        first = await client.day_ahead_prices(DE_LU, *DAY_2024_10_06)
        kept = (
            Validators(etag=first.validators.etag)
            if by == "etag"
            else Validators(last_modified=first.validators.last_modified)
        )
        again = await client.day_ahead_prices(DE_LU, *DAY_2024_10_06, validators=kept)
        # A different document (another day) is not "unchanged" for the same validators.
        other = await client.day_ahead_prices(
            DE_LU,
            datetime(2026, 2, 1, 23, tzinfo=UTC),
            datetime(2026, 2, 2, 23, tzinfo=UTC),
            validators=Validators(etag=first.validators.etag),
        )
    assert again.not_modified and again.data == b"" and again.status == 304
    assert again.validators.etag == first.validators.etag
    assert not other.not_modified and other.data == ENTSOE_2026.read_bytes()
    assert [(s.status, s.conditional) for s in server.seen] == [(200, False), (304, True), (200, True)]
