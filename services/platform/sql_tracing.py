"""A client span per SQL statement, as a child of the RPC (or batch) span it runs in.

Why not opentelemetry-instrumentation-asyncpg: its release for this OpenTelemetry line (0.66b1) pins
opentelemetry-api 1.45.1 and semantic-conventions 0.66b1, which the SDK we use (1.45.2, 0.66b2)
refuses, and it patches asyncpg's classes process-wide. asyncpg lets a pool choose its connection
class, so the pool's connections are a subclass whose query methods open a span: nothing global,
nothing new to install (docs/dependencies.md).

Only a process that exports traces (core.tracing.spans_exported: OTEL_TRACES_EXPORTER or an OTLP
endpoint) makes these spans: without an exporter nobody sees them, and they cost (two per
ListLatestValues were ~7 % of a services process busy with it). A statement outside any trace gets
no span either: the background loops (rollups, retention, offline marking, LISTEN reconnects) would
otherwise emit a one-span trace per poll. Statements of prepared
statements (`conn.prepare(...)`) are not covered: asyncpg runs them without the connection's methods.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from core.tracing import spans_exported

_tracer = trace.get_tracer("emma.sql")
# Statements are the code's own constant SQL with $n parameters (values are never recorded); a long
# generated one is cut so one span cannot bloat an export. The longest of ours (telemetry's one-statement
# store of a small group, ~2.7k characters) is shown whole: its last part says what it writes.
MAX_STATEMENT_CHARS = 4000


def _statement(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    first = str(args[0]) if args else ""
    if method.startswith("copy_"):
        schema = kwargs.get("schema_name")
        return f"COPY {schema + '.' if schema else ''}{first}"
    return first


def _traced(method: str, inner: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(inner)
    async def run(self: asyncpg.Connection, *args: Any, **kwargs: Any) -> Any:
        if not spans_exported() or not trace.get_current_span().get_span_context().is_valid:
            return await inner(self, *args, **kwargs)
        statement = _statement(method, args, kwargs)
        operation = statement.split(None, 1)[0].upper() if statement.strip() else method
        attributes = {
            "db.system.name": "postgresql",
            "db.operation.name": operation,
            "db.query.text": statement[:MAX_STATEMENT_CHARS],
        }
        # Errors are recorded below, without the exception's text (it may quote a value).
        with _tracer.start_as_current_span(
            operation,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                return await inner(self, *args, **kwargs)
            except asyncpg.PostgresError as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                span.set_attribute("db.response.status_code", str(exc.sqlstate))
                raise
            except BaseException as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise

    return run


TRACED_METHODS = (
    "execute",
    "executemany",
    "fetch",
    "fetchrow",
    "fetchval",
    "fetchmany",
    "copy_records_to_table",
    "copy_to_table",
)


class TracedConnection(asyncpg.Connection):
    """asyncpg's connection with a span around each query method (the pool's `connection_class`)."""


for _name in TRACED_METHODS:
    setattr(TracedConnection, _name, _traced(_name, getattr(asyncpg.Connection, _name)))
