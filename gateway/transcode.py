"""Calling the RPC behind a route and turning its answer into HTTP.

Unary answers become one proto3 JSON document (response_body picks one field of it). Server streams
become Server-Sent Events when the client accepts text/event-stream and NDJSON otherwise; an error
after the first message can no longer change the HTTP status, so it is sent as a last event in the
same AIP-193 shape. A client that goes away cancels the gRPC call at once, so the service stops
working for nobody.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from starlette.types import Receive, Scope, Send

from gateway.binding import message_class
from gateway.errors import HttpError, from_rpc_error
from gateway.json_encoder import Unprintable, message_to_dict
from gateway.json_text import message_json
from gateway.routes import Route
from gateway.wire_text import ElementTexts

Metadata = Sequence[tuple[str, str]]
# A unary or a server-streaming multi-callable of the Invoker.
_Call = TypeVar("_Call")

# grpc-stubs lacks grpc.aio.EOF, the sentinel read() returns at the end of a stream.
EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"


def to_json(route: Route, message: Message) -> Any:
    """proto3 canonical JSON (json_format) of an answer, narrowed to response_body when the rule has one.

    Fields without presence are printed even when they hold their default, so a REST client sees
    `"value": 0` rather than a missing key; int64 stay strings and enums names, as proto3 JSON says.
    INPUT_ONLY fields are never printed.
    """
    doc = message_to_dict(message)
    if route.response_field is not None:
        return doc.get(route.response_field.json_name)
    return doc


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def answer_json(route: Route, message: Message) -> bytes:
    """`dumps(to_json(route, message))`: printed straight from the message when the rule answers with the
    whole message (gateway/json_text.py), else, or for a value only json_format prints, through the
    document."""
    if route.response_field is None:
        try:
            return message_json(message).encode()
        except Unprintable:
            pass
    return dumps(to_json(route, message))


class Invoker:
    """One generic multi-callable per RPC and channel, made once: the request path stays free of
    descriptor work. Calls take the channels in turn (each its own connection, GatewayConfig.connections).
    Unary calls answer with the message's bytes (AnswerText prints them); streams with messages."""

    def __init__(self, channels: Sequence[grpc.aio.Channel]) -> None:
        if not channels:
            raise ValueError("an Invoker needs at least one channel")
        self._channels = list(channels)
        self._next = 0
        self._unary: dict[str, list[grpc.aio.UnaryUnaryMultiCallable[Message, bytes]]] = {}
        self._stream: dict[str, list[grpc.aio.UnaryStreamMultiCallable[Message, Message]]] = {}

    def _turn(self) -> int:
        turn = self._next
        self._next = (turn + 1) % len(self._channels)
        return turn

    def unary(self, route: Route) -> grpc.aio.UnaryUnaryMultiCallable[Message, bytes]:
        return self._next_of(self._unary, route, lambda c: c.unary_unary, lambda: _raw)

    def stream(self, route: Route) -> grpc.aio.UnaryStreamMultiCallable[Message, Message]:
        return self._next_of(
            self._stream, route, lambda c: c.unary_stream, lambda: message_class(route.method.output_type).FromString
        )

    def _next_of(
        self,
        made: dict[str, list[_Call]],
        route: Route,
        kind: Callable[[grpc.aio.Channel], Callable[..., _Call]],
        deserializer: Callable[[], Callable[[bytes], Any]],
    ) -> _Call:
        """The route's multi-callable on the channel whose turn it is, made for every channel on first use."""
        calls = made.get(route.grpc_path)
        if calls is None:
            deserialize = deserializer()
            calls = made[route.grpc_path] = [
                kind(c)(route.grpc_path, request_serializer=_serialize, response_deserializer=deserialize)
                for c in self._channels
            ]
        return calls[self._turn()]


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _raw(data: bytes) -> bytes:
    return data


# Answers up to this size are remembered by AnswerText; a larger one (a long history) is printed anew.
MAX_REMEMBERED_ANSWER_BYTES = 64 * 1024


class AnswerText:
    """The JSON body of a unary answer from its bytes, the last one of each route remembered.

    The body is a function of the answer's bytes alone (answer_json of the message they encode), so an
    answer byte for byte equal to the route's previous one gets the previous body without being parsed
    or printed again. The services answer calls that share a read (services/platform/shared_reads.py:
    fifty dashboards polling one site) with the same message, so under load most latest-value answers
    repeat the one before. Comparing the bytes is one memcmp; nothing is ever served that the caller's
    own answer would not print to. An answer that differs (a new read of the site: new `read_time`,
    mostly the same values) gets its repeated elements' texts from their bytes (gateway/wire_text.py).
    """

    def __init__(self, max_bytes: int = MAX_REMEMBERED_ANSWER_BYTES) -> None:
        self._max_bytes = max_bytes
        self._last: dict[Route, tuple[bytes, bytes]] = {}
        self._elements = ElementTexts()

    def json(self, route: Route, data: bytes) -> bytes:
        last = self._last.get(route)
        if last is not None and last[0] == data:
            return last[1]
        message = message_class(route.method.output_type).FromString(data)
        content = self._print(route, message, data)
        if len(data) <= self._max_bytes:
            self._last[route] = (data, content)
        return content

    def _print(self, route: Route, message: Message, data: bytes) -> bytes:
        """answer_json(route, message), elements of repeated message fields printed once per bytes
        (gateway/wire_text.py) when the rule answers with the whole message."""
        if route.response_field is None:
            try:
                text = self._elements.json(message, data)
            except Unprintable:
                text = None  # answer_json prints it the slow way, or fails as it always did
            if text is not None:
                return text.encode()
        return answer_json(route, message)


async def call_unary(
    invoker: Invoker, answers: AnswerText, route: Route, request: Message, metadata: Metadata, deadline_s: float
) -> bytes:
    """The JSON body of a unary answer; HttpError carrying the service's status otherwise."""
    try:
        data = await invoker.unary(route)(request, metadata=metadata, timeout=deadline_s)
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from None
    return answers.json(route, data)


# How long a stream may take to send its first message before the HTTP response starts anyway.
FIRST_MESSAGE_WAIT_S = 1.0


@dataclass
class OpenedStream:
    """A started server stream: its first message, or the read still waiting for it."""

    call: grpc.aio.UnaryStreamCall[Message, Message]
    first: Message | None
    pending: asyncio.Future[Any] | None = None


async def open_stream(
    invoker: Invoker,
    route: Route,
    request: Message,
    metadata: Metadata,
    deadline_s: float | None,
    first_wait_s: float = FIRST_MESSAGE_WAIT_S,
) -> OpenedStream:
    """Start a server stream and wait (briefly) for its first message.

    An error before the first message (validation, NOT_FOUND, UNIMPLEMENTED) is answered with its
    proper HTTP status, because no header has been sent yet; services refuse bad requests at once,
    and most of EMMA's streams send their current state first. A stream with nothing to say yet (a
    watch of publications that have not happened) starts its 200 response after `first_wait_s`
    instead of holding the client without headers until the first event or its deadline.
    """
    call = invoker.stream(route)(request, metadata=metadata, timeout=deadline_s)
    read: asyncio.Future[Any] = asyncio.ensure_future(call.read())
    try:
        done, _ = await asyncio.wait({read}, timeout=first_wait_s)
        if not done:
            return OpenedStream(call, None, pending=read)
        first = read.result()
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from None
    except BaseException:
        read.cancel()
        call.cancel()
        raise
    if first is EOF:
        return OpenedStream(call, None)
    assert isinstance(first, Message)
    return OpenedStream(call, first)


def wants_sse(accept: str) -> bool:
    return any(part.split(";", 1)[0].strip().lower() == SSE for part in accept.split(","))


class StreamResponse:
    """An ASGI response that relays a server stream as SSE or NDJSON until it ends or the client leaves."""

    def __init__(
        self,
        route: Route,
        opened: OpenedStream,
        *,
        sse: bool,
        keepalive_s: float,
        on_close: Callable[[BaseException | None], None] = lambda _: None,
    ) -> None:
        self._route = route
        self._call = opened.call
        self._first = opened.first
        self._pending = opened.pending
        self._sse = sse
        self._keepalive_s = keepalive_s
        self._on_close = on_close

    def _frame(self, message: Message) -> bytes:
        doc = to_json(self._route, message)
        if self._sse:
            return b"data: " + dumps(doc) + b"\n\n"
        return dumps({"result": doc}) + b"\n"

    def _error_frame(self, error: HttpError) -> bytes:
        if self._sse:
            return b"event: error\ndata: " + error.json_bytes() + b"\n\n"
        return error.json_bytes() + b"\n"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", (SSE if self._sse else NDJSON).encode()),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),  # nginx and similar proxies would otherwise hold events back
        ]
        gone = asyncio.ensure_future(_client_gone(receive))
        error: BaseException | None = None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await self._relay(send, gone)
        except OSError:
            pass  # the client left while an event was being written: same as a disconnect
        except BaseException as exc:
            error = exc
            raise
        finally:
            gone.cancel()
            # A no-op when the stream already ended; otherwise the service sees its call cancelled.
            self._call.cancel()
            self._on_close(error)

    async def _relay(self, send: Send, gone: asyncio.Future[None]) -> None:
        if self._first is not None:
            await send({"type": "http.response.body", "body": self._frame(self._first), "more_body": True})
        keepalive = self._keepalive_s if self._sse else None
        while True:
            read: asyncio.Future[Any] = self._pending or asyncio.ensure_future(self._call.read())
            self._pending = None
            waiting: set[asyncio.Future[Any]] = {read, gone}
            while True:
                done, _ = await asyncio.wait(waiting, timeout=keepalive, return_when=asyncio.FIRST_COMPLETED)
                if gone in done:
                    read.cancel()
                    return
                if read in done:
                    break
                await send({"type": "http.response.body", "body": b": keepalive\n\n", "more_body": True})
            try:
                message = read.result()
            except grpc.aio.AioRpcError as exc:
                frame = self._error_frame(from_rpc_error(exc))
                await send({"type": "http.response.body", "body": frame, "more_body": False})
                return
            except asyncio.CancelledError:
                return  # the call was cancelled under us (shutdown)
            if message is EOF:
                break
            assert isinstance(message, Message)
            await send({"type": "http.response.body", "body": self._frame(message), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _client_gone(receive: Receive) -> None:
    """Returns when the client disconnects (servers deliver http.disconnect to receive())."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


__all__ = [
    "FIRST_MESSAGE_WAIT_S",
    "AnswerText",
    "Invoker",
    "OpenedStream",
    "StreamResponse",
    "call_unary",
    "open_stream",
    "to_json",
    "wants_sse",
]
