"""A minimal edge for cloud tests: speaks EdgeLink on a raw grpc.aio stream, nothing else.

The real daemon (edge_daemon/) is tested against the real cloud elsewhere; this client lets the
cloud's own tests send exactly the messages they need, malformed ones included.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

import grpc
from emma.common.v1 import types_pb2
from emma.edge.v1 import edge_link_pb2, edge_link_pb2_grpc
from google.protobuf import timestamp_pb2

CHANNELS = [("battery_1/Soc", "%"), ("battery_1/ActivePower", "W"), ("meter/GridPower", "W")]


def ts(seconds: float) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromNanoseconds(int(seconds * 1e9))
    return out


def battery_inventory(device_id: str = "battery_1") -> edge_link_pb2.DeviceInventoryItem:
    """A battery as the edge daemon declares it: SetActivePower in W, discharge > 0, dynamic limits."""
    rw, ro = types_pb2.CHANNEL_ACCESS_READ_WRITE, types_pb2.CHANNEL_ACCESS_READ_ONLY
    return edge_link_pb2.DeviceInventoryItem(
        device_id=device_id,
        kind=types_pb2.DEVICE_KIND_BATTERY,
        driver="test",
        channels=[
            types_pb2.ChannelSpec(name="Soc", unit="%", access=ro, min_value=0, max_value=100),
            types_pb2.ChannelSpec(name="MaxChargePower", unit="W", access=ro),
            types_pb2.ChannelSpec(name="MaxDischargePower", unit="W", access=ro),
            types_pb2.ChannelSpec(
                name="SetActivePower",
                unit="W",
                access=rw,
                min_value=-5000,
                max_value=5000,
                dynamic_max_channel="MaxDischargePower",
                dynamic_min_channel="MaxChargePower",
            ),
            types_pb2.ChannelSpec(
                name="SetMode",
                unit="",
                access=rw,
                value_type=types_pb2.VALUE_TYPE_ENUM,
                enum_values=[
                    types_pb2.EnumValue(number=0, label="AUTO"),
                    types_pb2.EnumValue(number=1, label="MANUAL"),
                ],
            ),
        ],
    )


def hello(
    edge: str,
    key: str,
    channels: Sequence[tuple[str, str]] = CHANNELS,
    clock_offset_s: float = 0.0,
    devices: Sequence[edge_link_pb2.DeviceInventoryItem] = (),
) -> edge_link_pb2.ConnectRequest:
    return edge_link_pb2.ConnectRequest(
        hello=edge_link_pb2.Hello(
            edge=edge,
            api_key=key,
            agent_version="test",
            protocol_version=1,
            edge_time=ts(time.time() + clock_offset_s),
            channel_table=[
                edge_link_pb2.ChannelDescriptor(index=i, channel=c, unit=u) for i, (c, u) in enumerate(channels)
            ],
            devices=devices,
        )
    )


def batch(seq: int, base: float, points: Sequence[tuple[int, int, float]]) -> edge_link_pb2.ConnectRequest:
    """points: (channel index, offset ms, value)."""
    return edge_link_pb2.ConnectRequest(
        telemetry_batch=edge_link_pb2.TelemetryBatch(
            batch_seq=seq,
            base_time=ts(base),
            channel_indexes=[p[0] for p in points],
            time_offsets_ms=[p[1] for p in points],
            values=[p[2] for p in points],
        )
    )


class EdgeStream:
    """One open Connect stream: send requests, receive responses, with timeouts."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self._out: asyncio.Queue[edge_link_pb2.ConnectRequest | None] = asyncio.Queue()
        self.call = edge_link_pb2_grpc.EdgeLinkServiceStub(self.channel).Connect(self._requests())

    async def _requests(self) -> AsyncIterator[edge_link_pb2.ConnectRequest]:
        while (item := await self._out.get()) is not None:
            yield item

    async def send(self, request: edge_link_pb2.ConnectRequest) -> None:
        await self._out.put(request)

    async def recv(self, timeout: float = 10) -> edge_link_pb2.ConnectResponse:
        response = await asyncio.wait_for(self.call.read(), timeout)
        assert response is not grpc.aio.EOF, "stream ended"
        return response  # type: ignore[return-value]

    async def recv_kind(self, kind: str, timeout: float = 10) -> edge_link_pb2.ConnectResponse:
        """The next response of this kind, skipping others (acks, heartbeat answers)."""
        while True:
            response = await self.recv(timeout)
            if response.WhichOneof("message") == kind:
                return response

    async def recv_ack(self, timeout: float = 10) -> edge_link_pb2.TelemetryAck:
        while True:
            response = await self.recv(timeout)
            if response.WhichOneof("message") == "telemetry_ack":
                return response.telemetry_ack

    async def close(self) -> None:
        await self._out.put(None)
        self.call.cancel()
        await self.channel.close()


async def welcomed(
    port: int,
    edge: str,
    key: str,
    channels: Sequence[tuple[str, str]] = CHANNELS,
    devices: Sequence[edge_link_pb2.DeviceInventoryItem] = (),
) -> EdgeStream:
    """A stream of `edge` that said Hello (with `channels` and `devices`) and was welcomed."""
    stream = EdgeStream(port)
    await stream.send(hello(edge, key, channels, devices=devices))
    await stream.recv_kind("welcome")
    return stream
