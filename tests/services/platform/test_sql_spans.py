"""SQL spans: one CLIENT span per statement inside a trace, made only when this process exports traces
(core.tracing.spans_exported), and the services' tracer fetched once."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from core import tracing
from services.platform import db
from services.platform.config import DatabaseConfig


@pytest.fixture
def spans() -> InMemorySpanExporter:
    provider = tracing.configure_tracing("emma-test")
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


async def _one_query_in_a_trace(dsn: str) -> None:
    pool = await db.create_pool(DatabaseConfig(url=dsn, pool_max_size=1))
    try:
        with tracing.tracer().start_as_current_span("request"):
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
    finally:
        await pool.close()


async def test_statements_get_no_span_when_nothing_exports_them(
    database_url: str, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This test process configured tracing without an OTEL_* exporter: request spans only.
    monkeypatch.setattr(tracing, "_exported", False)
    assert not tracing.spans_exported()
    spans.clear()
    await _one_query_in_a_trace(database_url)
    assert [s.name for s in spans.get_finished_spans()] == ["request"]


async def test_statements_get_a_client_span_when_traces_are_exported(
    database_url: str, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What configure_tracing records when the OTEL_* variables name an exporter (the OTLP path itself is
    # tests/observability/test_otlp_and_scrape.py, with a real receiver).
    monkeypatch.setattr(tracing, "_exported", True)
    spans.clear()
    await _one_query_in_a_trace(database_url)
    finished = {s.name: s for s in spans.get_finished_spans()}
    assert set(finished) == {"request", "SELECT"}
    sql = finished["SELECT"]
    assert sql.kind == trace.SpanKind.CLIENT
    assert sql.parent is not None and sql.parent.span_id == finished["request"].context.span_id
    assert sql.attributes is not None and sql.attributes["db.query.text"] == "SELECT $1::int + 1"


def test_the_services_tracer_is_fetched_once_per_provider(spans: InMemorySpanExporter) -> None:
    assert tracing.tracer() is tracing.tracer()
    assert isinstance(tracing.tracer(), type(trace.get_tracer_provider().get_tracer("x")))
