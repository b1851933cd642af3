"""The replay server itself: the demo re-dating aid, the fault-control endpoints, its answers to bad
queries and keys, and `python -m launcher.market_replay` as a process."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime, timedelta

import httpx

from launcher.market_replay.recordings import RECORDINGS
from services.market.documents import parse_document
from services.market.sources import EntsoeClient
from tests.support.market_replay import ENTSOE_TOKEN, ESIOS_TOKEN, replay_server, sources_config

DE_LU = "10Y1001A1001A82H"
RECORDED = RECORDINGS / "entsoe" / "A44_DE-LU_2026-02-02_03_dayahead_PT15M_two_sequences.xml"


async def test_redate_moves_the_recorded_days_onto_the_requested_days_with_values_unchanged() -> None:
    start = datetime(2026, 12, 4, 23, tzinfo=UTC)
    async with replay_server(redate=True) as server, EntsoeClient(sources_config(server.url)) as client:
        moved = await client.day_ahead_prices(DE_LU, start, start + timedelta(days=1))
    assert not moved.no_data
    original = parse_document(RECORDED.read_bytes(), RECORDED.name)
    shifted = parse_document(moved.data, moved.name)
    days = (start - datetime(2026, 2, 1, 23, tzinfo=UTC)).days
    assert len(shifted.prices) == len(original.prices)
    for before, after in zip(original.prices, shifted.prices, strict=True):
        assert [s.value for s in after.slots] == [s.value for s in before.slots]
        assert [s.start for s in after.slots] == [s.start + timedelta(days=days) for s in before.slots]
    assert shifted.interval is not None and shifted.interval[0] == start


async def test_each_day_moved_from_one_recording_is_a_publication_of_its_own() -> None:
    # Two days moved from one recording under the recorded id and revision: the store took the second for
    # the first again (UNCHANGED) and the demo had no prices for it.
    first = datetime(2026, 12, 4, 23, tzinfo=UTC)
    async with replay_server(redate=True) as server, EntsoeClient(sources_config(server.url)) as client:
        one = await client.day_ahead_prices(DE_LU, first, first + timedelta(days=1))
        two = await client.day_ahead_prices(DE_LU, first + timedelta(days=1), first + timedelta(days=2))
    original = parse_document(RECORDED.read_bytes(), RECORDED.name)
    ids = [parse_document(f.data, f.name).document_id for f in (one, two)]
    assert ids[0] != ids[1] and all(i.startswith(original.document_id + "-d") for i in ids)


async def test_faults_can_be_injected_over_http_when_the_control_endpoints_are_on() -> None:
    async with replay_server(control=True) as server, httpx.AsyncClient(base_url=server.url) as control:
        added = await control.post("/_replay/faults", json={"status": 503, "count": 2, "source": "entsoe"})
        assert added.status_code == 201
        refused = await control.post("/_replay/faults", json={"count": 1})
        assert refused.status_code == 400 and "needs a status or hang_s" in refused.json()["error"]
        async with EntsoeClient(sources_config(server.url)) as client:
            fetched = await client.day_ahead_prices(
                DE_LU, datetime(2026, 2, 1, 23, tzinfo=UTC), datetime(2026, 2, 2, 23, tzinfo=UTC)
            )
        assert fetched.attempts == 3
        seen = (await control.get("/_replay/requests")).json()
        assert [s["status"] for s in seen] == [503, 503, 200]
        assert all("securityToken" not in s["params"] for s in seen)
        assert (await control.delete("/_replay/faults")).status_code == 204
    async with replay_server() as plain, httpx.AsyncClient(base_url=plain.url) as client:
        assert (await client.post("/_replay/faults", json={"status": 503})).status_code in (404, 405)


async def test_bad_queries_and_keys_get_the_real_apis_answers() -> None:
    async with replay_server() as server, httpx.AsyncClient(base_url=server.url) as client:
        no_token = await client.get("/api", params={"documentType": "A44"})
        no_period = await client.get("/api", params={"securityToken": ENTSOE_TOKEN, "documentType": "A44"})
        redata = await client.get("/es/datos/mercados/precios-mercados-tiempo-real", params={"start_date": "x"})
        esios_no_key = await client.get("/indicators/1001")
        esios_latest = await client.get("/indicators/1001", headers={"x-api-key": ESIOS_TOKEN})
    assert no_token.status_code == 401 and "Missing or invalid security token" in no_token.text
    assert no_period.status_code == 400 and b"<code>999</code>" in no_period.content
    assert redata.status_code == 400 and redata.json()["errors"][0]["code"] == 400
    assert esios_no_key.status_code == 403
    assert esios_latest.status_code == 200 and esios_latest.json()["indicator"]["id"] == 1001


async def test_the_replay_runs_as_a_process_with_the_tokens_from_the_environment() -> None:
    env = {**os.environ, "EMMA_ENTSOE_TOKEN": ENTSOE_TOKEN, "EMMA_ESIOS_TOKEN": ESIOS_TOKEN}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "launcher.market_replay",
        "--port",
        "0",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        url = line.split(" listening on ")[1].split()[0]
        async with EntsoeClient(sources_config(url)) as client:
            fetched = await client.day_ahead_prices(
                DE_LU, datetime(2026, 2, 1, 23, tzinfo=UTC), datetime(2026, 2, 2, 23, tzinfo=UTC)
            )
        assert fetched.data == RECORDED.read_bytes()
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)
    missing = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "launcher.market_replay",
        "--port",
        "0",
        env={k: v for k, v in env.items() if k != "EMMA_ESIOS_TOKEN"},
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(missing.communicate(), 30)
    assert missing.returncode == 2 and b"EMMA_ESIOS_TOKEN" in err
