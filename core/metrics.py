"""OpenTelemetry metrics: the process's meter provider, EMMA's instruments, and their Prometheus text.

`configure_metrics` installs one MeterProvider per process. It always has an in-process pull reader,
whose current values `prometheus_text()` renders for a scrape (`GET /metrics` on the gateway, the
EMMA_METRICS_PORT listener of `emma serve`); it pushes over OTLP only when the standard OTEL_*
variables ask for it (OTEL_METRICS_EXPORTER=otlp, or an OTEL_EXPORTER_OTLP_*ENDPOINT), every
OTEL_METRIC_EXPORT_INTERVAL ms. With none set nothing leaves the process.

The instruments below are module-level objects from the global meter. Until a provider is installed
they are OpenTelemetry's proxies, which record nothing and cost almost nothing; `configure_metrics`
makes every one of them live. Names are OpenTelemetry-style (dots); the Prometheus text replaces dots
with underscores and adds the unit (`_seconds`) and, for counters, `_total`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    Gauge,
    Histogram,
    InMemoryMetricReader,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
    Sum,
)
from opentelemetry.sdk.resources import Resource

from core.tracing import otlp_protocol

# Seconds, from a fast SQL round trip to a slow optimizer run.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_meter = metrics.get_meter("emma")

# --- recorded by the platform (services/platform, gateway) ---------------------------------------
rpc_duration = _meter.create_histogram(
    "emma.rpc.duration",
    unit="s",
    description="Time a unary RPC took in the server, by method and gRPC status code",
    explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
)
gateway_requests = _meter.create_counter(
    "emma.gateway.requests", description="REST requests answered by the gateway, by method, route and HTTP status"
)
gateway_duration = _meter.create_histogram(
    "emma.gateway.duration",
    unit="s",
    description="Time the gateway took to answer a unary REST request, by method, route and HTTP status",
    explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
)

# --- for the domains to record: each through a record_*/watch_* function below, which says where ---
edges_connected = _meter.create_up_down_counter(
    "emma.edge.connected",
    description="Edge streams this replica holds: +1 when a Hello is accepted, -1 when the stream ends, however",
)
ingest_points = _meter.create_counter(
    "emma.ingest.points", description="Telemetry points stored, resent ones not counted (rate() is points/s)"
)
ingest_batches = _meter.create_counter(
    "emma.ingest.batches", description="Telemetry batches acknowledged, by result (stored, duplicate, rejected)"
)
ingest_ack_duration = _meter.create_histogram(
    "emma.ingest.ack.duration",
    unit="s",
    description="From a telemetry batch's arrival on its stream to its acknowledgement being handed to gRPC",
    explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
)
command_transitions = _meter.create_counter(
    "emma.command.transitions",
    description="Commands entering a state after the change committed, by state (QUEUED, DELIVERED, RECEIVED, "
    "EXECUTED, REJECTED_BY_EDGE, FAILED, CANCELLED)",
)
alarms_raised = _meter.create_counter("emma.alarms.raised", description="Alarms raised, by severity")
optimizer_solve_duration = _meter.create_histogram(
    "emma.optimizer.solve.duration",
    unit="s",
    description="Solver time of one optimization run, by scope (site, community)",
    explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
)

# Attribute sets built once: the ingest path records per batch group and must not build dicts per call.
_STORED = {"result": "stored"}
_DUPLICATE = {"result": "duplicate"}
_REJECTED = {"result": "rejected"}
_TRANSITION_ATTRIBUTES: dict[str, dict[str, str]] = {}


def record_edge_connected(delta: int) -> None:
    """+1 when EdgeLink accepts a Hello, -1 when that stream's end is recorded (services/edgelink/session.py)."""
    edges_connected.add(delta)


def record_ingested(stored_batches: int, stored_points: int, duplicate_batches: int) -> None:
    """One committed ingest transaction (services/edgelink/writer.py): its new batches and points, and the
    resent batches the ledger recognised. One call per transaction, not per batch or point."""
    if stored_batches:
        ingest_batches.add(stored_batches, _STORED)
        ingest_points.add(stored_points)
    if duplicate_batches:
        ingest_batches.add(duplicate_batches, _DUPLICATE)


def record_rejected_batch() -> None:
    """A telemetry batch answered REJECTED (invalid, or the writer could not store it)."""
    ingest_batches.add(1, _REJECTED)


def record_ack(seconds: float) -> None:
    """A telemetry ack handed to gRPC, `seconds` after its batch arrived (any result)."""
    ingest_ack_duration.record(seconds)


def record_command_transition(state: str, count: int = 1) -> None:
    """`count` commands entered `state` (a CommandState name without its prefix), after the commit
    (services/command: creation, delivery, acks, cancel, the timers)."""
    attributes = _TRANSITION_ATTRIBUTES.get(state)
    if attributes is None:
        attributes = _TRANSITION_ATTRIBUTES.setdefault(state, {"state": state})
    command_transitions.add(count, attributes)


def record_alarm_raised(severity: str) -> None:
    """One alarm raised (a rule's condition held long enough), by its severity name (e.g. WARNING)."""
    alarms_raised.add(1, {"severity": severity})


def record_solve(scope: str, seconds: float) -> None:
    """One optimizer run's solver time (the solve call only, not building the model), by scope."""
    optimizer_solve_duration.record(seconds, {"scope": scope})


# --- read at collection: queue depths and market data age ----------------------------------------
# Observed, not counted on every put and get: a scrape every 15 s reads a few qsize() calls, where an
# up-down counter would cost two adds per telemetry batch on the ingest path.

_queues: dict[int, tuple[str, Callable[[], int]]] = {}
_queue_keys = itertools.count()


def watch_queue(queue: str, depth: Callable[[], int]) -> Callable[[], None]:
    """Report `depth()` as emma.queue.depth{queue=queue} (summed over every watcher of that name, e.g.
    two servers in one process); returns the function that stops reporting it."""
    key = next(_queue_keys)
    _queues[key] = (queue, depth)

    def unwatch() -> None:
        _queues.pop(key, None)

    return unwatch


def _queue_observations(options: CallbackOptions) -> Iterable[Observation]:
    totals: dict[str, int] = {}
    for name, depth in list(_queues.values()):
        totals[name] = totals.get(name, 0) + depth()
    for name, total in totals.items():
        yield Observation(total, {"queue": name})


queue_depth = _meter.create_observable_gauge(
    "emma.queue.depth",
    callbacks=[_queue_observations],
    description="Items waiting in an in-process queue at collection, by queue",
)

# (source, document) -> when this process last got a current document for it (Unix seconds).
_market_fresh: dict[tuple[str, str], float] = {}


def record_market_data(source: str, document: str, at_unix_s: float) -> None:
    """A fetch brought `document` from `source` up to date at `at_unix_s` (stored, revised, unchanged,
    or a 304 confirming the stored one): services/market/scheduler.py. Earlier times never win."""
    key = (source, document)
    if at_unix_s > _market_fresh.get(key, float("-inf")):
        _market_fresh[key] = at_unix_s


def _market_observations(options: CallbackOptions) -> Iterable[Observation]:
    now = time.time()
    for (source, document), at in list(_market_fresh.items()):
        yield Observation(max(0.0, now - at), {"source": source, "document": document})


market_data_age = _meter.create_observable_gauge(
    "emma.market.data.age",
    callbacks=[_market_observations],
    unit="s",
    description="Seconds since a fetch last brought this source's document type up to date, at collection",
)


class _Pool(Protocol):
    def get_size(self) -> int: ...
    def get_idle_size(self) -> int: ...
    def get_max_size(self) -> int: ...
    def is_closing(self) -> bool: ...


# Pools register themselves (services/platform/db.py). asyncpg's Pool cannot be weakly referenced, so
# closed pools are dropped whenever the list is read or grows.
_pools: list[tuple[_Pool, str]] = []


def _open_pools() -> list[tuple[_Pool, str]]:
    _pools[:] = [(pool, name) for pool, name in _pools if not pool.is_closing()]
    return list(_pools)


def watch_pool(pool: _Pool, name: str) -> None:
    """Report `pool`'s connections as emma.db.pool.connections{pool=name, state=in_use|idle|max}."""
    _open_pools()
    _pools.append((pool, name))


def _pool_observations(options: CallbackOptions) -> Iterable[Observation]:
    for pool, name in _open_pools():
        size, idle = pool.get_size(), pool.get_idle_size()
        yield Observation(size - idle, {"pool": name, "state": "in_use"})
        yield Observation(idle, {"pool": name, "state": "idle"})
        yield Observation(pool.get_max_size(), {"pool": name, "state": "max"})


db_pool_connections = _meter.create_observable_gauge(
    "emma.db.pool.connections",
    callbacks=[_pool_observations],
    description="Database pool connections by pool and state (in_use, idle, and the pool's max)",
)


_provider: MeterProvider | None = None
_pull: InMemoryMetricReader | None = None


def _exporter_from_env(env: Mapping[str, str]) -> MetricExporter | None:
    choice = env.get("OTEL_METRICS_EXPORTER", "").strip().lower()
    endpoint = env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if choice == "none":
        return None
    if choice == "console":
        return ConsoleMetricExporter()
    if choice == "otlp" or (not choice and endpoint):
        # Imported lazily: only a process that exports needs the exporter's transport.
        if otlp_protocol(env, "METRICS") == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpExporter

            return HttpExporter()
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcExporter

        return GrpcExporter()
    return None


def configure_metrics(service_name: str, env: Mapping[str, str] = os.environ) -> MeterProvider:
    """Install the global meter provider once per process and return it."""
    global _provider, _pull
    if _provider is not None:
        return _provider
    _pull = InMemoryMetricReader()
    readers: list[MetricReader] = [_pull]
    exporter = _exporter_from_env(env)
    if exporter is not None:
        readers.append(PeriodicExportingMetricReader(exporter))
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", service_name)})
    _provider = MeterProvider(metric_readers=readers, resource=resource)
    metrics.set_meter_provider(_provider)
    return _provider


# --- Prometheus text exposition (format 0.0.4) --------------------------------------------------

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_UNIT_SUFFIX = {"s": "_seconds", "By": "_bytes"}


def _name(name: str, unit: str, counter: bool) -> str:
    out = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    out += _UNIT_SUFFIX.get(unit, "")
    return out + "_total" if counter else out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(attributes: Mapping[str, Any] | None, extra: Sequence[tuple[str, str]] = ()) -> str:
    pairs = [(_name(k, "", False), str(v)) for k, v in (attributes or {}).items()] + list(extra)
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


def prometheus_text() -> bytes:
    """The current value of every instrument with data, as a Prometheus scrape answer.

    Cumulative values since the process started, as Prometheus expects; an instrument with no
    recording yet is left out. Empty before `configure_metrics`.
    """
    if _pull is None:
        return b""
    data = _pull.get_metrics_data()
    lines: list[str] = []
    for resource_metrics in data.resource_metrics if data else ():
        for scope in resource_metrics.scope_metrics:
            for metric in scope.metrics:
                point_data = metric.data
                if isinstance(point_data, Histogram):
                    name = _name(metric.name, metric.unit or "", False)
                    lines += [f"# HELP {name} {_escape(metric.description or '')}", f"# TYPE {name} histogram"]
                    for h in point_data.data_points:
                        running = 0
                        for bound, count in zip([*h.explicit_bounds, math.inf], h.bucket_counts, strict=True):
                            running += count
                            le = _labels(h.attributes, [("le", _number(float(bound)))])
                            lines.append(f"{name}_bucket{le} {running}")
                        lines.append(f"{name}_sum{_labels(h.attributes)} {_number(h.sum)}")
                        lines.append(f"{name}_count{_labels(h.attributes)} {h.count}")
                elif isinstance(point_data, Sum | Gauge):
                    counter = isinstance(point_data, Sum) and point_data.is_monotonic
                    name = _name(metric.name, metric.unit or "", counter)
                    kind = "counter" if counter else "gauge"
                    lines += [f"# HELP {name} {_escape(metric.description or '')}", f"# TYPE {name} {kind}"]
                    for p in point_data.data_points:
                        lines.append(f"{name}{_labels(p.attributes)} {_number(p.value)}")
    return ("\n".join(lines) + "\n").encode() if lines else b""


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        async with asyncio.timeout(10):
            request_line = await reader.readline()
        while True:  # headers: nothing in them changes the answer
            async with asyncio.timeout(10):
                if await reader.readline() in (b"\r\n", b"\n", b""):
                    break
        parts = request_line.split()
        if len(parts) >= 2 and parts[0] == b"GET" and parts[1].split(b"?")[0] == b"/metrics":
            status, body, ctype = "200 OK", prometheus_text(), CONTENT_TYPE
        else:
            status, body, ctype = "404 Not Found", b"only GET /metrics is served here\n", "text/plain"
        head = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()
    except (TimeoutError, ConnectionError):
        pass  # a scraper that went away or never sent a request gets nothing
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def start_metrics_server(host: str, port: int) -> asyncio.Server:
    """A minimal HTTP listener answering `GET /metrics` (one request per connection, as scrapers do)."""
    return await asyncio.start_server(_answer, host, port)
