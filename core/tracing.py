"""OpenTelemetry set-up: a tracer provider whose exporter follows the standard OTEL_* variables.

With none of them set nothing is exported (request spans are still created, so trace ids reach the
logs and the audit trail; spans that only detail a request, one per SQL statement, are not: see
`spans_exported`). OTEL_TRACES_EXPORTER=otlp (or an OTEL_EXPORTER_OTLP_*ENDPOINT) exports over OTLP,
by gRPC unless OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL says http/protobuf; OTEL_TRACES_EXPORTER=console
prints spans, which helps when debugging locally.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, Tracer, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.util.types import Attributes

from core.errors import ConfigError


class _Provider(TracerProvider):
    """The SDK's provider, remembering whether a span processor was ever added to it.

    Until one is, a span it records is seen by nobody: no exporter, no test's in-memory processor.
    `unrecorded_span` then stands in for the recorded span (see there)."""

    processors_added = False

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        self.processors_added = True
        super().add_span_processor(span_processor)


_configured: _Provider | None = None
# The SDK's own metrics of spans (OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED) count every span started, so a
# span may not be left out then.
_sdk_counts_spans = False
# Whether the configured provider exports spans (an exporter from the OTEL_* variables was added).
_exported = False
# The services' tracer, fetched once: trace.get_tracer builds a new Tracer on every call (~3 % of a
# services process answering small RPCs).
_tracer: trace.Tracer | None = None

OTLP_PROTOCOLS = ("grpc", "http/protobuf")


def otlp_protocol(env: Mapping[str, str], signal: str) -> str:
    """OTEL_EXPORTER_OTLP_<signal>_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL, else grpc.

    gRPC stays the default (it was the only transport before); http/json is not offered by the
    Python exporters, so it is refused rather than silently sent as something else.
    """
    name = f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"
    value = (env.get(name) or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc").strip().lower()
    if value not in OTLP_PROTOCOLS:
        raise ConfigError(f"{name} (or OTEL_EXPORTER_OTLP_PROTOCOL)={value!r}: use one of {', '.join(OTLP_PROTOCOLS)}")
    return value


def traces_exported(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the standard OTEL_* variables make this process export traces (OTLP or console):
    OTEL_TRACES_EXPORTER=none never does, otlp/console always, an OTLP endpoint alone does."""
    choice = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if choice == "none":
        return False
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return choice in ("otlp", "console") or bool(endpoint)


def _exporter_from_env(env: Mapping[str, str]) -> SpanExporter | None:
    if not traces_exported(env):
        return None
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console":
        return ConsoleSpanExporter()
    # OTLP, named or implied by an endpoint. Imported lazily: the exporters pull in transports we need
    # only when exporting.
    if otlp_protocol(env, "TRACES") == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

    return GrpcExporter()


def configure_tracing(service_name: str, env: Mapping[str, str] = os.environ) -> TracerProvider:
    """Install the global tracer provider once per process and return it."""
    global _configured, _exported, _tracer, _sdk_counts_spans
    if _configured is not None:
        return _configured
    provider = _Provider(resource=Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", service_name)}))
    exporter = _exporter_from_env(env)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _configured = provider
    _exported = exporter is not None
    # The SDK reads this variable from os.environ, whatever `env` says.
    _sdk_counts_spans = os.environ.get("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "").strip().lower() == "true"
    _tracer = None  # a tracer fetched before now is a proxy; the next call gets the provider's own
    return provider


def spans_exported() -> bool:
    """Whether configure_tracing set this process up to export spans (False before it ran).

    Spans that only add detail to a request (one per SQL statement) are made only then: unexported they
    would cost every query a span's allocations and context switches for nothing (two SQL spans were
    ~7 % of a services process answering ListLatestValues). Request spans are made regardless."""
    return _exported


def tracer() -> trace.Tracer:
    """The tracer of the services' request spans (fetched once per configured provider)."""
    global _tracer
    if _tracer is None:
        _tracer = trace.get_tracer("emma.services")
    return _tracer


def unrecorded_span(
    tracer: trace.Tracer, name: str, parent: Context, kind: SpanKind, attributes: Attributes = None
) -> trace.Span | None:
    """The span `tracer.start_span(name, parent, kind, attributes)` would start, without what only a
    reader of spans needs, while this process's spans have none (no exporter, no span processor);
    else None.

    Request spans exist even when nothing exports them: their trace ids go to the logs, the audit rows
    and the next service's call. Starting a recorded span costs ~40 µs (attributes, limits, resource,
    the processors' start and end), which was a tenth of a services process answering ListLatestValues
    and reached nobody (the gateway's span per request likewise). This span has the same trace id (the
    parent's, else a new one), a new span id and the flags and trace state of the configured sampler's
    decision, so whatever reads the context (logs, audit, propagation to the next call) sees what it
    would have seen."""
    provider = _configured
    if provider is None or provider.processors_added or _sdk_counts_spans or not isinstance(tracer, Tracer):
        return None
    if not tracer._is_enabled():  # the SDK's own check (its tracer configurator)
        return None
    parent_context = trace.get_current_span(parent).get_span_context()
    ids = tracer.id_generator
    if parent_context.is_valid:
        trace_id = parent_context.trace_id
        random_id = parent_context.trace_flags.random_trace_id
    else:
        trace_id = ids.generate_trace_id()
        random_id = ids.is_trace_id_random()
    decision = tracer.sampler.should_sample(parent, trace_id, name, kind, attributes)
    # Decision.is_sampled() without its missing annotations.
    flags = TraceFlags.SAMPLED if decision.decision is Decision.RECORD_AND_SAMPLE else TraceFlags.DEFAULT
    if random_id:
        flags |= TraceFlags.RANDOM_TRACE_ID
    span_id = ids.generate_span_id()
    state = decision.trace_state
    return NonRecordingSpan(SpanContext(trace_id, span_id, False, trace_flags=TraceFlags(flags), trace_state=state))


def current_ids() -> tuple[str, str]:
    """(trace id, span id) of the active span in hex, or ("", "") outside a trace."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return "", ""
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")
