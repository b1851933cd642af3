"""One simulated edge for the command benchmark, as its own process: `python -m bench.command_edge`.

It says Hello with a battery, reports the battery's dynamic limits every second (so the cloud's
validation finds fresh telemetry), and answers every EdgeCommand at once with RECEIVED and EXECUTED:
the round trip measured is the cloud's and the wire's, not a control cycle's.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import grpc
from emma.edge.v1 import edge_link_pb2, edge_link_pb2_grpc

from tests.cloud.edge_client import batch, battery_inventory, hello

CHANNELS = [("battery_1/MaxDischargePower", "W"), ("battery_1/MaxChargePower", "W")]


async def main_async(port: int, edge: str, key: str) -> None:
    out: asyncio.Queue[edge_link_pb2.ConnectRequest] = asyncio.Queue()

    async def requests():  # type: ignore[no-untyped-def]
        while True:
            yield await out.get()

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = edge_link_pb2_grpc.EdgeLinkServiceStub(channel).Connect(requests())
        await out.put(hello(edge, key, CHANNELS, devices=[battery_inventory()]))

        async def limits() -> None:
            seq = 0
            while True:
                seq += 1
                await out.put(batch(seq, time.time(), [(0, 0, 5000.0), (1, 0, 5000.0)]))
                await asyncio.sleep(1.0)

        task = asyncio.create_task(limits())
        async for msg in call:
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
