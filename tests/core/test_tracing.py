"""core.tracing.unrecorded_span: while no span processor would read a request span, a span carrying only
its ids stands in, with the ids, flags and trace state the SDK's own start_span gives."""

from __future__ import annotations

import pytest
from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import SpanKind

from core import tracing

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
PARENTS = {
    "none": {},
    "sampled": {"traceparent": f"00-{TRACE}-{PARENT_SPAN}-01"},
    "not sampled": {"traceparent": f"00-{TRACE}-{PARENT_SPAN}-00"},
    "with trace state": {"traceparent": f"00-{TRACE}-{PARENT_SPAN}-01", "tracestate": "vendor=abc,other=1"},
}


def _provider(monkeypatch: pytest.MonkeyPatch, sampler: Sampler | None = None) -> tracing._Provider:
    """A provider of this process's kind, in configure_tracing's place for this test (the process's own
    may have had processors added by other tests)."""
    provider = tracing._Provider(sampler=sampler, shutdown_on_exit=False)
    monkeypatch.setattr(tracing, "_configured", provider)
    monkeypatch.setattr(tracing, "_sdk_counts_spans", False)
    return provider


# Ids by description: a sampler's str() holds its address, which differs between xdist workers.
@pytest.mark.parametrize(
    "sampler",
    [None, ALWAYS_OFF, ParentBased(TraceIdRatioBased(0.0))],
    ids=["sdk default", "always off", "parent based, ratio 0"],
)
@pytest.mark.parametrize("parent_name", list(PARENTS))
def test_an_unrecorded_span_has_the_context_the_sdk_would_give_it(
    monkeypatch: pytest.MonkeyPatch, sampler: Sampler | None, parent_name: str
) -> None:
    provider = _provider(monkeypatch, sampler)
    tracer = provider.get_tracer("emma.test")
    parent = propagate.extract(PARENTS[parent_name])
    attributes = {"rpc.method": "/x.Y/Z"}
    light = tracing.unrecorded_span(tracer, "/x.Y/Z", parent, SpanKind.SERVER, attributes)
    full = tracer.start_span("/x.Y/Z", context=parent, kind=SpanKind.SERVER, attributes=attributes)
    assert light is not None and not light.is_recording()
    got, want = light.get_span_context(), full.get_span_context()
    assert got.is_valid and not got.is_remote
    assert got.trace_flags == want.trace_flags and got.trace_state == want.trace_state
    if PARENTS[parent_name]:
        assert format(got.trace_id, "032x") == TRACE == format(want.trace_id, "032x")
    else:
        assert got.trace_id != want.trace_id  # each a new trace
    assert got.span_id not in (int(PARENT_SPAN, 16), want.span_id)


def test_spans_are_recorded_once_a_processor_reads_them(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = _provider(monkeypatch)
    tracer = provider.get_tracer("emma.test")
    assert tracing.unrecorded_span(tracer, "a", Context(), SpanKind.SERVER) is not None
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert tracing.unrecorded_span(tracer, "a", Context(), SpanKind.SERVER) is None


def test_spans_are_recorded_when_the_sdk_counts_them_or_tracing_is_not_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = _provider(monkeypatch)
    tracer = provider.get_tracer("emma.test")
    monkeypatch.setattr(tracing, "_sdk_counts_spans", True)
    assert tracing.unrecorded_span(tracer, "a", Context(), SpanKind.SERVER) is None
    monkeypatch.setattr(tracing, "_sdk_counts_spans", False)
    monkeypatch.setattr(tracing, "_configured", None)
    assert tracing.unrecorded_span(tracer, "a", Context(), SpanKind.SERVER) is None
