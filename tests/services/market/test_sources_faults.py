"""The shared fetch layer under faults, with the real clients against the replay server: 5xx and 429
are retried (Retry-After honoured), a hang times out and is retried, a refused token is never retried,
a source that is down ends in SourceUnavailable after the configured retries, and no secret reaches a
log line or an error."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from launcher.market_replay import Fault
from services.market.sources import (
    EntsoeClient,
    EsiosClient,
    QueryRefused,
    RedataClient,
    SourceUnavailable,
    TokenRefused,
)
from tests.support.market_replay import ENTSOE_TOKEN, ESIOS_TOKEN, SleepLog, replay_server, sources_config

DE_LU = "10Y1001A1001A82H"
DAY = (datetime(2024, 10, 5, 22, tzinfo=UTC), datetime(2024, 10, 6, 22, tzinfo=UTC))
REDATA_DAY = (datetime(2023, 11, 28, 23, tzinfo=UTC), datetime(2023, 11, 29, 23, tzinfo=UTC))
ESIOS_DAY = (datetime(2024, 3, 8, 23, tzinfo=UTC), datetime(2024, 3, 9, 23, tzinfo=UTC))


async def test_server_errors_are_retried_until_the_document_comes() -> None:
    sleep = SleepLog()
    async with (
        replay_server(Fault(status=503, count=2)) as server,
        EntsoeClient(sources_config(server.url), sleep=sleep) as client,
    ):
        fetched = await client.day_ahead_prices(DE_LU, *DAY)
    assert fetched.status == 200 and fetched.attempts == 3
    assert [s.status for s in server.seen] == [503, 503, 200]
    # Exponential backoff with full jitter: each wait within its (small, test-configured) ceiling.
    assert len(sleep.delays) == 2
    assert all(0 <= d <= ceiling for d, ceiling in zip(sleep.delays, (0.01, 0.02), strict=True))


async def test_a_429_waits_what_retry_after_asks() -> None:
    sleep = SleepLog()
    async with (
        replay_server(Fault(status=429, retry_after="1", source="redata")) as server,
        RedataClient(sources_config(server.url), sleep=sleep) as client,
    ):
        fetched = await client.market_prices(*REDATA_DAY)
    assert fetched.status == 200 and fetched.attempts == 2
    assert sleep.delays == [1.0]
    assert [s.status for s in server.seen] == [429, 200]


async def test_a_429_asking_longer_than_allowed_fails_at_once() -> None:
    async with (
        replay_server(Fault(status=429, retry_after="3600")) as server,
        EntsoeClient(sources_config(server.url, retry_after_max_s=60.0)) as client,
    ):
        with pytest.raises(SourceUnavailable, match="rate limited for 3600 s") as raised:
            await client.day_ahead_prices(DE_LU, *DAY)
    assert raised.value.attempts == 1
    assert len(server.seen) == 1


async def test_a_hang_times_out_and_the_retry_gets_the_document() -> None:
    async with (
        replay_server(Fault(hang_s=30.0, source="esios")) as server,
        EsiosClient(sources_config(server.url, read_timeout_s=0.3)) as client,
    ):
        fetched = await client.indicator(*ESIOS_DAY)
    assert fetched.status == 200 and fetched.attempts == 2


async def test_a_server_trickling_its_answer_is_cut_off_at_the_deadline_and_retried() -> None:
    # Each piece arrives well within the read timeout; only the per-attempt deadline stops the attempt.
    async with (
        replay_server(Fault(trickle_s=0.2, source="redata")) as server,
        RedataClient(sources_config(server.url, read_timeout_s=2.0, request_deadline_s=0.5)) as client,
    ):
        fetched = await client.market_prices(*REDATA_DAY)
    assert fetched.status == 200 and fetched.attempts == 2
    assert len(server.seen) == 2


@pytest.mark.parametrize("source", ["entsoe", "esios"])
async def test_a_refused_token_is_token_refused_and_never_retried(source: str) -> None:
    async with replay_server() as server:
        if source == "entsoe":
            async with EntsoeClient(sources_config(server.url, entsoe_token="not-the-token")) as entsoe:
                with pytest.raises(TokenRefused, match="HTTP 401"):
                    await entsoe.day_ahead_prices(DE_LU, *DAY)
        else:
            async with EsiosClient(sources_config(server.url, esios_token="not-the-key")) as esios:
                with pytest.raises(TokenRefused, match="HTTP 403"):
                    await esios.indicator(*ESIOS_DAY)
    assert len(server.seen) == 1


async def test_a_source_that_is_down_is_unavailable_after_the_configured_retries() -> None:
    async with replay_server() as server:
        url = server.url
    sleep = SleepLog()
    async with EntsoeClient(sources_config(url, retries=3), sleep=sleep) as client:
        with pytest.raises(SourceUnavailable, match="connection failed") as raised:
            await client.day_ahead_prices(DE_LU, *DAY)
    assert raised.value.attempts == 4
    assert len(sleep.delays) == 3


async def test_a_refused_query_is_query_refused_with_the_acknowledgement_text() -> None:
    async with replay_server() as server:
        # The clients never send a period over a year; the API refuses one with a 400 Acknowledgement.
        async with EntsoeClient(sources_config(server.url)) as client:
            with pytest.raises(QueryRefused, match="over a year; query not sent"):
                await client.day_ahead_prices(DE_LU, DAY[0], DAY[0] + timedelta(days=400))
            with pytest.raises(QueryRefused, match="not an EIC"):
                await client.day_ahead_prices("DE&securityToken=x", *DAY)
        assert server.seen == []
        async with httpx.AsyncClient() as raw:
            answer = await raw.get(
                f"{server.url}/api",
                params={
                    "securityToken": ENTSOE_TOKEN,
                    "documentType": "A44",
                    "in_Domain": DE_LU,
                    "out_Domain": DE_LU,
                    "periodStart": "202410052200",
                    "periodEnd": "202610052200",
                },
            )
    assert answer.status_code == 400
    assert b"Acknowledgement_MarketDocument" in answer.content and b"exceeds the allowed limit" in answer.content


async def test_no_secret_reaches_a_log_line_or_an_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with replay_server(Fault(status=503, source="entsoe")) as server:
        url = server.url
        async with EntsoeClient(sources_config(url)) as entsoe, EsiosClient(sources_config(url)) as esios:
            await entsoe.day_ahead_prices(DE_LU, *DAY)
            await esios.indicator(*ESIOS_DAY)
    errors: list[str] = []
    async with EntsoeClient(sources_config(url, retries=1)) as entsoe:
        try:
            await entsoe.day_ahead_prices(DE_LU, *DAY)
        except SourceUnavailable as exc:
            errors.append(str(exc))
    assert errors and "securityToken=***" in errors[0]
    lines = [record.getMessage() + repr(vars(record)) for record in caplog.records]
    assert any("HTTP Request" in line for line in lines)  # httpx did log the requests...
    assert any("securityToken=***" in line for line in lines)  # ...with the token replaced
    for text in lines + errors:
        assert ENTSOE_TOKEN not in text and ESIOS_TOKEN not in text
