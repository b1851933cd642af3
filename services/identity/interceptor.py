"""The one interceptor that authenticates and authorizes every RPC of every service, and hands each
call's outcome to the audit writer (services/identity/call_audit.py).

Order: PlatformInterceptor (errors, tracing) wraps this one, so an ApiError raised here becomes a rich
status and the audit row carries the call's trace id. create_server folds it into the platform
interceptor (it is a HandlerWrapper): each method is wrapped once, not on every call.

- PUBLIC methods (login, refresh, health, reflection) pass without credentials.
- EdgeLinkService.Connect is authenticated by the edge API key in its Hello (the servicer checks it);
  this interceptor notes the key id and closes the stream as soon as the key is revoked anywhere.
- Every other call needs "authorization: Bearer <jwt>"; the method's minimum role from
  services/identity/policy.py is checked against the caller's role in the organization named by the
  request's http path field. Not a member: NOT_FOUND (no tenant names leak). Unknown methods are
  refused.
- Mutating calls (every http verb but GET) get an audit row after the call (CallAuditor).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from emma.common.v1 import errors_pb2
from emma.edge.v1 import edge_link_pb2

from services.errors import ApiError, invalid_field
from services.identity import policy
from services.identity.call_audit import CallAuditor, outcome_of
from services.identity.config import AuthConfig
from services.identity.context import (
    ANONYMOUS,
    Caller,
    CallState,
    enter_call_state,
    leave_call_state,
)
from services.identity.edge_keys import parse_api_key
from services.identity.state import AuthState
from services.platform.interceptors import HandlerCache, rewrap_handler
from services.platform.rpc import Context

Behavior = Callable[..., Any]


def _metadata_value(context: Context, key: str) -> str | None:
    """The text value of `key` (lower case) in the call's metadata, the last one when it is repeated;
    a scan for the one key a call needs, not a dict of all of them built per call."""
    found: str | None = None
    for k, v in context.invocation_metadata() or ():
        if isinstance(v, str) and k.lower() == key:
            found = v
    return found


def client_address(context: Context, config: AuthConfig) -> str:
    """The caller's IP address without port ("127.0.0.1", "::1").

    Behind the gateway (EMMA_TRUST_FORWARDED_FOR) it is the rightmost x-forwarded-for entry, the one
    the gateway added, if the peer is one of EMMA_TRUSTED_PROXIES (any peer when that is empty).
    """
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        address = rest.rsplit(":", 1)[0]
    elif kind == "ipv6":
        address = rest.rsplit(":", 1)[0].strip("[]")
    else:
        address = peer[:100]
    if config.trust_forwarded_for:
        forwarded = _metadata_value(context, "x-forwarded-for") or ""
        if forwarded and _trusted(address, config):
            return forwarded.split(",")[-1].strip()[:100]
    return address


def _trusted(address: str, config: AuthConfig) -> bool:
    if not config.trusted_proxies:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in config.trusted_proxies)


async def _race(responses: Any, alarm: asyncio.Event, on_alarm: Callable[[], Awaitable[None]]) -> AsyncGenerator[Any]:
    """Yield from the async generator `responses`. Whenever `alarm` is set, clear it and await
    `on_alarm()` (a re-check) while the stream keeps going; if it raises, the stream ends with that
    error and the inner generator is closed.

    One watcher task per stream does the re-checks; the messages themselves pass through without
    extra tasks or futures (a stream may carry a thousand messages a second). If the re-check fails
    while the stream waits for its next message, the wait is cancelled and turned into the error.
    """
    task = asyncio.current_task()
    assert task is not None
    failure: list[BaseException] = []
    waiting = False

    async def watch() -> None:
        while True:
            await alarm.wait()
            alarm.clear()
            try:
                await on_alarm()
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # the re-check's verdict, e.g. UNAUTHENTICATED
                failure.append(exc)
                if waiting:
                    task.cancel()
                return

    watcher = asyncio.create_task(watch(), name="stream-recheck")
    try:
        while True:
            if failure:
                raise failure[0]
            waiting = True
            try:
                item = await anext(responses)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if failure:
                    task.uncancel()
                    raise failure[0] from None
                raise
            finally:
                waiting = False
            yield item
    finally:
        watcher.cancel()
        with contextlib.suppress(BaseException):
            await watcher
        with contextlib.suppress(BaseException):
            await responses.aclose()


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, state: AuthState) -> None:
        self.state = state
        self.auditor = CallAuditor(state.pool)
        self._cache = HandlerCache()

    # ------------------------------------------------------------------ plumbing

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        keys = (self.wrap_key(method),)
        cached = self._cache.get(method, handler, keys)
        if cached is not None:
            return cached
        return self._cache.put(method, handler, self.wrap_handler(method, handler), keys)

    def wrap_key(self, method: str) -> object:
        """The method's policy entry (a cached lookup): its wrapped handler is remade when it changes."""
        return policy.method_info(method)

    def wrap_handler(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        """The method's handler behind authentication, authorization and the audit (once per method:
        services/platform/server.py folds this interceptor into the platform's, which reuses it)."""
        info = policy.method_info(method)
        if info is not None and info.access == policy.PUBLIC and not info.mutating:
            return handler  # health and reflection
        edge_stream = info is not None and info.access == policy.EDGE
        return rewrap_handler(
            handler,
            unary_unary=lambda b: self._unary(method, info, b),
            unary_stream=lambda b: self._server_stream(method, info, b),
            stream_unary=lambda b: self._client_stream(method, info, b),
            stream_stream=lambda b: self._edge_stream(method, b) if edge_stream else self._bidi_stream(method, info, b),
        )

    async def _authorize(self, method: str, info: policy.MethodInfo | None, request: Any, context: Context) -> Caller:
        if info is None:
            raise ApiError(
                grpc.StatusCode.PERMISSION_DENIED,
                errors_pb2.ERROR_REASON_ROLE_INSUFFICIENT,
                f"{method} has no entry in the access policy and is refused",
            )
        if info.access == policy.PUBLIC:
            return ANONYMOUS
        if info.access == policy.EDGE:
            return Caller(kind="edge")
        caller = await self.state.authenticate_bearer(_metadata_value(context, "authorization"))
        if info.access == policy.USER:
            return caller
        if info.access == policy.PLATFORM_ADMIN:
            if not caller.platform_admin:
                raise ApiError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    errors_pb2.ERROR_REASON_ROLE_INSUFFICIENT,
                    "only platform administrators may do this",
                    metadata={"required_role": "platform_admin"},
                )
            return caller
        # An organization role: the organization comes from the request's http path field.
        assert info.resource_field is not None, method
        resource = policy.field_value(request, info.resource_field) if request is not None else ""
        org = policy.org_of(resource)
        if org is None:
            raise invalid_field(info.resource_field, f"{resource!r} does not match {info.resource_pattern}")
        caller.require_org(org, int(info.access), resource=resource)
        return caller

    def _call_state(self, method: str, context: Context) -> CallState:
        return CallState(
            caller=ANONYMOUS,
            method=method,
            client_address=client_address(context, self.state.config),
        )

    # ------------------------------------------------------------------ behaviours

    def _unary(self, method: str, info: policy.MethodInfo | None, inner: Behavior) -> Behavior:
        async def behavior(request: Any, context: Context) -> Any:
            call = self._call_state(method, context)
            previous = enter_call_state(call)
            outcome: tuple[int, str] = (0, "")
            audited = info is not None and info.mutating
            self.auditor.calls_in_flight += audited
            try:
                call.caller = await self._authorize(method, info, request, context)
                return await inner(request, context)
            except BaseException as exc:
                outcome = outcome_of(exc, context)
                raise
            finally:
                leave_call_state(previous)
                try:
                    if info is not None and audited:
                        await self.auditor.audit(info, request, call, outcome)
                finally:
                    self.auditor.calls_in_flight -= audited

        return behavior

    def _server_stream(self, method: str, info: policy.MethodInfo | None, inner: Behavior) -> Behavior:
        async def behavior(request: Any, context: Context) -> AsyncIterator[Any]:
            call = self._call_state(method, context)
            previous = enter_call_state(call)
            outcome: tuple[int, str] = (0, "")
            try:
                call.caller = await self._authorize(method, info, request, context)
                result = inner(request, context)
                if inspect.isasyncgen(result):
                    if call.caller.kind == "user":
                        # A long stream (live values, command watch) ends when its session is revoked
                        # or the caller loses access: re-checked on every change of the user.
                        alarm = asyncio.Event()
                        self.state.watch_session(call.caller.session_id, call.caller.user_id, alarm)

                        async def recheck() -> None:
                            call.caller = await self._authorize(method, info, request, context)

                        try:
                            async with contextlib.aclosing(_race(result, alarm, recheck)) as stream:
                                async for item in stream:
                                    yield item
                        finally:
                            self.state.unwatch_session(alarm)
                    else:
                        async for item in result:
                            yield item
                elif inspect.isawaitable(result):
                    await result
            except BaseException as exc:
                outcome = outcome_of(exc, context)
                raise
            finally:
                leave_call_state(previous)
                if info is not None and info.mutating:
                    await self.auditor.audit(info, request, call, outcome)

        return behavior

    def _client_stream(self, method: str, info: policy.MethodInfo | None, inner: Behavior) -> Behavior:
        async def behavior(request_iterator: Any, context: Context) -> Any:
            call = self._call_state(method, context)
            previous = enter_call_state(call)
            try:
                call.caller = await self._authorize(method, info, None, context)
                return await inner(request_iterator, context)
            finally:
                leave_call_state(previous)

        return behavior

    def _bidi_stream(self, method: str, info: policy.MethodInfo | None, inner: Behavior) -> Behavior:
        async def behavior(request_iterator: Any, context: Context) -> AsyncIterator[Any]:
            call = self._call_state(method, context)
            previous = enter_call_state(call)
            try:
                call.caller = await self._authorize(method, info, None, context)
                result = inner(request_iterator, context)
                if inspect.isasyncgen(result):
                    async for item in result:
                        yield item
                elif inspect.isawaitable(result):
                    await result
            finally:
                leave_call_state(previous)

        return behavior

    def _edge_stream(self, method: str, inner: Behavior) -> Behavior:
        """EdgeLink Connect: note the Hello's key id; end the stream when that key is revoked."""
        state = self.state

        async def behavior(request_iterator: Any, context: Context) -> AsyncIterator[Any]:
            call = self._call_state(method, context)
            call.caller = Caller(kind="edge")
            previous = enter_call_state(call)
            revoked = asyncio.Event()
            watched: list[str] = []
            hello: list[edge_link_pb2.Hello] = []

            async def tap() -> AsyncIterator[Any]:
                async for request in request_iterator:
                    if not hello and request.WhichOneof("message") == "hello":
                        hello.append(request.hello)
                        parsed = parse_api_key(request.hello.api_key)
                        key_id = parsed[0] if parsed else ""
                        if key_id:
                            watched.append(key_id)
                            state.watch_edge_key(key_id, revoked)
                    yield request

            responses = inner(tap(), context)
            sent = 0
            outcome: tuple[int, str] = (0, "")

            async def refuse() -> None:
                raise ApiError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    errors_pb2.ERROR_REASON_EDGE_KEY_REVOKED,
                    "the API key was revoked",
                )

            try:
                async with contextlib.aclosing(_race(responses, revoked, refuse)) as stream:
                    async for item in stream:
                        sent += 1
                        yield item
            except BaseException as exc:
                outcome = outcome_of(exc, context)
                raise
            finally:
                for key_id in watched:
                    state.unwatch_edge_key(key_id, revoked)
                leave_call_state(previous)
                if sent and watched and hello:  # the Hello was accepted: the edge is known
                    self.auditor.track(self.auditor.audit_edge(method, watched[0], hello[0], call, outcome))

        return behavior

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait for audit rows still being written (at shutdown, before the pool closes)."""
        await self.auditor.drain(timeout_s)
