"""Gateway fixtures: the real cloud services on loopback, telemetry pushed through a real EdgeLink
stream, and the gateway app in front of them (in-process over ASGI, or under uvicorn on port 0).

Every service of the catalog is hosted the way `emma serve all` hosts it (services.cloud), and the
tests call as a user logged in through the gateway itself. The TelemetryService is the real servicer
with observation points added (the metadata and deadline a call arrived with, and whether a live
stream saw its cancellation), because those are facts only the server side can tell. A separate
server of UNIMPLEMENTED stand-ins checks the mapping of a not-yet-served method.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
from emma.telemetry.v1 import telemetry_pb2
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from core.tracing import configure_tracing
from gateway.app import create_app
from gateway.config import GatewayConfig
from gateway.server import running_gateway
from services import catalog
from services.cloud import hosted_services
from services.identity import accounts
from services.identity.passwords import Passwords
from services.platform.config import ServerConfig
from services.platform.runtime import Runtime
from services.platform.server import create_server, start_server
from services.telemetry.servicer import TelemetryServicer
from tests.cloud.conftest import new_edge, platform_config
from tests.cloud.edge_client import EdgeStream, batch, hello

SITE = "organizations/acme/sites/gw"
EDGE = f"{SITE}/edges/gw"


class ObservedTelemetry(TelemetryServicer):
    """The real TelemetryServicer, recording what only the server can see."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self.last_metadata: dict[str, str] = {}
        self.last_time_remaining: float | None = None
        self.live_streams_cancelled = 0
        self.live_stream_cancelled = asyncio.Event()

    async def ListLatestValues(
        self, request: telemetry_pb2.ListLatestValuesRequest, context: Any
    ) -> telemetry_pb2.ListLatestValuesResponse:
        self.last_metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        self.last_time_remaining = context.time_remaining()
        return await super().ListLatestValues(request, context)

    async def StreamLiveValues(
        self, request: telemetry_pb2.StreamLiveValuesRequest, context: Any
    ) -> AsyncIterator[telemetry_pb2.StreamLiveValuesResponse]:
        try:
            async for item in super().StreamLiveValues(request, context):
                yield item
        except asyncio.CancelledError:
            self.live_streams_cancelled += 1
            self.live_stream_cancelled.set()
            raise


@dataclass
class Stack:
    port: int
    dsn: str
    telemetry: ObservedTelemetry
    edge_key: str
    spans: InMemorySpanExporter
    token: str  # the access token of a logged-in admin of organizations/acme
    # Wall-clock seconds of the samples pushed at start, per channel address.
    pushed: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    def config(self, **overrides: Any) -> GatewayConfig:
        return dataclasses.replace(GatewayConfig(target=self.target, port=0), **overrides)


# Test-sized credentials for the identity service: fixed keys so
# nothing is written to a state folder, cheap argon2 so logins take milliseconds, and the gateway's
# x-forwarded-for trusted as in a deployment behind it.
AUTH_ENV = {
    "EMMA_JWT_SIGNING_KEY": "gateway-tests-signing-key-0123456789abcdef",
    "EMMA_PSEUDONYM_KEY": "gateway-tests-pseudonym-key-0123456789abcdef",
    "EMMA_ARGON2_TIME_COST": "1",
    "EMMA_ARGON2_MEMORY_KIB": "8",
    "EMMA_ARGON2_PARALLELISM": "1",
    "EMMA_TRUST_FORWARDED_FOR": "1",
}
USER_EMAIL = "gateway-tests@example.com"
USER_PASSWORD = "correct horse battery staple 42"


async def create_user(dsn: str, org: str) -> None:
    """An admin of `org` who can log in with USER_EMAIL / USER_PASSWORD."""
    conn = await asyncpg.connect(dsn)
    try:
        await accounts.create_org(conn, org, org)
        await accounts.ensure_user(
            conn,
            Passwords(1, 8, 1),
            email=USER_EMAIL,
            password=USER_PASSWORD,
            org_id=org,
            role=accounts.ROLES["admin"],
        )
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def hosted(dsn: str) -> AsyncIterator[tuple[int, ObservedTelemetry]]:
    """Every service of the catalog through services.cloud.hosted_services (with its interceptors),
    the telemetry servicer swapped for its observed twin."""
    observed: list[ObservedTelemetry] = []

    def telemetry_factory(runtime: Runtime) -> ObservedTelemetry:
        observed.append(ObservedTelemetry(runtime))
        return observed[-1]

    spec = catalog.SERVICES["telemetry"]
    with pytest.MonkeyPatch.context() as mp:
        for name, value in AUTH_ENV.items():
            mp.setenv(name, value)
        mp.setitem(catalog.SERVICES, "telemetry", dataclasses.replace(spec, factory=telemetry_factory))
        config = platform_config(dsn, live_poll_interval_s=0.1)
        async with hosted_services(list(catalog.SERVICES), config) as (running, _):
            yield running.port, observed[0]


@contextlib.asynccontextmanager
async def stand_ins() -> AsyncIterator[int]:
    """Every contract service as its UNIMPLEMENTED stand-in (what a release serves before a service lands)."""
    server = create_server(ServerConfig(port=0))
    specs = list(catalog.SERVICES.values())
    for spec in specs:
        spec.add_to_server(catalog.unimplemented_servicer(spec), server)
    running = await start_server(server, ServerConfig(port=0), [s.full_name for s in specs])
    try:
        yield running.port
    finally:
        await running.drain(0)


async def push_telemetry(port: int, key: str, points: list[tuple[int, float, float]], seq: int) -> None:
    """Send one batch of (channel index, unix seconds, value) through a real EdgeLink stream."""
    stream = EdgeStream(port)
    try:
        await stream.send(hello(EDGE, key))
        first = await stream.recv()
        assert first.WhichOneof("message") == "welcome", first
        base = min(p[1] for p in points)
        await stream.send(batch(seq, base, [(c, round((t - base) * 1000), v) for c, t, v in points]))
        ack = await stream.recv_ack()
        assert ack.batch_seq == seq
    finally:
        await stream.close()


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


async def login(config: GatewayConfig) -> str:
    """Log in through the gateway itself (POST /v1/auth:login) and return the access token."""
    app = create_app(config)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test") as c:
            r = await c.post("/v1/auth:login", json={"email": USER_EMAIL, "password": USER_PASSWORD})
    finally:
        await app.state.gateway.close()
    assert r.status_code == 200, r.text
    return str(r.json()["accessToken"])


Client = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


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


def http_client(port: int, stack: Stack, **kwargs: Any) -> httpx.AsyncClient:
    """A real HTTP client of a gateway under uvicorn, as the test user."""
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=stack.headers, **kwargs)


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The AIP-193 error of a response, checked for shape: code, status, message, details with ErrorInfo."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "status", "message", "details"}, error
    assert error["code"] == response.status_code
    assert isinstance(error["message"], str) and error["message"]
    infos = [d for d in error["details"] if d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"]
    assert len(infos) == 1, error["details"]
    assert infos[0]["domain"] == "emma.energy"
    return dict(error)


def reason_of(error: dict[str, Any]) -> str:
    return str(next(d for d in error["details"] if d["@type"].endswith("google.rpc.ErrorInfo"))["reason"])
