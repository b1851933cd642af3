"""OpenTelemetry set-up: a tracer provider whose exporter follows the standard OTEL_* variables.

With none of them set nothing is exported (spans are still created, so trace ids reach the logs and
the audit trail). OTEL_TRACES_EXPORTER=otlp (or an OTEL_EXPORTER_OTLP_*ENDPOINT) exports over OTLP/gRPC;
OTEL_TRACES_EXPORTER=console prints spans, which helps when debugging locally.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

_configured: TracerProvider | None = None


def _exporter_from_env(env: Mapping[str, str]) -> SpanExporter | None:
    choice = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if choice == "none":
        return None
    if choice == "console":
        return ConsoleSpanExporter()
    if choice == "otlp" or endpoint:
        # Imported lazily: the OTLP exporter pulls in its own gRPC client we need only when exporting.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    return None


def configure_tracing(service_name: str, env: Mapping[str, str] = os.environ) -> TracerProvider:
    """Install the global tracer provider once per process and return it."""
    global _configured
    if _configured is not None:
        return _configured
    provider = TracerProvider(resource=Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", service_name)}))
    exporter = _exporter_from_env(env)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _configured = provider
    return provider


def tracer() -> trace.Tracer:
    return trace.get_tracer("emma.services")
