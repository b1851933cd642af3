"""Trace ids in the structured JSON logs."""

from __future__ import annotations

import io
import json
import logging

from opentelemetry.sdk.trace import TracerProvider

from core.logs import JsonFormatter, log_context


def _line(stream: io.StringIO) -> dict[str, object]:
    doc = json.loads(stream.getvalue().splitlines()[-1])
    assert isinstance(doc, dict)
    return doc


def test_a_log_line_inside_a_span_carries_its_trace_and_span_id() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter({"process": "test"}))
    log = logging.getLogger("emma.test.trace_ids")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    tracer = TracerProvider().get_tracer("test")
    try:
        log.info("outside")
        assert "trace_id" not in _line(stream) and "span_id" not in _line(stream)
        with tracer.start_as_current_span("work") as span, log_context(command_id="c1"):
            log.info("inside")
        ctx = span.get_span_context()
        doc = _line(stream)
        assert doc["trace_id"] == format(ctx.trace_id, "032x")
        assert doc["span_id"] == format(ctx.span_id, "016x")
        assert doc["command_id"] == "c1" and doc["process"] == "test" and doc["message"] == "inside"
    finally:
        log.removeHandler(handler)
