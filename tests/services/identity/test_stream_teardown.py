"""A server stream that the client abandons ends without errors about the call state's context.

When a client goes away while a server stream is blocked sending (flow control), grpc.aio drops the
stream's generator unfinished; the event loop's async-generator finalizer closes it later in a task
of its own, in another context. The auth interceptor's clean-up runs there, so it must not reset a
ContextVar token (that raises "Token was created in a different Context", logged as "Task exception
was never retrieved").
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from emma.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc

from services.identity.interceptor import AuthInterceptor
from services.identity.state import AuthState
from services.platform.config import ServerConfig
from services.platform.server import create_server, start_server
from tests.support.identity import auth_config, authed_channel, grant


class _Flood(telemetry_pb2_grpc.TelemetryServiceServicer):
    """Streams large messages as fast as the transport takes them, so a client that stops reading
    leaves the server blocked in a send, outside the generator."""

    def __init__(self) -> None:
        self.sent = 0

    async def StreamLiveValues(self, request: Any, context: Any) -> AsyncIterator[Any]:
        big = telemetry_pb2.StreamLiveValuesResponse(
            values=[telemetry_pb2.LatestValue(channel="c" * 1000, value=float(i)) for i in range(100)]
        )
        while True:
            self.sent += 1
            yield big


async def test_an_abandoned_server_stream_is_finalized_without_context_errors(
    migrated_url: str, db: asyncpg.Connection
) -> None:
    viewer = await grant(db, "acme", "viewer")
    loop = asyncio.get_running_loop()
    # What earlier tests on this worker's loop left for the collector is reported before the handler
    # below listens: it is to hear only of this test's streams.
    gc.collect()
    await asyncio.sleep(0)
    problems: list[dict[str, Any]] = []
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: problems.append(ctx))
    pool = await asyncpg.create_pool(migrated_url, min_size=1, max_size=2)
    state = AuthState(pool, auth_config(), migrated_url)
    await state.start()
    cfg = ServerConfig(port=0)
    server = create_server(cfg, [AuthInterceptor(state)])
    flood = _Flood()
    telemetry_pb2_grpc.add_TelemetryServiceServicer_to_server(flood, server)
    hosted = await start_server(server, cfg, ["emma.telemetry.v1.TelemetryService"])
    try:
        for _ in range(3):
            async with authed_channel(hosted.port, viewer.token) as ch:
                live = telemetry_pb2_grpc.TelemetryServiceStub(ch).StreamLiveValues(
                    telemetry_pb2.StreamLiveValuesRequest(site="organizations/acme/sites/flood")
                )
                first = await live.read()
                assert len(first.values) == 100
                await asyncio.sleep(0.3)  # the server fills the flow-control window and blocks
                live.cancel()
                await asyncio.sleep(0.2)
            gc.collect()  # the dropped generators are finalized now, each in a task of its own
            await asyncio.sleep(0.2)
    finally:
        await hosted.drain(0)
        await state.stop()
        await pool.close()
        loop.set_exception_handler(previous_handler)
    assert flood.sent > 3  # the server kept sending past the one message read
    reported = [f"{p.get('message')}: {p.get('exception')!r} {p.get('task')!r}" for p in problems]
    assert not reported, reported
