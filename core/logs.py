"""Structured JSON logging: one JSON object per line, with correlation fields.

Fields come from four places, later ones winning: static fields given to `configure_logging` (edge,
site), the active OpenTelemetry span (`trace_id`, `span_id`, so a log line leads to its trace), the
ambient `log_context(...)` (e.g. the uplink wraps the handling of one command in
`with log_context(command_id=...)`), and `extra=` on the call itself.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import IO, Any

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_CONTEXT: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar("emma_log_context", default=_EMPTY)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add fields to every log line emitted in this context (task- and thread-local via contextvars)."""
    token = _CONTEXT.set({**_CONTEXT.get(), **fields})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def _trace_ids() -> tuple[str, str]:
    """The active span's ids ("" outside a trace). A span can be active only in a process that
    imported OpenTelemetry's API (the services and the gateway do); the edge daemon, which never
    traces, saves the 2.2 MiB that importing the SDK costs (its RSS goal is < 60 MiB)."""
    if "opentelemetry.trace" not in sys.modules:
        return "", ""
    from core.tracing import current_ids

    return current_ids()


class JsonFormatter(logging.Formatter):
    def __init__(self, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        doc.update(self.static)
        trace_id, span_id = _trace_ids()
        if trace_id:
            doc["trace_id"] = trace_id
            doc["span_id"] = span_id
        doc.update(_CONTEXT.get())
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, separators=(",", ":"))


def configure_logging(
    level: int | str = logging.INFO, stream: IO[str] | None = None, static: Mapping[str, Any] | None = None
) -> logging.Handler:
    """Send the root logger's output as JSON lines to `stream` (stderr by default)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(static))
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old.formatter, JsonFormatter):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
