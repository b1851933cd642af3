"""Traces and metrics leave real `emma serve` and `emma gateway` processes by OTLP/HTTP to a receiver
started here, and both processes answer Prometheus scrapes.

Processes, not in-process servers: the tracer and meter providers are installed once per process from
the OTEL_* variables, exactly as in a deployment, and a test worker may have installed its own before.
"""

from __future__ import annotations

import re
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.deploy.kubelet import free_port
from tests.observability.otlp_receiver import Receiver, attributes
from tests.observability.scrape import parse as _parse
from tests.support.cli_process import EmmaProcess
from tests.support.gateway import AUTH_ENV, USER_EMAIL, USER_PASSWORD, create_user

LIST_SITES = "/emma.registry.v1.RegistryService/ListSites"


@dataclass
class Running:
    receiver: Receiver
    gateway_url: str
    metrics_port: int
    serve: EmmaProcess
    gateway: EmmaProcess


@pytest.fixture(scope="module")
async def running(migrated_url: str) -> AsyncIterator[Running]:
    await create_user(migrated_url, "acme")
    with Receiver() as receiver:
        otel = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            # Export soon rather than every 5 s / 60 s, so the test waits a moment only.
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_METRIC_EXPORT_INTERVAL": "300",
        }
        metrics_port = free_port()
        serve_env = {**AUTH_ENV, **otel, "DATABASE_URL": migrated_url, "EMMA_GRPC_PORT": "0"}
        serve = EmmaProcess("serve", "identity", "registry", env={**serve_env, "EMMA_METRICS_PORT": str(metrics_port)})
        gateway: EmmaProcess | None = None
        try:
            line = serve.wait_for("emma serve:", timeout=60)
            port = re.search(r":(\d+)$", line)
            assert port is not None, line
            # The dashboard layer (gateway/web.py) answers GET /metrics with its index.html until
            # "/metrics" joins its API_PATHS (asked of its owner this session); until then it is off here.
            gateway_env = {**otel, "EMMA_GATEWAY_WEB_DIR": "off"}
            gateway = EmmaProcess("gateway", "--port", "0", "--target", f"127.0.0.1:{port.group(1)}", env=gateway_env)
            url = re.search(r"(http://127\.0\.0\.1:\d+)", gateway.wait_for("emma gateway: http://", timeout=30))
            assert url is not None
            yield Running(receiver, url.group(1), metrics_port, serve, gateway)
        finally:
            # uvicorn re-raises the SIGTERM it handled once its graceful shutdown is over.
            codes = [abs(p.stop(signal.SIGTERM)) for p in (gateway, serve) if p is not None]
        assert set(codes) <= {0, signal.SIGTERM}, (serve.lines, gateway.lines if gateway else None)
        assert codes[-1] == 0, serve.lines


async def _list_sites(url: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        login = await c.post("/v1/auth:login", json={"email": USER_EMAIL, "password": USER_PASSWORD})
        assert login.status_code == 200, login.text
        token = login.json()["accessToken"]
        return await c.get("/v1/organizations/acme/sites", headers={"authorization": f"Bearer {token}"})


async def test_a_rest_request_is_one_trace_through_gateway_service_and_sql(running: Running) -> None:
    sites = await _list_sites(running.gateway_url)
    assert sites.status_code == 200, sites.text

    def trace_of_the_request() -> tuple[Span, Span, list[Span]] | None:
        """the gateway span, the ListSites server span and its SQL spans"""
        spans = list(running.receiver.spans())
        for service, gw in spans:
            if service != "emma-gateway" or attributes(gw.attributes).get("rpc.method") != LIST_SITES:
                continue
            for svc, server in spans:
                if svc == "emma" and server.name == LIST_SITES and server.parent_span_id == gw.span_id:
                    sql = [s for v, s in spans if v == "emma" and s.parent_span_id == server.span_id]
                    sql = [s for s in sql if attributes(s.attributes).get("db.system.name") == "postgresql"]
                    if sql:
                        return gw, server, sql
        return None

    gw, server, sql = running.receiver.wait_for(trace_of_the_request)
    assert gw.kind == Span.SPAN_KIND_SERVER and server.kind == Span.SPAN_KIND_SERVER
    assert {s.trace_id for s in [gw, server, *sql]} == {gw.trace_id}
    assert all(s.kind == Span.SPAN_KIND_CLIENT for s in sql)
    texts = [str(attributes(s.attributes)["db.query.text"]) for s in sql]
    assert any("sites" in t for t in texts), texts
    # Parameters are bound, never recorded: only the statement text is an attribute.
    assert all(set(attributes(s.attributes)) == {"db.system.name", "db.operation.name", "db.query.text"} for s in sql)
    assert "application/x-protobuf" in running.receiver.content_types


def _points(metric: Metric) -> list[tuple[dict[str, object], float]]:
    kind = metric.WhichOneof("data")
    if kind == "histogram":
        return [(attributes(p.attributes), float(p.count)) for p in metric.histogram.data_points]
    if kind == "sum":
        return [(attributes(p.attributes), p.as_int or p.as_double) for p in metric.sum.data_points]
    if kind == "gauge":
        return [(attributes(p.attributes), p.as_int or p.as_double) for p in metric.gauge.data_points]
    return []


async def test_metrics_are_pushed_by_otlp(running: Running) -> None:
    assert (await _list_sites(running.gateway_url)).status_code == 200

    def exported() -> dict[tuple[str, str], list[tuple[dict[str, object], float]]] | None:
        """emma.rpc.duration for ListSites, emma.gateway.requests and emma.db.pool.connections"""
        seen: dict[tuple[str, str], list[tuple[dict[str, object], float]]] = {}
        for service, metric in running.receiver.metric_points():
            seen[(service, metric.name)] = _points(metric)  # later exports are cumulative: keep the last
        wanted = [
            ("emma", "emma.rpc.duration"),
            ("emma-gateway", "emma.gateway.requests"),
            ("emma", "emma.db.pool.connections"),
        ]
        rpc = seen.get(("emma", "emma.rpc.duration"), [])
        # Each process exports on its own timer: the gateway's export that counted the login may come
        # before its request to ListSites was counted, so the wait is for both processes' points of it.
        requests = seen.get(("emma-gateway", "emma.gateway.requests"), [])
        listed = any(a.get("method") == "GET" and a.get("status") == "200" for a, _ in requests)
        if all(w in seen for w in wanted) and any(a.get("method") == LIST_SITES for a, _ in rpc) and listed:
            return seen
        return None

    seen = running.receiver.wait_for(exported)
    rpc = dict((str(a["method"]), (a["code"], n)) for a, n in seen[("emma", "emma.rpc.duration")] if a["code"] == "OK")
    assert rpc[LIST_SITES][1] >= 1
    requests = seen[("emma-gateway", "emma.gateway.requests")]
    assert any(a["status"] == "200" and a["method"] == "GET" and n >= 1 for a, n in requests), requests
    # The route's template, not the path: one series per route however many resources there are.
    assert {a["route"] for a, _ in requests} == {"/v1/auth:login", "/v1/{parent=organizations/*}/sites"}, requests
    pool = {a["state"]: n for a, n in seen[("emma", "emma.db.pool.connections")] if a["pool"] == "main"}
    assert set(pool) == {"in_use", "idle", "max"} and pool["max"] >= 1


async def test_both_processes_answer_prometheus_scrapes(running: Running) -> None:
    assert (await _list_sites(running.gateway_url)).status_code == 200
    async with httpx.AsyncClient(timeout=10) as c:
        service = await c.get(f"http://127.0.0.1:{running.metrics_port}/metrics")
        other = await c.get(f"http://127.0.0.1:{running.metrics_port}/")
        gateway = await c.get(f"{running.gateway_url}/metrics")
    assert other.status_code == 404
    for answer in (service, gateway):
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"

    served = _parse(service.text)
    counts = {s[0]["method"]: s[1] for s in served["emma_rpc_duration_seconds_count"] if s[0]["code"] == "OK"}
    assert counts[LIST_SITES] >= 1
    buckets = [(s[0]["le"], s[1]) for s in served["emma_rpc_duration_seconds_bucket"] if s[0]["method"] == LIST_SITES]
    assert buckets[-1] == ("+Inf", counts[LIST_SITES]), "cumulative buckets end at the count"
    assert [n for _, n in buckets] == sorted(n for _, n in buckets)
    pool = {s[0]["state"]: s[1] for s in served["emma_db_pool_connections"] if s[0]["pool"] == "main"}
    assert pool["max"] >= pool["in_use"] + pool["idle"] >= 1

    seen = _parse(gateway.text)
    ok = [s for s in seen["emma_gateway_requests_total"] if s[0]["status"] == "200" and s[0]["method"] == "GET"]
    assert ok and all(n >= 1 for _, n in ok)
    assert "emma_gateway_duration_seconds_count" in seen
