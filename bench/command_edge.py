"""One simulated edge for the command benchmark, as its own process: `python -m bench.command_edge`.

It says Hello with a battery (the edge daemon's own simulated battery, declared as the daemon
declares it), reports the battery's dynamic limits every second (so the cloud's validation finds
fresh telemetry), and answers every EdgeCommand at once with RECEIVED and EXECUTED: the round trip
measured is the cloud's and the wire's, not a control cycle's.
"""

from __future__ import annotations

import argparse
import asyncio

import grpc
from emma.edge.v1 import edge_link_pb2, edge_link_pb2_grpc
from google.protobuf import timestamp_pb2

from edge_daemon.devices.battery import BatteryParams, SimBattery
from edge_daemon.uplink.wire import device_inventory

CHANNELS = [("battery_1/MaxDischargePower", "W"), ("battery_1/MaxChargePower", "W")]
BATTERY = SimBattery("battery_1", BatteryParams(capacity_wh=10_000, max_charge_w=5_000, max_discharge_w=5_000))


def hello(edge: str, key: str) -> edge_link_pb2.ConnectRequest:
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    return edge_link_pb2.ConnectRequest(
        hello=edge_link_pb2.Hello(
            edge=edge,
            api_key=key,
            agent_version="bench",
            protocol_version=1,
            edge_time=now,
            channel_table=[
                edge_link_pb2.ChannelDescriptor(index=i, channel=c, unit=u) for i, (c, u) in enumerate(CHANNELS)
            ],
            devices=device_inventory([BATTERY]),
        )
    )


def limits_batch(seq: int) -> edge_link_pb2.ConnectRequest:
    """Both limits at 5 kW, stamped now."""
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    return edge_link_pb2.ConnectRequest(
        telemetry_batch=edge_link_pb2.TelemetryBatch(
            batch_seq=seq, base_time=now, channel_indexes=[0, 1], time_offsets_ms=[0, 0], values=[5000.0, 5000.0]
        )
    )


async def main_async(port: int, edge: str, key: str) -> None:
    out: asyncio.Queue[edge_link_pb2.ConnectRequest] = asyncio.Queue()

    async def requests():  # type: ignore[no-untyped-def]
        while True:
            yield await out.get()

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = edge_link_pb2_grpc.EdgeLinkServiceStub(channel).Connect(requests())
        await out.put(hello(edge, key))

        async def limits() -> None:
            seq = 0
            while True:
                seq += 1
                await out.put(limits_batch(seq))
                await asyncio.sleep(1.0)

        task = asyncio.create_task(limits())
        ready = False
        async for msg in call:
            if not ready and msg.WhichOneof("message") == "telemetry_ack":
                # Hello (with the inventory) and the first limits are stored: commands can be validated.
                print("ready", flush=True)
                ready = True
            if msg.WhichOneof("message") == "command":
                cmd = msg.command
                for status in (edge_link_pb2.COMMAND_ACK_STATUS_RECEIVED, edge_link_pb2.COMMAND_ACK_STATUS_EXECUTED):
                    await out.put(
                        edge_link_pb2.ConnectRequest(
                            command_ack=edge_link_pb2.CommandAck(
                                command=cmd.name, status=status, applied_value=cmd.value
                            )
                        )
                    )
        task.cancel()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--edge", required=True)
    p.add_argument("--key", required=True)
    args = p.parse_args()
    asyncio.run(main_async(args.port, args.edge, args.key))


if __name__ == "__main__":
    main()
