"""The sources' configuration from EMMA_* variables, the token bucket's per-minute bound, and the
limits on what an answer may be (size, zips)."""

from __future__ import annotations

import asyncio
import io
import zipfile
from datetime import UTC, datetime

import pytest

from core.errors import ConfigError
from launcher.market_replay.recordings import RECORDINGS
from services.market.sources import (
    BadResponse,
    EntsoeClient,
    EsiosClient,
    SourceConfigError,
    SourcesConfig,
    TokenBucket,
)
from services.market.sources.entsoe import EntsoeDialect
from services.market.sources.fetch import retry_after_s, unzip_documents
from tests.support.market_replay import replay_server, sources_config

ENTSOE_XML = RECORDINGS / "entsoe" / "A44_DE-LU_2024-10-06_07_dayahead_PT60M+PT15M_negative.xml"


def test_the_config_reads_emma_variables_and_never_shows_a_token() -> None:
    config = SourcesConfig.from_env(
        {
            "EMMA_ENTSOE_TOKEN": " entsoe-secret-value ",
            "EMMA_ESIOS_TOKEN": "esios-secret-value",
            "EMMA_ENTSOE_URL": "http://127.0.0.1:8089/api/",
            "EMMA_MARKET_READ_TIMEOUT_S": "2.5",
            "EMMA_MARKET_RETRIES": "0",
            "EMMA_ENTSOE_REQUESTS_PER_MINUTE": "100",
        }
    )
    assert config.entsoe_token == "entsoe-secret-value"
    assert (config.entsoe_url, config.read_timeout_s, config.retries) == ("http://127.0.0.1:8089/api", 2.5, 0)
    assert config.entsoe_per_minute == 100
    assert config.redata_url == "https://apidatos.ree.es" and config.esios_url == "https://api.esios.ree.es"
    assert "secret" not in repr(config)


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("EMMA_ENTSOE_URL", "http://transparency.example.org/api", "plain http is allowed only on the loopback"),
        ("EMMA_ESIOS_URL", "ftp://127.0.0.1", r"is not an http\(s\) URL"),
        ("EMMA_REDATA_URL", "https://user:pw@apidatos.ree.es", "must not carry"),
        ("EMMA_MARKET_RETRIES", "many", "is not an integer"),
        ("EMMA_MARKET_READ_TIMEOUT_S", "0", "must be at least"),
    ],
)
def test_a_bad_setting_is_a_config_error_naming_the_variable(name: str, value: str, problem: str) -> None:
    with pytest.raises(SourceConfigError, match=problem) as raised:
        SourcesConfig.from_env({name: value})
    assert name in str(raised.value)
    assert isinstance(raised.value, ConfigError)


async def test_the_token_bucket_never_lets_more_than_the_limit_through_in_a_minute() -> None:
    now = [0.0]

    async def advance(delay: float) -> None:
        now[0] += delay

    bucket = TokenBucket(400, clock=lambda: now[0], sleep=advance)
    granted: list[float] = []
    for _ in range(1000):
        await bucket.acquire()
        granted.append(now[0])
    # Every window of 60 s holds at most 400 grants (the first burst included).
    for i, at in enumerate(granted):
        assert sum(1 for t in granted[i:] if t < at + 60.0) <= 400
    assert granted[1000 - 1] < 180.0  # and the limit is used, not starved


async def test_the_token_bucket_serves_concurrent_callers_in_turn() -> None:
    bucket = TokenBucket(6000, burst=2)
    await asyncio.gather(*(bucket.acquire() for _ in range(5)))


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_s("7") == 7.0
    assert retry_after_s("Sat, 05 Dec 2026 08:00:30 GMT", now=datetime(2026, 12, 5, 8, 0, 0, tzinfo=UTC)) == 30.0
    assert retry_after_s("soon") is None and retry_after_s(None) is None


def test_a_zipped_answer_is_unpacked_and_a_zip_bomb_is_refused() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("prices.xml", ENTSOE_XML.read_bytes())
    assert unzip_documents("entsoe", buffer.getvalue(), 1 << 20) == (("prices.xml", ENTSOE_XML.read_bytes()),)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.xml", b"\0" * (8 << 20))
    assert len(bomb.getvalue()) < 100_000
    with pytest.raises(BadResponse, match="larger than"):
        unzip_documents("entsoe", bomb.getvalue(), 1 << 20)
    with pytest.raises(BadResponse, match="unreadable zip"):
        unzip_documents("entsoe", b"PK\x03\x04 not a zip", 1 << 20)


async def test_an_answer_over_the_size_limit_is_a_bad_response() -> None:
    async with replay_server() as server, EntsoeClient(sources_config(server.url, max_response_bytes=4096)) as client:
        with pytest.raises(BadResponse, match="over 4096"):
            await client.day_ahead_prices(
                "10Y1001A1001A82H", datetime(2024, 10, 5, 22, tzinfo=UTC), datetime(2024, 10, 6, 22, tzinfo=UTC)
            )
    assert len(server.seen) == 1


def test_a_client_without_its_token_is_a_config_error_before_any_request() -> None:
    with pytest.raises(SourceConfigError, match="EMMA_ENTSOE_TOKEN is not set"):
        EntsoeClient(SourcesConfig())
    with pytest.raises(SourceConfigError, match="EMMA_ESIOS_TOKEN is not set"):
        EsiosClient(SourcesConfig(entsoe_token="set"))


def test_an_acknowledgement_999_no_matching_data_is_no_data_also_with_http_400() -> None:
    # Older API deployments answered "no data" with HTTP 400 and the same document as today's 200.
    ack = (RECORDINGS / "entsoe" / "Acknowledgement_999_no_matching_data.xml").read_bytes()
    assert EntsoeDialect().no_data(400, "application/xml", ack)
    assert EntsoeDialect().no_data(200, "application/xml", ack)
    other = ack.replace(b"No matching data found", b"The amount of requested data exceeds allowed limit")
    assert not EntsoeDialect().no_data(400, "application/xml", other)
    assert (
        EntsoeDialect().explain(other)
        == "Acknowledgement reason 999: The amount of requested data exceeds allowed limit"
    )
