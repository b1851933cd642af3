"""The Starlette application: route table, limits, tracing and the gRPC channel put together.

Request path of an API call: CORS -> write rate limit -> route match (404/405) -> body (413) ->
binding (400) -> gRPC call with deadline, Authorization, client address and traceparent as metadata
-> JSON, SSE or NDJSON. Every error on the way is an HttpError rendered as an AIP-193 body. Every
answer counts in emma.gateway.requests (and a unary one's time in emma.gateway.duration); GET
/metrics serves them as Prometheus text.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route as StarletteRoute
from starlette.types import Receive, Scope, Send

from core import metrics
from core.tracing import unrecorded_span
from gateway import errors
from gateway.binding import bind_request, read_body
from gateway.config import GatewayConfig, IPNetwork
from gateway.cors import ALLOWED_METHODS, CorsMiddleware
from gateway.docs import render_docs
from gateway.errors import HttpError
from gateway.limits import WRITE_METHODS, WriteLimiter
from gateway.openapi import build_openapi
from gateway.routes import RouteTable, build_route_table
from gateway.transcode import AnswerText, Invoker, StreamResponse, call_unary, dumps, open_stream, wants_sse

log = logging.getLogger("emma.gateway")

JSON = "application/json"
# EMMA's access tokens are JWTs of a few hundred bytes. A longer Authorization header cannot hold one,
# and gRPC's metadata limit (8 KiB for all headers of a call) would refuse it as RESOURCE_EXHAUSTED,
# which a client would read as 429 and retry.
MAX_AUTHORIZATION_BYTES = 4096


def channel_options(config: GatewayConfig) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.keepalive_time_ms", config.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", config.keepalive_timeout_ms),
        # Idle periods between requests must not let a dead connection go unnoticed.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # The target is usually a headless Service (every api pod's address): spread calls over all
        # of them rather than gRPC's default pick_first, which sends everything to one pod.
        ("grpc.lb_policy_name", "round_robin"),
        # Each channel its own TCP connections (gRPC otherwise shares one subchannel, one connection,
        # among channels with the same target and options): see GatewayConfig.connections.
        ("grpc.use_local_subchannel_pool", 1),
    ]


def _trusted(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(peer: str | None, forwarded_for: str | None, trusted: tuple[IPNetwork, ...]) -> str:
    """The client: the peer, or, while that is a trusted proxy, the hop it names in X-Forwarded-For.

    Walking from the right stops at the first address no trusted proxy vouches for; entries left of
    it are whatever the client sent and are never believed. A malformed entry ends the walk at the
    proxy that passed it on, so nothing but an IP address reaches the rate limiter and the audit row.
    """
    if not peer:
        return "unknown"
    current = peer
    hops = [h.strip() for h in (forwarded_for or "").split(",") if h.strip()]
    while hops and _trusted(current, trusted):
        try:
            current = str(ipaddress.ip_address(hops.pop()))
        except ValueError:
            break
    return current


def _raw_path(scope: Scope) -> str:
    """The path as sent, still percent-encoded; some servers put the query string in raw_path too."""
    raw = scope.get("raw_path")
    if isinstance(raw, bytes):
        return raw.split(b"?", 1)[0].decode("latin-1")
    from urllib.parse import quote

    return quote(str(scope["path"]))


def _ascii_header(request: Request, name: str) -> str | None:
    value = request.headers.get(name)
    if value is None:
        return None
    # gRPC metadata values must be printable ASCII; anything else would fail inside the call.
    if not value.isascii() or not value.isprintable():
        raise errors.bad_request(name.title(), "must be printable ASCII")
    return value


class Gateway:
    """The per-process state behind the app: routes, the limiter and the gRPC channel."""

    def __init__(self, config: GatewayConfig, table: RouteTable | None = None) -> None:
        self.config = config
        self.table = table or build_route_table()
        self.limiter = WriteLimiter(config.write_rate_per_s, config.write_burst)
        self._channels: list[grpc.aio.Channel] = []
        self._invoker: Invoker | None = None
        self._answers = AnswerText()
        self._tracer: trace.Tracer | None = None

    def invoker(self) -> Invoker:
        # Made on first use so the channel belongs to the event loop that serves requests.
        if self._invoker is None:
            options = channel_options(self.config)
            self._channels = [
                grpc.aio.insecure_channel(self.config.target, options=options) for _ in range(self.config.connections)
            ]
            self._invoker = Invoker(self._channels)
        return self._invoker

    def tracer(self) -> trace.Tracer:
        # Fetched on first use, after `serve` configured tracing: before that it would be a proxy, which
        # core.tracing.unrecorded_span cannot see through.
        if self._tracer is None:
            self._tracer = trace.get_tracer("emma.gateway")
        return self._tracer

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close(None)
        self._channels = []
        self._invoker = None

    def _client(self, request: Request) -> str:
        peer = request.client.host if request.client else None
        return client_address(peer, request.headers.get("x-forwarded-for"), self.config.trusted_proxies)

    async def handle(self, request: Request) -> Response | StreamResponse:
        started = time.perf_counter()
        # The route's template, never the path: one series per route, not per resource name.
        matched: list[str] = []
        try:
            response = await self._handle(request, matched)
        except HttpError as exc:
            _count(request.method, matched, exc.http_status, started)
            raise
        except Exception:
            _count(request.method, matched, 500, started)
            raise
        _count(request.method, matched, 200, None if isinstance(response, StreamResponse) else started)
        return response

    async def _handle(self, request: Request, matched: list[str]) -> Response | StreamResponse:
        method = request.method
        client = self._client(request)
        if method in WRITE_METHODS:
            wait_s = self.limiter.take(client)
            if wait_s > 0:
                raise errors.rate_limited(wait_s)
        match = self.table.match(method, _raw_path(request.scope))
        route = match.route
        matched.append(route.template.source)
        body = await read_body(request, self.config.max_body_bytes)
        message = bind_request(route, match.path_values, request.query_params.multi_items(), body)

        metadata = [("x-forwarded-for", client)]
        authorization = _ascii_header(request, "authorization")
        if authorization is not None:
            if len(authorization) > MAX_AUTHORIZATION_BYTES:
                raise errors.token_too_long(MAX_AUTHORIZATION_BYTES)
            metadata.append(("authorization", authorization))
        # Continue the caller's trace when it sent traceparent, else start one here; either way the
        # service's span becomes a child of the gateway's.
        # While no span processor would read the span, one that carries only its ids stands in.
        name = f"{method} {route.template.source}"
        parent = propagate.extract(request.headers)
        attributes = {"http.request.method": method, "http.route": route.template.source, "rpc.method": route.grpc_path}
        tracer = self.tracer()
        span = unrecorded_span(tracer, name, parent, SpanKind.SERVER, attributes) or tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        metadata.extend(carrier.items())
        try:
            if not route.server_streaming:
                content = await call_unary(
                    self.invoker(), self._answers, route, message, metadata, self.config.deadline_s
                )
                _end_span(span, None)
                return Response(content, media_type=JSON)
            timeout = self.config.stream_deadline_s or None
            opened = await open_stream(self.invoker(), route, message, metadata, timeout)
        except BaseException as exc:
            _end_span(span, exc)
            raise
        return StreamResponse(
            route,
            opened,
            sse=wants_sse(request.headers.get("accept", "")),
            keepalive_s=self.config.sse_keepalive_s,
            on_close=lambda exc: _end_span(span, exc),
        )


def _count(method: str, matched: list[str], status: int, started: float | None) -> None:
    """One answer in the request counter; `started` None for a stream (its length is no latency)."""
    labels = {"method": method, "route": matched[0] if matched else "unmatched", "status": str(status)}
    metrics.gateway_requests.add(1, labels)
    if started is not None:
        metrics.gateway_duration.record(time.perf_counter() - started, labels)


def _end_span(span: trace.Span, exc: BaseException | None) -> None:
    if isinstance(exc, HttpError):
        span.set_attribute("http.response.status_code", exc.http_status)
        if exc.http_status >= 500:
            span.set_status(Status(StatusCode.ERROR, exc.message))
    elif exc is not None:
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
    span.end()


def _error_response(error: HttpError) -> Response:
    return Response(error.json_bytes(), status_code=error.http_status, media_type=JSON, headers=error.headers)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HttpError)
    return _error_response(exc)


async def _on_starlette_error(request: Request, exc: Exception) -> Response:
    # Starlette's own 404/405 (e.g. POST /openapi.json) in the API's error shape.
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "GET").split(", ")
        return _error_response(errors.method_not_allowed(request.method, request.url.path, allowed))
    if exc.status_code == 404:
        return _error_response(errors.no_route(request.method, request.url.path))
    return _error_response(errors.HttpError(exc.status_code, 2, str(exc.detail)))


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error_response(errors.internal_error())


# Starlette's own routes; every other path is the API's.
_OWN_PATHS = frozenset({"/openapi.json", "/docs", "/healthz", "/metrics"})
_FAST_METHODS = frozenset(ALLOWED_METHODS)


class GatewayApp(Starlette):
    """Starlette, with API calls from outside a browser taken straight to Gateway.handle.

    Starlette's layers (error middleware, CORS, exception middleware, router, request_response)
    were a fifth of the gateway's time per call. A call that carries no Origin header (CORS has nothing
    to do) to an API path with an API method gets the same handling here: an HttpError becomes its
    AIP-193 answer, anything else a logged 500 re-raised for the server, as Starlette does. Browser
    calls, HEAD, OPTIONS, lifespan and the gateway's own pages take Starlette's path.
    """

    gateway: Gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in _FAST_METHODS
            or scope["path"] in _OWN_PATHS
            or any(name == b"origin" for name, _ in scope["headers"])
        ):
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        request = Request(scope, receive, send)
        try:
            response: Response | StreamResponse = await self.gateway.handle(request)
        except HttpError as exc:
            response = _error_response(exc)
        except Exception as exc:
            await _error_response(errors.internal_error())(scope, receive, send)
            log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
            raise
        await response(scope, receive, send)


def create_app(config: GatewayConfig, table: RouteTable | None = None) -> Starlette:
    """The ASGI app; its lifespan closes the gRPC channel (made lazily on the first call)."""
    # Idempotent: in `emma up` and the tests the services' process configured it already.
    metrics.configure_metrics("emma-gateway")
    gateway = Gateway(config, table)
    document = build_openapi(gateway.table)
    openapi_body = dumps(document)
    docs_html = render_docs(document)

    async def openapi(request: Request) -> Response:
        return Response(openapi_body, media_type=JSON)

    async def docs(request: Request) -> Response:
        return HTMLResponse(docs_html)

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"SERVING"}', media_type=JSON)

    async def prometheus(request: Request) -> Response:
        return Response(metrics.prometheus_text(), media_type=metrics.CONTENT_TYPE)

    async def api(request: Request) -> Response | StreamResponse:
        return await gateway.handle(request)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await gateway.close()

    app = GatewayApp(
        routes=[
            StarletteRoute("/openapi.json", openapi, methods=["GET"]),
            StarletteRoute("/docs", docs, methods=["GET"]),
            StarletteRoute("/healthz", healthz, methods=["GET"]),
            StarletteRoute("/metrics", prometheus, methods=["GET"]),
            # Every API path: the gateway's own table decides (404 / 405 in the API's error shape).
            StarletteRoute("/{path:path}", api, methods=[*ALLOWED_METHODS, "HEAD", "OPTIONS"]),
        ],
        middleware=[Middleware(CorsMiddleware, origins=config.cors_origins)],
        exception_handlers={HttpError: _on_http_error, HTTPException: _on_starlette_error, Exception: _on_unexpected},
        lifespan=lifespan,
    )
    app.state.gateway = app.gateway = gateway
    return app
