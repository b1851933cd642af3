"""The betterproto2 client SDK (emma_sdk) against a real grpc.aio server on loopback.

The server is the platform's own (services.platform.server: PlatformInterceptor, health, reflection,
port 0) hosting test servicers written against the grpcio generated base classes. The clients are the
SDK's async stubs, which run on grpclib, and its sync stubs, which run on a grpcio channel. Nothing is
mocked: every call crosses HTTP/2 on 127.0.0.1, and every message is encoded by one library and decoded
by the other.

What the servicers saw (metadata, deadlines, cancellations, decoded requests) is recorded in
`Observed` so that the tests assert the server side too, not only what the client got back.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import pytest
import pytest_asyncio
from emma.command.v1 import command_pb2, command_pb2_grpc
from emma.common.v1 import errors_pb2
from emma.edge.v1 import edge_link_pb2, edge_link_pb2_grpc
from emma_sdk.emma.command.v1 import (
    Command,
    CommandServiceStub,
    CommandServiceSyncStub,
    CommandState,
    CommandTransition,
    GetCommandRequest,
    WatchCommandRequest,
    WatchCommandResponse,
)
from emma_sdk.emma.common.v1 import ChannelSpec, DeviceKind
from emma_sdk.emma.edge.v1 import (
    ChannelDescriptor,
    CommandAck,
    CommandAckStatus,
    ConnectRequest,
    ConnectResponse,
    DeviceInventoryItem,
    EdgeLinkServiceStub,
    EdgeLinkServiceSyncStub,
    Heartbeat,
    Hello,
    TelemetryAckResult,
    TelemetryBatch,
)
from google.protobuf import message as pb_message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.encoding.proto import ProtoStatusDetailsCodec
from grpclib.exceptions import GRPCError

from services.errors import ERROR_DOMAIN, ApiError, invalid_field
from services.platform.config import ServerConfig
from services.platform.server import HostedServer, create_server, start_server

T = TypeVar("T")
UTC = dt.UTC
EDGE = "organizations/o1/sites/s1/edges/e1"
COMMANDS = f"{EDGE}/commands"
COMMAND_SERVICE = command_pb2.DESCRIPTOR.services_by_name["CommandService"].full_name
EDGE_LINK_SERVICE = edge_link_pb2.DESCRIPTOR.services_by_name["EdgeLinkService"].full_name

ISSUED = dt.datetime(2025, 3, 30, 0, 59, 59, 123456, tzinfo=UTC)  # around a DST switch; microseconds
CREATED = dt.datetime(2025, 3, 30, 1, 0, 0, 500000, tzinfo=UTC)
EXECUTED = dt.datetime(2025, 3, 30, 1, 0, 2, tzinfo=UTC)
SERVER_NOW = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
# Edge deadlines and cancellations are observed within this many seconds or the test fails.
OBSERVE_TIMEOUT_S = 5.0


# --------------------------------------------------------------------------------------------------
# Server side: servicers on the grpcio generated base classes, and what they observed
# --------------------------------------------------------------------------------------------------


@dataclass
class Observed:
    """What the servicers saw, keyed by command name (or edge name for Connect)."""

    metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    time_remaining: dict[str, float | None] = field(default_factory=dict)
    started: defaultdict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))
    # The handler itself was interrupted (CancelledError or GeneratorExit at its await/yield point).
    interrupted: defaultdict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))
    # context.add_done_callback fired; the value is context.done() at that moment, which is True only
    # when the server sent a status. (grpc.aio's server-side context.cancelled() stays False even for
    # RPCs the client cancelled or whose deadline expired, in grpcio 1.85, so it cannot be used here.)
    done: defaultdict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))
    status_sent: dict[str, bool] = field(default_factory=dict)
    messages_sent: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    edge_requests: defaultdict[str, list[edge_link_pb2.ConnectRequest]] = field(
        default_factory=lambda: defaultdict(list)
    )

    def watch_done(self, key: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        def callback(ctx: Any) -> None:
            self.status_sent[key] = ctx.done()
            self.done[key].set()

        context.add_done_callback(callback)


def _ts(value: dt.datetime) -> dict[str, int]:
    delta = value - dt.datetime(1970, 1, 1, tzinfo=UTC)
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    seconds, micro = divmod(micros, 1_000_000)
    return {"seconds": seconds, "nanos": micro * 1000}


def stored_command(name: str, state: int = command_pb2.COMMAND_STATE_EXECUTED) -> command_pb2.Command:
    """The server's view of a command, built with protobuf only."""
    return command_pb2.Command(
        name=name,
        channel="battery_1/SetActivePower",
        value=-2500.5,
        issued_time=_ts(ISSUED),
        ttl={"seconds": 300},
        expire_time=_ts(CREATED + dt.timedelta(seconds=300)),
        state=state,  # type: ignore[arg-type]
        applied_value=-2500.0,
        create_time=_ts(CREATED),
        update_time=_ts(EXECUTED),
        creator="users/u-42",
        transitions=[
            command_pb2.CommandTransition(
                from_state=command_pb2.COMMAND_STATE_UNSPECIFIED,
                to_state=command_pb2.COMMAND_STATE_QUEUED,
                transition_time=_ts(CREATED),
            ),
            command_pb2.CommandTransition(
                from_state=command_pb2.COMMAND_STATE_RECEIVED,
                to_state=command_pb2.COMMAND_STATE_EXECUTED,
                transition_time=_ts(EXECUTED),
                message="applied",
            ),
        ],
    )


def sent_command(name: str) -> command_pb2.Command:
    """What the server sends of stored_command: its INPUT_ONLY ttl never leaves the server
    (services/platform/interceptors.py, AIP-203)."""
    sent = stored_command(name)
    sent.ClearField("ttl")
    return sent


def expected_sdk_command(name: str) -> Command:
    """The command the client receives (sent_command), built independently with the SDK dataclasses."""
    return Command(
        name=name,
        channel="battery_1/SetActivePower",
        value=-2500.5,
        issued_time=ISSUED,
        expire_time=CREATED + dt.timedelta(seconds=300),
        state=CommandState.EXECUTED,
        applied_value=-2500.0,
        create_time=CREATED,
        update_time=EXECUTED,
        creator="users/u-42",
        transitions=[
            CommandTransition(
                from_state=CommandState.UNSPECIFIED, to_state=CommandState.QUEUED, transition_time=CREATED
            ),
            CommandTransition(
                from_state=CommandState.RECEIVED,
                to_state=CommandState.EXECUTED,
                transition_time=EXECUTED,
                message="applied",
            ),
        ],
    )


WATCH_STEPS = [
    (command_pb2.COMMAND_STATE_QUEUED, command_pb2.COMMAND_STATE_DELIVERED),
    (command_pb2.COMMAND_STATE_DELIVERED, command_pb2.COMMAND_STATE_RECEIVED),
    (command_pb2.COMMAND_STATE_RECEIVED, command_pb2.COMMAND_STATE_EXECUTED),
]


class CommandServicer(command_pb2_grpc.CommandServiceServicer):
    """GetCommand and WatchCommand; the last segment of the name selects the behaviour."""

    def __init__(self, observed: Observed) -> None:
        self.observed = observed

    async def GetCommand(
        self, request: command_pb2.GetCommandRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> command_pb2.Command:
        name = request.name
        self.observed.metadata[name] = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        if not name:
            raise invalid_field("name", "is required")
        command_id = name.rsplit("/", 1)[-1]
        if command_id == "missing":
            raise ApiError(
                grpc.StatusCode.NOT_FOUND,
                errors_pb2.ERROR_REASON_RESOURCE_NOT_FOUND,
                f"{name} not found",
                metadata={"resource": name, "kind": "Command"},
            )
        if command_id == "boom":
            raise RuntimeError("database password is hunter2")  # must not leak to the client
        if command_id.startswith("slow"):
            self.observed.time_remaining[name] = context.time_remaining()
            self.observed.watch_done(name, context)
            self.observed.started[name].set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.observed.interrupted[name].set()
                raise
        return stored_command(name)

    async def WatchCommand(
        self, request: command_pb2.WatchCommandRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[command_pb2.WatchCommandResponse]:
        name = request.name
        command_id = name.rsplit("/", 1)[-1]
        if command_id == "missing":
            raise ApiError(
                grpc.StatusCode.NOT_FOUND,
                errors_pb2.ERROR_REASON_RESOURCE_NOT_FOUND,
                f"{name} not found",
                metadata={"resource": name},
            )
        self.observed.watch_done(name, context)
        self.observed.started[name].set()
        yield command_pb2.WatchCommandResponse(command=stored_command(name, state=command_pb2.COMMAND_STATE_QUEUED))
        self.observed.messages_sent[name] += 1
        if command_id == "failing":
            raise ApiError(
                grpc.StatusCode.UNAVAILABLE,
                errors_pb2.ERROR_REASON_DATABASE_UNAVAILABLE,
                "lost the database mid-stream",
                metadata={"after_messages": "1"},
            )
        if command_id.startswith("endless"):
            try:
                for tick in itertools.count(1):
                    await asyncio.sleep(0.005)
                    yield command_pb2.WatchCommandResponse(
                        transition=command_pb2.CommandTransition(
                            from_state=command_pb2.COMMAND_STATE_QUEUED,
                            to_state=command_pb2.COMMAND_STATE_QUEUED,
                            message=f"tick {tick}",
                        )
                    )
                    self.observed.messages_sent[name] += 1
            except (asyncio.CancelledError, GeneratorExit):
                self.observed.interrupted[name].set()
                raise
        state = stored_command(name, state=command_pb2.COMMAND_STATE_QUEUED)
        for from_state, to_state in WATCH_STEPS:
            state.state = to_state
            transition = command_pb2.CommandTransition(
                from_state=from_state, to_state=to_state, transition_time=_ts(EXECUTED)
            )
            yield command_pb2.WatchCommandResponse(command=state, transition=transition)
            self.observed.messages_sent[name] += 1


class EdgeLinkServicer(edge_link_pb2_grpc.EdgeLinkServiceServicer):
    """Connect: Hello -> Welcome, TelemetryBatch -> TelemetryAck, Heartbeat -> HeartbeatAck."""

    def __init__(self, observed: Observed) -> None:
        self.observed = observed
        self._sessions = itertools.count(1)

    async def Connect(
        self,
        request_iterator: AsyncIterator[edge_link_pb2.ConnectRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[edge_link_pb2.ConnectResponse]:
        hello: edge_link_pb2.Hello | None = None
        async for request in request_iterator:
            kind = request.WhichOneof("message")
            self.observed.edge_requests[hello.edge if hello else request.hello.edge].append(request)
            if kind == "hello":
                hello = request.hello
                yield edge_link_pb2.ConnectResponse(
                    welcome=edge_link_pb2.Welcome(
                        session_id=f"session-{next(self._sessions)}",
                        server_time=_ts(SERVER_NOW),
                        last_stored_batch_seq=hello.last_batch_seq,
                        heartbeat_interval={"seconds": 15},
                        max_batch_points=10_000,
                        max_unacked_batches=8,
                    )
                )
            elif hello is None:
                raise ApiError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    errors_pb2.ERROR_REASON_HELLO_REQUIRED,
                    "the first message of the stream must be a Hello",
                    metadata={"received": kind or ""},
                )
            elif kind == "telemetry_batch":
                batch = request.telemetry_batch
                lengths = {len(batch.channel_indexes), len(batch.time_offsets_ms), len(batch.values)}
                if len(lengths) != 1:
                    ack = edge_link_pb2.TelemetryAck(
                        batch_seq=batch.batch_seq,
                        result=edge_link_pb2.TELEMETRY_ACK_RESULT_REJECTED,
                        reason="BATCH_LENGTH_MISMATCH",
                        message=f"column lengths differ: {sorted(lengths)}",
                    )
                else:
                    ack = edge_link_pb2.TelemetryAck(
                        batch_seq=batch.batch_seq,
                        result=edge_link_pb2.TELEMETRY_ACK_RESULT_STORED,
                        message=f"{len(batch.values)} points, sum {sum(batch.values)!r}",
                    )
                yield edge_link_pb2.ConnectResponse(telemetry_ack=ack)
            elif kind == "heartbeat":
                yield edge_link_pb2.ConnectResponse(
                    heartbeat_ack=edge_link_pb2.HeartbeatAck(
                        edge_time=request.heartbeat.edge_time, server_time=_ts(SERVER_NOW)
                    )
                )
            # command_ack and the rest: recorded, no answer.


# --------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------


@dataclass
class Loopback:
    hosted: HostedServer
    observed: Observed

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.hosted.port}"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def loopback() -> AsyncIterator[Loopback]:
    observed = Observed()
    config = ServerConfig(port=0)
    server = create_server(config)
    command_pb2_grpc.add_CommandServiceServicer_to_server(CommandServicer(observed), server)
    edge_link_pb2_grpc.add_EdgeLinkServiceServicer_to_server(EdgeLinkServicer(observed), server)
    hosted = await start_server(server, config, [COMMAND_SERVICE, EDGE_LINK_SERVICE])
    assert hosted.port > 0
    yield Loopback(hosted=hosted, observed=observed)
    await hosted.drain(0)


@pytest_asyncio.fixture(loop_scope="session")
async def channel(loopback: Loopback) -> AsyncIterator[Channel]:
    """A grpclib channel that decodes google.rpc.Status details into protobuf messages."""
    chan = Channel("127.0.0.1", loopback.hosted.port, status_details_codec=ProtoStatusDetailsCodec())
    yield chan
    chan.close()


async def collect(stream: AsyncIterator[T], into: list[T]) -> None:
    """Drain a response stream into `into`, so that what arrived before an error can be asserted."""
    async for item in stream:
        into.append(item)


def error_details(err: GRPCError) -> tuple[error_details_pb2.ErrorInfo, list[pb_message.Message]]:
    """The single ErrorInfo among a grpclib error's decoded details, and all details."""
    details = list(err.details or [])
    infos = [d for d in details if isinstance(d, error_details_pb2.ErrorInfo)]
    assert len(infos) == 1, details
    return infos[0], details


# --------------------------------------------------------------------------------------------------
# Async SDK stubs (grpclib)
# --------------------------------------------------------------------------------------------------


async def test_unary_returns_the_servers_message_field_by_field(loopback: Loopback, channel: Channel) -> None:
    stub = CommandServiceStub(channel)
    name = f"{COMMANDS}/c-unary"

    got = await stub.get_command(GetCommandRequest(name=name), metadata={"x-request-id": "req-123"})

    assert isinstance(got, Command)
    assert got == expected_sdk_command(name)
    # Timestamps arrive as aware UTC datetimes and enums as SDK enum members (Durations: see the Welcome).
    assert got.issued_time is not None
    assert got.issued_time.tzinfo is not None
    assert got.issued_time.utcoffset() == dt.timedelta(0)
    assert got.ttl is None  # INPUT_ONLY: set by the servicer, cleared on the way out
    assert got.state is CommandState.EXECUTED
    # The SDK message re-encodes to exactly what the server sent.
    assert bytes(got) == sent_command(name).SerializeToString(deterministic=True)
    # Call metadata reached the servicer.
    assert loopback.observed.metadata[name]["x-request-id"] == "req-123"


async def test_unary_calls_multiplex_on_one_channel(channel: Channel) -> None:
    stub = CommandServiceStub(channel)
    names = [f"{COMMANDS}/c-many-{i}" for i in range(25)]

    results = await asyncio.gather(*(stub.get_command(GetCommandRequest(name=n)) for n in names))

    assert [r.name for r in results] == names
    assert all(r == expected_sdk_command(r.name) for r in results)


async def test_server_streaming_delivers_every_message_in_order_then_ends(loopback: Loopback, channel: Channel) -> None:
    stub = CommandServiceStub(channel)
    name = f"{COMMANDS}/c-watch"

    responses = [r async for r in stub.watch_command(WatchCommandRequest(name=name), timeout=10)]

    assert all(isinstance(r, WatchCommandResponse) for r in responses)
    assert len(responses) == 1 + len(WATCH_STEPS)
    first, *changes = responses
    assert first.transition is None  # unset message field stays None, not an empty message
    assert first.command is not None
    assert first.command.state is CommandState.QUEUED
    assert [(c.transition.from_state, c.transition.to_state) for c in changes if c.transition] == [
        (CommandState.QUEUED, CommandState.DELIVERED),
        (CommandState.DELIVERED, CommandState.RECEIVED),
        (CommandState.RECEIVED, CommandState.EXECUTED),
    ]
    assert [c.command.state for c in changes if c.command] == [
        CommandState.DELIVERED,
        CommandState.RECEIVED,
        CommandState.EXECUTED,
    ]
    assert all(c.transition and c.transition.transition_time == EXECUTED for c in changes)
    # The stream ended normally on the server: the handler finished and the server sent its OK status.
    await asyncio.wait_for(loopback.observed.done[name].wait(), OBSERVE_TIMEOUT_S)
    assert loopback.observed.status_sent[name] is True
    assert loopback.observed.messages_sent[name] == len(responses)


async def _requests_from(queue: asyncio.Queue[ConnectRequest | None]) -> AsyncIterator[ConnectRequest]:
    while (request := await queue.get()) is not None:
        yield request


async def test_bidi_stream_answers_each_request_interactively(loopback: Loopback, channel: Channel) -> None:
    stub = EdgeLinkServiceStub(channel)
    edge = f"{EDGE}-bidi"
    queue: asyncio.Queue[ConnectRequest | None] = asyncio.Queue()
    responses = stub.connect(_requests_from(queue), timeout=10)
    edge_time = dt.datetime(2026, 1, 2, 3, 4, 0, 250000, tzinfo=UTC)

    hello = Hello(
        edge=edge,
        api_key="ek_secret",
        agent_version="1.2.3",
        protocol_version=1,
        edge_time=edge_time,
        devices=[
            DeviceInventoryItem(
                device_id="battery_1",
                kind=DeviceKind.BATTERY,
                driver="sim",
                channels=[ChannelSpec(name="Soc", unit="%", min_value=0.0, max_value=100.0)],
            )
        ],
        channel_table=[ChannelDescriptor(index=0, channel="battery_1/Soc", unit="%")],
        last_batch_seq=2**64 - 2,
    )
    await queue.put(ConnectRequest(hello=hello))
    welcome_msg = await anext(responses)
    assert isinstance(welcome_msg, ConnectResponse)
    assert welcome_msg.welcome is not None
    assert welcome_msg.telemetry_ack is None  # the other oneof members stay unset
    welcome = welcome_msg.welcome
    assert welcome.session_id.startswith("session-")
    assert welcome.last_stored_batch_seq == 2**64 - 2  # uint64 near the top survives both codecs
    assert welcome.heartbeat_interval == dt.timedelta(seconds=15)
    assert welcome.server_time == SERVER_NOW
    assert (welcome.max_batch_points, welcome.max_unacked_batches) == (10_000, 8)

    batch = TelemetryBatch(
        batch_seq=2**64 - 1,
        base_time=edge_time,
        channel_indexes=[0, 0, 0, 4_294_967_295],
        time_offsets_ms=[0, 1000, 2000, 2500],
        values=[50.5, -0.25, 1e300, 7.0],
    )
    await queue.put(ConnectRequest(telemetry_batch=batch))
    ack = (await anext(responses)).telemetry_ack
    assert ack is not None
    assert ack.batch_seq == 2**64 - 1
    assert ack.result is TelemetryAckResult.STORED
    assert ack.message == f"4 points, sum {sum([50.5, -0.25, 1e300, 7.0])!r}"

    await queue.put(ConnectRequest(telemetry_batch=TelemetryBatch(batch_seq=7, channel_indexes=[0, 0], values=[1.0])))
    rejected = (await anext(responses)).telemetry_ack
    assert rejected is not None
    assert (rejected.batch_seq, rejected.result, rejected.reason) == (
        7,
        TelemetryAckResult.REJECTED,
        "BATCH_LENGTH_MISMATCH",
    )

    # A request without an answer, then one with: the stream stays in step.
    await queue.put(ConnectRequest(command_ack=CommandAck(command=f"{COMMANDS}/c1", status=CommandAckStatus.EXECUTED)))
    await queue.put(ConnectRequest(heartbeat=Heartbeat(edge_time=edge_time, outbox_batches=3)))
    heartbeat_ack = (await anext(responses)).heartbeat_ack
    assert heartbeat_ack is not None
    assert heartbeat_ack.edge_time == edge_time
    assert heartbeat_ack.server_time == SERVER_NOW

    # Closing the request side ends the call cleanly.
    await queue.put(None)
    with pytest.raises(StopAsyncIteration):
        await anext(responses)

    # What the grpcio server decoded is exactly what protobuf would have built from the same values.
    received = loopback.observed.edge_requests[edge]
    expected_hello = edge_link_pb2.ConnectRequest(
        hello=edge_link_pb2.Hello(
            edge=edge,
            api_key="ek_secret",
            agent_version="1.2.3",
            protocol_version=1,
            edge_time=_ts(edge_time),
            devices=[
                edge_link_pb2.DeviceInventoryItem(
                    device_id="battery_1",
                    kind=1,  # type: ignore[arg-type]
                    driver="sim",
                    channels=[{"name": "Soc", "unit": "%", "min_value": 0.0, "max_value": 100.0}],
                )
            ],
            channel_table=[edge_link_pb2.ChannelDescriptor(index=0, channel="battery_1/Soc", unit="%")],
            last_batch_seq=2**64 - 2,
        )
    )
    assert received[0] == expected_hello
    assert received[0].hello.devices[0].channels[0].HasField("min_value")  # explicit 0.0 kept presence
    assert received[1].telemetry_batch == edge_link_pb2.TelemetryBatch(
        batch_seq=2**64 - 1,
        base_time=_ts(edge_time),
        channel_indexes=[0, 0, 0, 4_294_967_295],
        time_offsets_ms=[0, 1000, 2000, 2500],
        values=[50.5, -0.25, 1e300, 7.0],
    )
    assert [r.WhichOneof("message") for r in received] == [
        "hello",
        "telemetry_batch",
        "telemetry_batch",
        "command_ack",
        "heartbeat",
    ]


async def test_bidi_error_carries_error_info(loopback: Loopback, channel: Channel) -> None:
    stub = EdgeLinkServiceStub(channel)

    received: list[ConnectResponse] = []
    requests = [ConnectRequest(heartbeat=Heartbeat(outbox_batches=1))]

    with pytest.raises(GRPCError) as caught:
        await collect(stub.connect(requests, timeout=10), received)

    assert received == []  # nothing arrives before the Hello
    err = caught.value
    assert err.status is Status.FAILED_PRECONDITION
    assert err.message == "the first message of the stream must be a Hello"
    info, _ = error_details(err)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "HELLO_REQUIRED",
        ERROR_DOMAIN,
        {"received": "heartbeat"},
    )


async def test_deadline_expires_on_the_client_and_the_server_sees_it(loopback: Loopback, channel: Channel) -> None:
    stub = CommandServiceStub(channel)
    name = f"{COMMANDS}/slow-deadline"
    timeout_s = 0.3
    started = time.monotonic()

    # grpclib enforces the deadline itself: whichever comes first, its local timer (asyncio.TimeoutError,
    # grpclib's documented way to report DEADLINE_EXCEEDED) or the server's DEADLINE_EXCEEDED status.
    with pytest.raises((asyncio.TimeoutError, GRPCError)) as caught:
        await stub.get_command(GetCommandRequest(name=name), timeout=timeout_s)
    elapsed = time.monotonic() - started

    if isinstance(caught.value, GRPCError):
        assert caught.value.status is Status.DEADLINE_EXCEEDED
    assert timeout_s * 0.9 <= elapsed < timeout_s + 2.0
    # The deadline travelled in the grpc-timeout header: the handler saw at most the client's budget.
    remaining = loopback.observed.time_remaining[name]
    assert remaining is not None
    assert 0 < remaining <= timeout_s
    # And the server gave up on the handler: it was cancelled, and the RPC ended without a status sent.
    await asyncio.wait_for(loopback.observed.interrupted[name].wait(), OBSERVE_TIMEOUT_S)
    await asyncio.wait_for(loopback.observed.done[name].wait(), OBSERVE_TIMEOUT_S)
    assert loopback.observed.status_sent[name] is False


async def test_client_cancelling_a_server_stream_cancels_the_handler(loopback: Loopback, channel: Channel) -> None:
    stub = CommandServiceStub(channel)
    name = f"{COMMANDS}/endless-cancel"
    received: list[WatchCommandResponse] = []
    three = asyncio.Event()

    async def consume() -> None:
        async for response in stub.watch_command(WatchCommandRequest(name=name)):
            received.append(response)
            if len(received) >= 3:
                three.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(three.wait(), OBSERVE_TIMEOUT_S)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await asyncio.wait_for(loopback.observed.interrupted[name].wait(), OBSERVE_TIMEOUT_S)
    await asyncio.wait_for(loopback.observed.done[name].wait(), OBSERVE_TIMEOUT_S)
    assert loopback.observed.status_sent[name] is False
    assert received[0].command is not None
    assert [r.transition.message for r in received[1:3] if r.transition] == ["tick 1", "tick 2"]
    # The handler stopped producing: nothing more is sent after the cancellation was observed.
    sent = loopback.observed.messages_sent[name]
    await asyncio.sleep(0.05)
    assert loopback.observed.messages_sent[name] == sent


async def test_client_abandoning_a_server_stream_cancels_the_handler(loopback: Loopback, channel: Channel) -> None:
    stub = CommandServiceStub(channel)
    name = f"{COMMANDS}/endless-abandon"

    stream = stub.watch_command(WatchCommandRequest(name=name))
    got = [await anext(stream), await anext(stream)]
    await stream.aclose()  # the caller stops listening; grpclib resets the HTTP/2 stream

    assert got[0].command is not None
    await asyncio.wait_for(loopback.observed.done[name].wait(), OBSERVE_TIMEOUT_S)
    assert loopback.observed.status_sent[name] is False
    await asyncio.wait_for(loopback.observed.interrupted[name].wait(), OBSERVE_TIMEOUT_S)


async def test_unary_error_carries_error_info(channel: Channel) -> None:
    stub = CommandServiceStub(channel)
    name = f"{COMMANDS}/missing"

    with pytest.raises(GRPCError) as caught:
        await stub.get_command(GetCommandRequest(name=name))

    err = caught.value
    assert err.status is Status.NOT_FOUND
    assert err.message == f"{name} not found"
    info, details = error_details(err)
    assert info.reason == "RESOURCE_NOT_FOUND"
    assert info.domain == "emma.energy"
    assert dict(info.metadata) == {"resource": name, "kind": "Command"}
    assert len(details) == 1


async def test_field_violation_carries_error_info_and_bad_request(channel: Channel) -> None:
    stub = CommandServiceStub(channel)

    with pytest.raises(GRPCError) as caught:
        await stub.get_command(GetCommandRequest(name=""))

    err = caught.value
    assert err.status is Status.INVALID_ARGUMENT
    info, details = error_details(err)
    assert (info.reason, info.domain) == ("FIELD_INVALID", ERROR_DOMAIN)
    assert dict(info.metadata) == {"field": "name"}
    bad = [d for d in details if isinstance(d, error_details_pb2.BadRequest)]
    assert len(bad) == 1
    assert [(v.field, v.description) for v in bad[0].field_violations] == [("name", "is required")]


async def test_unexpected_exception_is_internal_without_leaking(channel: Channel) -> None:
    stub = CommandServiceStub(channel)

    with pytest.raises(GRPCError) as caught:
        await stub.get_command(GetCommandRequest(name=f"{COMMANDS}/boom"))

    err = caught.value
    assert err.status is Status.INTERNAL
    assert "hunter2" not in (err.message or "")
    info, _ = error_details(err)
    assert (info.reason, info.domain) == ("UNSPECIFIED", ERROR_DOMAIN)


async def test_server_stream_error_before_first_message_carries_error_info(channel: Channel) -> None:
    stub = CommandServiceStub(channel)
    name = f"{COMMANDS}/missing"

    received: list[WatchCommandResponse] = []

    with pytest.raises(GRPCError) as caught:
        await collect(stub.watch_command(WatchCommandRequest(name=name)), received)

    assert received == []
    assert caught.value.status is Status.NOT_FOUND
    info, _ = error_details(caught.value)
    assert (info.reason, dict(info.metadata)) == ("RESOURCE_NOT_FOUND", {"resource": name})


async def test_server_stream_error_after_a_message_carries_error_info(channel: Channel) -> None:
    stub = CommandServiceStub(channel)
    received: list[WatchCommandResponse] = []

    with pytest.raises(GRPCError) as caught:
        await collect(stub.watch_command(WatchCommandRequest(name=f"{COMMANDS}/failing")), received)

    assert len(received) == 1
    assert received[0].command is not None
    err = caught.value
    assert err.status is Status.UNAVAILABLE
    assert err.message == "lost the database mid-stream"
    info, _ = error_details(err)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "DATABASE_UNAVAILABLE",
        ERROR_DOMAIN,
        {"after_messages": "1"},
    )


# --------------------------------------------------------------------------------------------------
# Sync SDK stubs (grpcio channel), run in a worker thread because the server runs on this loop
# --------------------------------------------------------------------------------------------------


async def test_sync_stub_unary(loopback: Loopback) -> None:
    name = f"{COMMANDS}/c-sync"

    def call() -> Command:
        with grpc.insecure_channel(loopback.target) as chan:
            return CommandServiceSyncStub(chan).get_command(GetCommandRequest(name=name))

    got = await asyncio.to_thread(call)

    assert isinstance(got, Command)
    assert got == expected_sdk_command(name)
    assert bytes(got) == sent_command(name).SerializeToString(deterministic=True)


async def test_sync_stub_error_carries_error_info(loopback: Loopback) -> None:
    name = f"{COMMANDS}/missing"

    def call() -> tuple[grpc.StatusCode, str, status_pb2.Status | None]:
        with grpc.insecure_channel(loopback.target) as chan:
            try:
                CommandServiceSyncStub(chan).get_command(GetCommandRequest(name=name))
            except grpc.RpcError as err:
                call_err: Any = err  # a grpc.Call as well
                return call_err.code(), call_err.details(), rpc_status.from_call(call_err)
        raise AssertionError("the call must fail")

    code, message, status = await asyncio.to_thread(call)

    assert code is grpc.StatusCode.NOT_FOUND
    assert message == f"{name} not found"
    assert status is not None
    assert status.code == code_pb2.NOT_FOUND
    assert status.message == message
    infos = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            infos.append(info)
    assert len(infos) == 1
    assert (infos[0].reason, infos[0].domain, dict(infos[0].metadata)) == (
        "RESOURCE_NOT_FOUND",
        "emma.energy",
        {"resource": name, "kind": "Command"},
    )


async def test_sync_stub_server_streaming(loopback: Loopback) -> None:
    name = f"{COMMANDS}/c-sync-watch"

    def call() -> list[WatchCommandResponse]:
        with grpc.insecure_channel(loopback.target) as chan:
            return list(CommandServiceSyncStub(chan).watch_command(WatchCommandRequest(name=name)))

    responses = await asyncio.to_thread(call)

    assert len(responses) == 1 + len(WATCH_STEPS)
    assert [r.command.state for r in responses if r.command] == [
        CommandState.QUEUED,
        CommandState.DELIVERED,
        CommandState.RECEIVED,
        CommandState.EXECUTED,
    ]


async def test_sync_stub_bidi(loopback: Loopback) -> None:
    edge = f"{EDGE}-sync-bidi"
    requests = [
        ConnectRequest(hello=Hello(edge=edge, protocol_version=1, last_batch_seq=41)),
        ConnectRequest(
            telemetry_batch=TelemetryBatch(
                batch_seq=42, channel_indexes=[0, 1], time_offsets_ms=[0, 0], values=[1.5, -2.5]
            )
        ),
    ]

    def call() -> list[ConnectResponse]:
        with grpc.insecure_channel(loopback.target) as chan:
            return list(EdgeLinkServiceSyncStub(chan).connect(iter(requests)))

    welcome, ack = await asyncio.to_thread(call)

    assert welcome.welcome is not None
    assert welcome.welcome.last_stored_batch_seq == 41
    assert ack.telemetry_ack is not None
    assert (ack.telemetry_ack.batch_seq, ack.telemetry_ack.result) == (42, TelemetryAckResult.STORED)
    assert [r.WhichOneof("message") for r in loopback.observed.edge_requests[edge]] == [
        "hello",
        "telemetry_batch",
    ]
