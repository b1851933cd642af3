"""Gateway fixtures: the real cloud services on loopback, telemetry pushed through a real EdgeLink
stream, and the gateway app in front of them (in-process over ASGI, or under uvicorn on port 0).

Every service of the catalog is hosted the way `emma serve all` hosts it (services.cloud), and the
tests call as a user logged in through the gateway itself. The TelemetryService is the real servicer
with observation points added (the metadata and deadline a call arrived with, and whether a live
stream saw its cancellation), because those are facts only the server side can tell. A separate
server of UNIMPLEMENTED stand-ins checks the mapping of a not-yet-served method.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncpg
import httpx
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from core.tracing import configure_tracing
from gateway.app import create_app
from gateway.config import GatewayConfig
from gateway.server import running_gateway
from tests.support.cloud import new_edge
from tests.support.gateway import Client, Stack, create_user, hosted, login, push_telemetry


@pytest.fixture(scope="module")
async def stack(migrated_url: str) -> AsyncIterator[Stack]:
    provider = configure_tracing("emma")
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    conn = await asyncpg.connect(migrated_url)
    try:
        _, _, key = await new_edge(conn, "gw")
    finally:
        await conn.close()
    await create_user(migrated_url, "acme")
    async with hosted(migrated_url) as (port, telemetry):
        token = await login(GatewayConfig(target=f"127.0.0.1:{port}"))
        now = time.time()
        # 30 minutes of samples a minute apart for battery_1/Soc (0) and meter/GridPower (2).
        points = [(0, now - 1800 + 60 * i, 50.0 + i) for i in range(30)]
        points += [(2, now - 1800 + 60 * i, -1000.0 * i) for i in range(30)]
        await push_telemetry(port, key, points, seq=1)
        s = Stack(port=port, dsn=migrated_url, telemetry=telemetry, edge_key=key, spans=spans, token=token)
        s.pushed = {
            "battery_1/Soc": [(t, v) for c, t, v in points if c == 0],
            "meter/GridPower": [(t, v) for c, t, v in points if c == 2],
        }
        yield s
    provider.force_flush()


@pytest.fixture
def client(stack: Stack) -> Client:
    """client(**GatewayConfig overrides) -> an httpx client of a fresh gateway app over ASGI, sending the
    test user's Authorization unless anonymous=True."""

    @contextlib.asynccontextmanager
    async def make(anonymous: bool = False, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(stack.config(**overrides))
        transport = httpx.ASGITransport(app=app)
        headers = {} if anonymous else stack.headers
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test", headers=headers) as c:
                yield c
        finally:
            await app.state.gateway.close()

    return make


@pytest.fixture
def served(stack: Stack) -> Callable[..., AbstractAsyncContextManager[int]]:
    """served(**overrides) -> the port of a gateway under a real uvicorn server."""

    def make(**overrides: Any) -> AbstractAsyncContextManager[int]:
        return running_gateway(stack.config(host="127.0.0.1", **overrides))

    return make
