"""Errors and the cross-cutting duties: AIP-193 bodies, CORS, limits, metadata and trace propagation."""

from __future__ import annotations

import socket

import httpx
from opentelemetry import trace

from gateway.app import create_app
from gateway.config import GatewayConfig
from tests.support.gateway import SITE, Client, Stack, error_of, reason_of, stand_ins


async def test_no_route_and_wrong_method(client: Client) -> None:
    async with client() as c:
        missing = await c.get("/v1/nothing/here")
        verb = await c.get(f"/v1/{SITE}:noSuchVerb")
        wrong = await c.delete(f"/v1/{SITE}/latestValues")
        head = await c.head("/v1/organizations")
        static = await c.post("/openapi.json")
    error = error_of(missing)
    assert missing.status_code == 404 and error["status"] == "NOT_FOUND"
    assert reason_of(error) == "ROUTE_NOT_FOUND"
    assert error_of(verb)["code"] == 404
    error = error_of(wrong)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET"
    assert reason_of(error) == "HTTP_METHOD_NOT_ALLOWED"
    assert head.status_code == 405 and "GET" in head.headers["allow"]
    assert static.status_code == 404 and error_of(static)["status"] == "NOT_FOUND"  # not an API method either


async def test_service_errors_keep_their_status_and_details(client: Client) -> None:
    async with client() as c:
        r = await c.get("/v1/organizations/acme/sites/nowhere/latestValues")
        bad = await c.get(f"/v1/{SITE}:queryHistory")  # no channels: the service says which field
    error = error_of(r)
    assert (r.status_code, error["status"], reason_of(error)) == (404, "NOT_FOUND", "RESOURCE_NOT_FOUND")
    error = error_of(bad)
    assert (bad.status_code, reason_of(error)) == (400, "FIELD_INVALID")
    (violations,) = [d for d in error["details"] if d["@type"] == "type.googleapis.com/google.rpc.BadRequest"]
    assert violations["fieldViolations"][0]["field"] == "channels"


async def test_unimplemented_methods_answer_501_with_error_info() -> None:
    async with stand_ins() as port:
        app = create_app(GatewayConfig(target=f"127.0.0.1:{port}"))
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
                unary = await c.get("/v1/organizations/acme/sites/s1")
                stream = await c.get(f"/v1/{SITE}:streamLiveValues", headers={"accept": "text/event-stream"})
        finally:
            await app.state.gateway.close()
    for r, method in ((unary, "RegistryService/GetSite"), (stream, "TelemetryService/StreamLiveValues")):
        error = error_of(r)
        assert (r.status_code, error["status"]) == (501, "UNIMPLEMENTED")
        (info,) = [d for d in error["details"] if d["@type"].endswith("ErrorInfo")]
        assert info["reason"] == "METHOD_NOT_IMPLEMENTED"
        assert info["metadata"]["method"].endswith(method)


async def test_unreachable_service_is_503() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(GatewayConfig(target=f"127.0.0.1:{port}", deadline_s=5))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test") as c:
            r = await c.get(f"/v1/{SITE}/latestValues")
    finally:
        await app.state.gateway.close()
    error = error_of(r)
    assert (r.status_code, error["status"]) == (503, "UNAVAILABLE")
    assert "127.0.0.1" not in error["message"]  # transport internals stay in the gateway


async def test_cors_allows_configured_origins_only(client: Client) -> None:
    allowed, denied = "https://app.emma.example", "https://evil.example"
    preflight = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
    }
    async with client(cors_origins=(allowed,)) as c:
        ok = await c.options("/v1/auth:login", headers={"origin": allowed, **preflight})
        refused = await c.options("/v1/auth:login", headers={"origin": denied, **preflight})
        odd_header = await c.options(
            "/v1/auth:login",
            headers={
                "origin": allowed,
                "access-control-request-method": "POST",
                "access-control-request-headers": "x-evil",
            },
        )
        read_allowed = await c.get(f"/v1/{SITE}/latestValues", headers={"origin": allowed})
        read_denied = await c.get(f"/v1/{SITE}/latestValues", headers={"origin": denied})
        write_denied = await c.post("/v1/auth:logout", json={}, headers={"origin": denied})
        same_origin = await c.post("/v1/nothing", json={}, headers={"origin": "http://gateway.test"})
    assert ok.status_code == 204
    assert ok.headers["access-control-allow-origin"] == allowed
    assert "POST" in ok.headers["access-control-allow-methods"]
    assert "authorization" in ok.headers["access-control-allow-headers"]
    for r, field in ((refused, "Origin"), (odd_header, "Access-Control-Request-Headers"), (write_denied, "Origin")):
        error = error_of(r)
        assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
        assert error["details"][1]["fieldViolations"][0]["field"] == field
        assert reason_of(error) == ("ORIGIN_NOT_ALLOWED" if field == "Origin" else "FIELD_INVALID")
    assert read_allowed.status_code == 200
    assert read_allowed.headers["access-control-allow-origin"] == allowed
    assert "retry-after" in read_allowed.headers["access-control-expose-headers"]
    # A foreign page may send a read, but without CORS headers its browser withholds the answer.
    assert read_denied.status_code == 200 and "access-control-allow-origin" not in read_denied.headers
    # The gateway's own pages (docs, a dashboard it serves) are always allowed.
    assert same_origin.status_code == 404
    assert same_origin.headers["access-control-allow-origin"] == "http://gateway.test"


async def test_body_size_limit(client: Client) -> None:
    big = b'{"email": "' + b"a" * 2000 + b'", "password": "x"}'

    async def chunked() -> object:
        for i in range(0, len(big), 100):
            yield big[i : i + 100]

    async with client(max_body_bytes=1000) as c:
        declared = await c.post("/v1/auth:login", content=big, headers={"content-type": "application/json"})
        streamed = await c.post("/v1/auth:login", content=chunked(), headers={"content-type": "application/json"})
    for r in (declared, streamed):
        error = error_of(r)
        assert (r.status_code, error["status"], reason_of(error)) == (413, "INVALID_ARGUMENT", "REQUEST_TOO_LARGE")
    assert "content-length" not in streamed.request.headers  # the second one really was chunked


async def test_writes_are_rate_limited_per_client(client: Client) -> None:
    async with client(write_rate_per_s=0.5, write_burst=3) as c:
        # Counted before routing, so even writes to nowhere use up the bucket.
        writes = [await c.post("/v1/nothing", json={}) for _ in range(4)]
        read = await c.get(f"/v1/{SITE}/latestValues")
    assert [w.status_code for w in writes] == [404, 404, 404, 429]
    error = error_of(writes[-1])
    assert (error["status"], reason_of(error)) == ("RESOURCE_EXHAUSTED", "RATE_LIMITED")
    assert writes[-1].headers["retry-after"] == "2"  # one token back at 0.5/s
    assert read.status_code == 200  # reads are not limited


async def test_metadata_reaches_the_service(stack: Stack, client: Client) -> None:
    async with client(deadline_s=7.0) as c:
        r = await c.get(f"/v1/{SITE}/latestValues")
    assert r.status_code == 200, r.text
    seen = stack.telemetry.last_metadata
    assert seen["authorization"] == f"Bearer {stack.token}"
    assert seen["x-forwarded-for"] == "127.0.0.1"  # the HTTP client's address, for per-address limits
    # The service sees the gateway's 7 s deadline (gRPC rounds the deadline it sends on the wire, so a
    # few milliseconds above 7 are the same deadline).
    assert stack.telemetry.last_time_remaining is not None and 5 < stack.telemetry.last_time_remaining <= 7.1


async def test_traceparent_is_propagated_to_the_service(stack: Stack, client: Client) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    stack.spans.clear()
    async with client() as c:
        continued = await c.get(
            f"/v1/{SITE}/latestValues", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
        )
        started = await c.get(f"/v1/{SITE}/channels")
    assert continued.status_code == 200 and started.status_code == 200
    spans = stack.spans.get_finished_spans()
    service = {s.name: s for s in spans if s.kind == trace.SpanKind.SERVER and s.name.startswith("/emma.")}
    gateway = {s.name: s for s in spans if s.name.startswith("GET /v1/")}
    # The caller's trace id reached the service, through the gateway's span.
    latest = service["/emma.telemetry.v1.TelemetryService/ListLatestValues"]
    assert format(latest.context.trace_id, "032x") == trace_id
    latest_gateway = gateway["GET /v1/{parent=organizations/*/sites/*}/latestValues"]
    assert latest.parent is not None and latest.parent.span_id == latest_gateway.context.span_id
    # Without a traceparent the gateway starts the trace, and the service continues it.
    channels = service["/emma.telemetry.v1.TelemetryService/ListChannels"]
    channels_gateway = gateway["GET /v1/{parent=organizations/*/sites/*}/channels"]
    assert channels.context.trace_id == channels_gateway.context.trace_id
    assert channels_gateway.parent is None


async def test_docs_and_health(client: Client) -> None:
    async with client() as c:
        docs = await c.get("/docs")
        health = await c.get("/healthz")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert "/v1/organizations/{organization}/sites/{site}:streamLiveValues" in docs.text
    assert "<script" not in docs.text and "https://" not in docs.text  # nothing fetched from elsewhere
    assert health.json() == {"status": "SERVING"}
