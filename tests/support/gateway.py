"""The gateway tests' helpers: the real cloud services on loopback (with an observed TelemetryService),
telemetry pushed through a real EdgeLink stream, a test user logged in through the gateway, and the
checks of an AIP-193 error."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
from emma.telemetry.v1 import telemetry_pb2
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.app import create_app
from gateway.config import GatewayConfig
from services import catalog
from services.cloud import hosted_services
from services.identity import accounts
from services.identity.passwords import Passwords
from services.platform.config import ServerConfig
from services.platform.runtime import Runtime
from services.platform.server import create_server, start_server
from services.telemetry.servicer import TelemetryServicer
from tests.support.cloud import platform_config
from tests.support.edge_client import EdgeStream, batch, hello

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
