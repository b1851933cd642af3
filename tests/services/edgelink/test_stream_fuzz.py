"""A fuzz test of the edge stream: random valid-looking and random invalid messages (unknown enum
values, extreme integers and times, NUL characters, bytes that are no message at all) against one
real server and database. Every batch ends acked or rejected with a reason, the server never answers
INTERNAL, and another edge streaming beside the fuzzed one is unaffected."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import grpc
import pytest
from emma.common.v1 import types_pb2
from emma.edge.v1 import edge_link_pb2
from google.protobuf import timestamp_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.cloud import hosted_services
from services.errors import error_info_of
from tests.support.cloud import new_edge, platform_config
from tests.support.edge_client import CHANNELS, EdgeStream, batch, hello

CONNECT = "/emma.edge.v1.EdgeLinkService/Connect"
ACKED = {
    edge_link_pb2.TELEMETRY_ACK_RESULT_STORED,
    edge_link_pb2.TELEMETRY_ACK_RESULT_DUPLICATE,
    edge_link_pb2.TELEMETRY_ACK_RESULT_REJECTED,
}
# Bounded so the three tests run in seconds on a shared 2-core machine, with one server for all.
FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

UINT64 = st.integers(0, 2**64 - 1)
UINT32 = st.integers(0, 2**32 - 1)
INT32 = st.integers(-(2**31), 2**31 - 1)
# Text with what PostgreSQL and logs choke on: NUL characters, long runs, any code point.
TEXT = st.one_of(
    st.text(max_size=20),
    st.text(alphabet=st.sampled_from(["\x00", "a", "/", "é", "\n"]), max_size=20),
    st.integers(0, 5_000).map(lambda n: "x" * n),
)


# Fixed once: a strategy must draw the same way when hypothesis replays an example.
NOW_S = int(time.time())


@st.composite
def timestamps(draw: st.DrawFn) -> timestamp_pb2.Timestamp:
    seconds = draw(
        st.one_of(
            st.integers(NOW_S - 3_600, NOW_S + 60),  # valid (the test runs for seconds, not minutes)
            st.integers(-(2**63), 2**63 - 1),  # anything the wire can carry
            st.sampled_from([0, -62_135_596_800, 253_402_300_799, 253_402_300_800, 2**62, -(2**62)]),
        )
    )
    nanos = draw(st.one_of(st.integers(0, 999_999_999), INT32))
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


@st.composite
def events(draw: st.DrawFn) -> edge_link_pb2.EdgeEvent:
    event = edge_link_pb2.EdgeEvent(
        kind=draw(st.one_of(st.sampled_from(list(edge_link_pb2.EdgeEventKind.values())), INT32)),
        device_id=draw(TEXT),
        first_batch_seq=draw(UINT64),
        last_batch_seq=draw(UINT64),
        message=draw(TEXT),
    )
    if draw(st.booleans()):
        event.event_time.CopyFrom(draw(timestamps()))
    if draw(st.booleans()):
        event.end_time.CopyFrom(draw(timestamps()))
    return event


@st.composite
def batches(draw: st.DrawFn) -> edge_link_pb2.TelemetryBatch:
    n = draw(st.integers(0, 6))
    aligned = draw(st.booleans())

    def column(elements: st.SearchStrategy[int] | st.SearchStrategy[float]) -> list[object]:
        size = n if aligned else draw(st.integers(0, 6))
        return draw(st.lists(elements, min_size=size, max_size=size))

    return edge_link_pb2.TelemetryBatch(
        batch_seq=draw(st.one_of(st.integers(1, 50), UINT64, st.sampled_from([0, 2**63 - 1, 2**63, 2**64 - 1]))),
        base_time=draw(timestamps()),
        channel_indexes=column(st.one_of(st.integers(0, len(CHANNELS) - 1), UINT32)),  # type: ignore[arg-type]
        time_offsets_ms=column(st.one_of(st.integers(0, 60_000), UINT32)),  # type: ignore[arg-type]
        values=column(st.floats(allow_nan=True, allow_infinity=True)),  # type: ignore[arg-type]
        events=draw(st.lists(events(), max_size=3)),
    )


@st.composite
def other_messages(draw: st.DrawFn) -> edge_link_pb2.ConnectRequest:
    """Messages besides batches that must never end a stream, however odd their content."""
    kind = draw(st.sampled_from(["heartbeat", "command_ack", "schedule_ack"]))
    if kind == "heartbeat":
        hb = edge_link_pb2.Heartbeat(
            outbox_batches=draw(UINT64),
            outbox_bytes=draw(UINT64),
            cycle_overruns=draw(UINT64),
            cycle_lateness_p99_ms=draw(st.floats(allow_nan=True, allow_infinity=True)),
        )
        if draw(st.booleans()):
            hb.edge_time.CopyFrom(draw(timestamps()))
        return edge_link_pb2.ConnectRequest(heartbeat=hb)
    if kind == "command_ack":
        ack = edge_link_pb2.CommandAck(
            command=draw(st.one_of(TEXT, st.builds(lambda u: f"x/commands/{u}", st.uuids()))),
            status=draw(st.one_of(st.sampled_from(list(edge_link_pb2.CommandAckStatus.values())), INT32)),
            reason=draw(TEXT),
            message=draw(TEXT),
            applied_value=draw(st.floats(allow_nan=True, allow_infinity=True)),
            reason_code=draw(INT32),
        )
        return edge_link_pb2.ConnectRequest(command_ack=ack)
    return edge_link_pb2.ConnectRequest(
        schedule_ack=edge_link_pb2.ScheduleAck(schedule_id=draw(TEXT), accepted=draw(st.booleans()), reason=draw(TEXT))
    )


MESSAGES = st.lists(
    st.one_of(batches().map(lambda b: edge_link_pb2.ConnectRequest(telemetry_batch=b)), other_messages()),
    min_size=1,
    max_size=8,
)


@dataclass
class Cloud:
    port: int
    edge: str
    key: str
    hello_edge: str
    hello_key: str
    bystander: EdgeStream
    bystander_seq: int = 0


@pytest.fixture(scope="module")
async def cloud(migrated_url: str) -> AsyncIterator[Cloud]:
    db = await asyncpg.connect(migrated_url)
    try:
        edge, _, key = await new_edge(db, "fuzzed")
        hello_edge, _, hello_key = await new_edge(db, "fuzzed-hello")
        bystander_edge, _, bystander_key = await new_edge(db, "bystander")
    finally:
        await db.close()
    async with hosted_services(["edge"], platform_config(migrated_url)) as (server, _):
        bystander = EdgeStream(server.port)
        await bystander.send(hello(str(bystander_edge), bystander_key))
        await bystander.recv_kind("welcome")
        yield Cloud(server.port, str(edge), key, str(hello_edge), hello_key, bystander)
        await bystander.close()


async def _bystander_still_streams(cloud: Cloud) -> None:
    cloud.bystander_seq += 1
    await cloud.bystander.send(batch(cloud.bystander_seq, time.time(), [(0, 0, float(cloud.bystander_seq))]))
    ack = await cloud.bystander.recv_ack()
    assert (ack.batch_seq, ack.result) == (cloud.bystander_seq, edge_link_pb2.TELEMETRY_ACK_RESULT_STORED)


@dataclass
class Outcome:
    responses: list[edge_link_pb2.ConnectResponse]
    code: grpc.StatusCode
    reason: str


async def _exchange(port: int, messages: list[bytes]) -> Outcome:
    """Send `messages` (serialized, or any bytes), half-close, and read everything until the end.

    Nothing is written after the server may have ended the call, so the status read is the
    server's own (a write racing it makes the gRPC client report an INTERNAL of its own).
    """
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        connect = channel.stream_stream(
            CONNECT, request_serializer=lambda raw: raw, response_deserializer=edge_link_pb2.ConnectResponse.FromString
        )

        async def requests() -> AsyncIterator[bytes]:
            for message in messages:
                yield message

        call = connect(requests())
        responses: list[edge_link_pb2.ConnectResponse] = []
        failed: grpc.aio.AioRpcError | None = None
        try:
            async with asyncio.timeout(30):
                async for response in call:
                    responses.append(response)
        except grpc.aio.AioRpcError as exc:
            failed = exc
        if failed is None:
            return Outcome(responses, await call.code(), "")
        status = rpc_status.from_call(failed)  # type: ignore[arg-type]
        info = error_info_of(status) if status is not None else None
        assert info is not None, f"{failed.code()} without ErrorInfo: {failed.details()}"
        return Outcome(responses, failed.code(), info.reason)


def _assert_not_internal(outcome: Outcome) -> None:
    assert outcome.code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), outcome


@FUZZ
@given(messages=MESSAGES)
async def test_fuzzed_messages_get_every_batch_acked_and_never_internal(
    cloud: Cloud, messages: list[edge_link_pb2.ConnectRequest]
) -> None:
    first = hello(cloud.edge, cloud.key)
    closing = edge_link_pb2.ConnectRequest(heartbeat=edge_link_pb2.Heartbeat())
    outcome = await _exchange(cloud.port, [m.SerializeToString() for m in [first, *messages, closing]])
    _assert_not_internal(outcome)
    # None of these messages ends a stream: it ends because the edge closed its side, after the
    # answers to everything it sent.
    assert outcome.code == grpc.StatusCode.OK, outcome
    kinds = [r.WhichOneof("message") for r in outcome.responses]
    assert kinds[0] == "welcome"
    assert kinds.count("heartbeat_ack") == 1 + sum(m.WhichOneof("message") == "heartbeat" for m in messages)
    acks = [r.telemetry_ack for r in outcome.responses if r.WhichOneof("message") == "telemetry_ack"]
    sent = Counter(m.telemetry_batch.batch_seq for m in messages if m.WhichOneof("message") == "telemetry_batch")
    assert Counter(a.batch_seq for a in acks) == sent
    for ack in acks:
        assert ack.result in ACKED
        if ack.result == edge_link_pb2.TELEMETRY_ACK_RESULT_REJECTED:
            assert ack.reason and ack.message, ack
    await _bystander_still_streams(cloud)


@st.composite
def hellos(draw: st.DrawFn) -> edge_link_pb2.Hello:
    channel_table = [
        edge_link_pb2.ChannelDescriptor(
            index=draw(st.one_of(st.integers(0, 50), UINT32)),
            channel=draw(st.one_of(st.sampled_from([c for c, _ in CHANNELS]), TEXT)),
            unit=draw(TEXT),
        )
        for _ in range(draw(st.integers(0, 4)))
    ]
    devices = [
        edge_link_pb2.DeviceInventoryItem(
            device_id=draw(TEXT),
            kind=draw(st.one_of(st.sampled_from(list(types_pb2.DeviceKind.values())), INT32)),  # type: ignore[arg-type]
            driver=draw(TEXT),
            model=draw(TEXT),
            channels=[
                types_pb2.ChannelSpec(
                    name=draw(TEXT),
                    unit=draw(TEXT),
                    access=draw(INT32),  # type: ignore[arg-type]
                    value_type=draw(INT32),  # type: ignore[arg-type]
                    description=draw(TEXT),
                    enum_values=[types_pb2.EnumValue(number=draw(INT32), label=draw(TEXT))],
                )
                for _ in range(draw(st.integers(0, 2)))
            ],
        )
        for _ in range(draw(st.integers(0, 2)))
    ]
    message = edge_link_pb2.Hello(
        agent_version=draw(TEXT),
        protocol_version=1,
        last_batch_seq=draw(UINT64),
        channel_table=channel_table,
        devices=devices,
    )
    if draw(st.booleans()):
        message.edge_time.CopyFrom(draw(timestamps()))
    return message


@FUZZ
@given(message=hellos())
async def test_fuzzed_hellos_get_a_welcome_or_a_clear_refusal(cloud: Cloud, message: edge_link_pb2.Hello) -> None:
    message.edge, message.api_key = cloud.hello_edge, cloud.hello_key
    outcome = await _exchange(cloud.port, [edge_link_pb2.ConnectRequest(hello=message).SerializeToString()])
    _assert_not_internal(outcome)
    if outcome.code != grpc.StatusCode.OK:
        assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome
        assert outcome.reason == "FIELD_INVALID"
    else:
        assert outcome.responses[0].WhichOneof("message") == "welcome"
    await _bystander_still_streams(cloud)


@FUZZ
@given(garbage=st.binary(max_size=64), after_hello=st.booleans())
async def test_random_bytes_are_refused_or_understood_never_internal(
    cloud: Cloud, garbage: bytes, after_hello: bool
) -> None:
    messages = [hello(cloud.edge, cloud.key).SerializeToString(), garbage] if after_hello else [garbage]
    outcome = await _exchange(cloud.port, messages)
    _assert_not_internal(outcome)
    await _bystander_still_streams(cloud)


async def test_the_fuzz_helpers_see_a_refusal_and_a_normal_end(cloud: Cloud) -> None:
    """The helpers above tell outcomes apart (a check of the checker, without randomness)."""
    refused = await _exchange(cloud.port, [b"\x0a\x03\x1a\x01\xff"])
    assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID")
    seq = 1_000_000 + uuid.uuid4().int % 1_000_000
    normal = await _exchange(
        cloud.port,
        [hello(cloud.edge, cloud.key).SerializeToString(), batch(seq, time.time(), [(0, 0, 1.0)]).SerializeToString()],
    )
    assert normal.code == grpc.StatusCode.OK
    assert [r.telemetry_ack.batch_seq for r in normal.responses if r.HasField("telemetry_ack")] == [seq]
