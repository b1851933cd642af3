"""A site's latest values through the gateway stay right while the services remember the site's edges
(services/telemetry/latest.py): an edge added to the site shows once it reports, a deleted one goes."""

from __future__ import annotations

import time

import asyncpg

from services.identity import issue_edge_key
from services.names import EdgeName
from services.registry import ensure_edge
from tests.gateway.conftest import Client
from tests.support.edge_client import EdgeStream, batch, hello
from tests.support.gateway import EDGE, SITE, Stack


async def _channels(client: Client, parent: str = SITE) -> set[str]:
    async with client() as c:
        r = await c.get(f"/v1/{parent}/latestValues")
    assert r.status_code == 200, r.text
    return {v["channel"].split("/devices/", 1)[0] + "/" + v["channel"].rsplit("/", 1)[1] for v in r.json()["values"]}


async def _report(port: int, edge: EdgeName, key: str, value: float) -> None:
    stream = EdgeStream(port)
    try:
        await stream.send(hello(str(edge), key))
        assert (await stream.recv()).WhichOneof("message") == "welcome"
        await stream.send(batch(1, time.time(), [(0, 0, value)]))
        assert (await stream.recv_ack()).batch_seq == 1
    finally:
        await stream.close()


async def test_an_edge_added_to_a_read_site_shows_once_it_reports_and_goes_when_deleted(
    stack: Stack, client: Client
) -> None:
    first = await _channels(client)
    assert first and all(c.startswith(f"{EDGE}/") for c in first)
    assert await _channels(client) == first  # the site's edges are remembered now

    second = EdgeName("acme", "gw", "gw-second")
    conn = await asyncpg.connect(stack.dsn)
    try:
        pk = await ensure_edge(conn, second, time_zone="Europe/Madrid")
        _, key = await issue_edge_key(conn, pk, "test")
        assert await _channels(client) == first  # an edge without series has no values yet

        await _report(stack.port, second, key, 61.0)
        grown = await _channels(client)
        assert grown == first | {f"{second}/Soc"}
        assert await _channels(client, str(second)) == {f"{second}/Soc"}

        await conn.execute("DELETE FROM app.edges WHERE pk = $1", pk)
        assert await _channels(client) == first
        assert await _channels(client, str(second)) == set()
    finally:
        await conn.close()
