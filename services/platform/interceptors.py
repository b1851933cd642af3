"""The server interceptor every EMMA service runs behind.

It refuses a request message holding a value no method accepts (services/platform/validation.py)
before any other interceptor or servicer runs, turns ApiError into a rich google.rpc.Status
(ErrorInfo, BadRequest), turns unexpected exceptions into INTERNAL without leaking internals, and
opens one OpenTelemetry span per unary RPC with the caller's trace context taken from the
`traceparent` metadata (while no span processor would read it, a span that only carries the trace ids:
core.tracing.unrecorded_span). Streams get no endless span: stream handlers open spans per message batch
themselves. Each unary RPC's time and status code go to the emma.rpc.duration histogram
(core/metrics.py), which also covers the command RPCs' latencies.

It is the server's one interceptor: inner layers (the auth interceptor) are HandlerWrappers folded into
it, and each method's wrapped handler is built once and reused, not rebuilt on every call (grpc.aio
asks every interceptor for a handler per call, and two layers of new handlers and closures per call
were work no answer needed).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeAlias, runtime_checkable

import grpc
from emma.common.v1 import errors_pb2
from google.protobuf.message import Message
from grpc_status import rpc_status
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from core.metrics import rpc_duration
from core.tracing import tracer, unrecorded_span
from services.errors import ApiError
from services.platform.db import database_unreachable
from services.platform.redact import clear_input_only
from services.platform.validation import check_request

log = logging.getLogger("emma.rpc")

Behavior = Callable[..., Any]


def _trace_fields() -> frozenset[str]:
    """The metadata keys the configured propagators read (traceparent, tracestate, baggage by default)."""
    global _fields_of
    textmap = propagate.get_global_textmap()
    if _fields_of[0] is not textmap:
        _fields_of = (textmap, frozenset(textmap.fields))
    return _fields_of[1]


_fields_of: tuple[object, frozenset[str]] = (None, frozenset())


def _parent(context: grpc.aio.ServicerContext[Any, Any]) -> Context:
    """The caller's trace context from the call's metadata; an empty context (a new trace) when the call
    carries none of the propagators' keys, without running them (what they would return then)."""
    metadata = context.invocation_metadata() or ()
    fields = _trace_fields()
    if not any(k in fields for k, _ in metadata):
        return Context()
    return propagate.extract({k: v for k, v in metadata if isinstance(v, str)})


DATABASE_RETRY_AFTER_MS = "2000"


def _known(exc: Exception) -> ApiError | None:
    """The status an exception stands for, None for a bug (INTERNAL)."""
    if isinstance(exc, ApiError):
        return exc
    if database_unreachable(exc):
        return ApiError(
            grpc.StatusCode.UNAVAILABLE,
            errors_pb2.ERROR_REASON_DATABASE_UNAVAILABLE,
            "the database cannot be reached; retry with backoff",
            # The first retry's wait, which the gateway passes on as Retry-After: a restarted or failed
            # over PostgreSQL takes seconds, and the pools reconnect within 5 s.
            metadata={"retry_after_ms": DATABASE_RETRY_AFTER_MS},
        )
    return None


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any], method: str, exc: Exception, known: ApiError | None
) -> None:
    """End the call with `known` (what _known(exc) made of the exception), or INTERNAL for a bug."""
    # grpc-stubs lags grpc.aio: abort_with_status exists at run time but not in the stubs.
    ctx: Any = context
    if known is not None:
        if known is not exc:
            log.warning("%s in %s: %s", known.message, method, str(exc) or type(exc).__name__)
        await ctx.abort_with_status(rpc_status.to_status(known.to_status()))
    log.exception("unexpected error in %s", method)
    internal = ApiError(
        grpc.StatusCode.INTERNAL,
        errors_pb2.ERROR_REASON_UNSPECIFIED,
        "internal error; the server logged the details",
    )
    await ctx.abort_with_status(rpc_status.to_status(internal.to_status()))


def _aborted_code(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The status a servicer (or an inner interceptor) aborted with."""
    code: Any = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    # grpc.aio keeps some codes as the C core's integer.
    by_number = {c.value[0]: c.name for c in grpc.StatusCode}
    return by_number.get(code, "UNKNOWN") if isinstance(code, int) else "UNKNOWN"


def _output(response: Any) -> Any:
    """A response as it may leave the server: INPUT_ONLY fields (a password) are never sent back."""
    if isinstance(response, Message):
        clear_input_only(response)
    return response


def _wrap_unary_response(method: str, inner: Behavior, *, check: bool) -> Behavior:
    """`check`: the call has one request message (unary), which is validated before `inner` runs."""
    # The histogram's attributes by status code, built once each, not per call.
    attributes: dict[str, dict[str, str]] = {}

    async def serve(request: Any, context: grpc.aio.ServicerContext[Any, Any], span: trace.Span) -> Any:
        started = time.perf_counter()
        code = "OK"
        try:
            if check:
                check_request(request)
            return _output(await inner(request, context))
        except grpc.aio.AbortError:
            code = _aborted_code(context)
            raise
        except Exception as exc:  # every error becomes a status, never a crash
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            known = _known(exc)
            code = known.code.name if known is not None else "INTERNAL"
            if known is not None:
                span.set_attribute("rpc.grpc.status_code", known.code.value[0])
                span.set_attribute("emma.error_reason", known.reason)
            await _abort(context, method, exc, known)
            raise  # unreachable: abort raises
        except BaseException:
            code = "CANCELLED"  # the client went away (the task was cancelled)
            raise
        finally:
            labels = attributes.get(code)
            if labels is None:
                labels = attributes.setdefault(code, {"method": method, "code": code})
            rpc_duration.record(time.perf_counter() - started, labels)

    async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        parent = _parent(context)
        span = unrecorded_span(tracer(), method, parent, SpanKind.SERVER)
        if span is None:
            with tracer().start_as_current_span(method, context=parent, kind=SpanKind.SERVER) as span:
                span.set_attribute("rpc.system", "grpc")
                span.set_attribute("rpc.method", method)
                return await serve(request, context, span)
        # Nothing records spans: the span only carries the trace ids (core/tracing.py).
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            return await serve(request, context, span)
        finally:
            otel_context.detach(token)

    return behavior


def _wrap_stream_response(method: str, inner: Behavior, *, check: bool) -> Behavior:
    """`check`: the call has one request message (server stream), validated before `inner` runs;
    a bidi stream's messages are its servicer's to check."""

    async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            if check:
                check_request(request)
            result = inner(request, context)
            if inspect.isasyncgen(result):
                async for item in result:
                    yield _output(item)
            elif inspect.isawaitable(result):
                await result
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, method, exc, _known(exc))

    return behavior


@runtime_checkable
class HandlerWrapper(Protocol):
    """A layer inside the platform interceptor: wraps one method's handler; called once per method.

    The handler it returns is reused for every later call of that method, so it must keep per-call
    state inside the behaviors it wraps, never in the handler.
    """

    def wrap_handler(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        """`handler` with this layer's behavior around it."""
        ...

    def wrap_key(self, method: str) -> object:
        """What the wrapping of `method` depends on (the auth interceptor: its policy entry); when it
        returns another object than last time, the method is wrapped again. Called on every call."""
        ...


# A string: grpc's RpcMethodHandler is generic in its stubs only.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class HandlerCache:
    """Wrapped handlers by method, each kept with the handler and the keys it was made from.

    The services' generic handlers hand out the same handler object for every call of a method; a
    different one (a service added later, a test's server), or another key (a policy entry changed
    at run time), is wrapped afresh.
    """

    def __init__(self) -> None:
        self._by_method: dict[str, tuple[Handler, tuple[object, ...], Handler]] = {}

    def get(self, method: str, handler: Handler, keys: tuple[object, ...] = ()) -> Handler | None:
        cached = self._by_method.get(method)
        if cached is None or cached[0] is not handler or len(cached[1]) != len(keys):
            return None
        if any(a is not b for a, b in zip(cached[1], keys, strict=True)):
            return None
        return cached[2]

    def put(self, method: str, handler: Handler, wrapped: Handler, keys: tuple[object, ...] = ()) -> Handler:
        self._by_method[method] = (handler, keys, wrapped)
        return wrapped


class PlatformInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Request validation, error mapping and tracing for every RPC of every service.

    It is the first interceptor (services/platform/server.py), so its wrapper runs outermost: a
    request is validated before the auth interceptor (one of `inner`, in order, the first outermost)
    authenticates it or writes an audit row.
    """

    def __init__(self, inner: Sequence[HandlerWrapper] = ()) -> None:
        self._inner = tuple(inner)
        self._cache = HandlerCache()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        keys = tuple(layer.wrap_key(method) for layer in self._inner)
        cached = self._cache.get(method, handler, keys)
        if cached is not None:
            return cached
        return self._cache.put(method, handler, self.wrap_handler(method, handler), keys)

    def wrap_handler(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        wrapped = handler
        for layer in reversed(self._inner):
            wrapped = layer.wrap_handler(method, wrapped)
        return rewrap_handler(
            wrapped,
            unary_unary=lambda b: _wrap_unary_response(method, b, check=True),
            stream_unary=lambda b: _wrap_unary_response(method, b, check=False),
            unary_stream=lambda b: _wrap_stream_response(method, b, check=True),
            stream_stream=lambda b: _wrap_stream_response(method, b, check=False),
        )


Wrap = Callable[[Behavior], Behavior]


def rewrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any],
    *,
    unary_unary: Wrap,
    unary_stream: Wrap,
    stream_unary: Wrap,
    stream_stream: Wrap,
) -> grpc.RpcMethodHandler[Any, Any]:
    """The same method handler with its behavior wrapped by the wrapper for its kind of call."""
    ser = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary_unary(handler.unary_unary), **ser)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(unary_stream(handler.unary_stream), **ser)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(stream_unary(handler.stream_unary), **ser)
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(stream_stream(handler.stream_stream), **ser)
    return handler


def current_trace_id() -> str:
    """The hex trace id of the active span, or "" outside a trace (for logs and audit rows)."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""
