"""A server stream with nothing to say yet still starts its HTTP response at once.

The gateway waits for a stream's first message so that an immediate refusal keeps its proper HTTP
status; a watch of events that have not happened yet (market publications) used to hold the client
without any headers until the first event or the gateway's stream deadline (then a 504).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import asyncpg

from services.market import save_document
from services.market.documents import parse_document
from tests.gateway.test_end_to_end import SseReader
from tests.support.gateway import Stack, http_client

DATA = Path(__file__).parents[1] / "services/market/data"
DOCUMENT = DATA / "A44_DE-LU_2024-10-06_07_dayahead_PT60M+PT15M_negative.xml"
LATER_DOCUMENT = DATA / "A44_DE-LU_2026-02-02_03_dayahead_PT15M_two_sequences.xml"


async def test_a_watch_without_events_answers_200_at_once_and_relays_the_first_publication(
    stack: Stack, served: Any
) -> None:
    async with served() as port, http_client(port, stack, timeout=10) as c:
        headers = {"accept": "text/event-stream"}
        async with c.stream("GET", "/v1/market/publications:watch", headers=headers) as r:
            # The headers arrived while no publication existed (before the fix: a ReadTimeout here).
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            conn = await asyncpg.connect(stack.dsn)
            try:
                document = parse_document(DOCUMENT.read_bytes(), DOCUMENT.name)
                await save_document(conn, document, dt.datetime.now(dt.UTC))
            finally:
                await conn.close()
            ((kind, publication),) = await SseReader(r).events(1)
            assert kind == "message"
            assert publication["document"]["documentId"] == document.document_id


async def test_a_refused_watch_still_answers_its_http_status(stack: Stack, served: Any) -> None:
    async with served() as port, http_client(port, stack, timeout=10) as c:
        r = await c.get("/v1/market/publications:watch", params={"zones": "Atlantis"})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["details"][0]["reason"] == "FIELD_INVALID"


async def test_a_slow_first_message_is_still_delivered(stack: Stack, served: Any) -> None:
    """The read that was still pending when the response started is the one that delivers the first event."""
    async with (
        served() as port,
        http_client(port, stack, timeout=10) as c,
        c.stream("GET", "/v1/market/publications:watch") as r,
    ):
        assert r.status_code == 200
        await asyncio.sleep(1.5)  # past the gateway's wait for a first message
        conn = await asyncpg.connect(stack.dsn)
        try:
            document = parse_document(LATER_DOCUMENT.read_bytes(), LATER_DOCUMENT.name)
            await save_document(conn, document, dt.datetime.now(dt.UTC))
        finally:
            await conn.close()
        first = await asyncio.wait_for(anext(r.aiter_lines()), 10)
        assert document.document_id in first
