"""One edge for the command benchmark, as its own process: `python -m bench.command_edge`.

Two kinds, both as their own process so their event loop is not the caller's:

- simulated (the default): it says Hello with a battery (the edge daemon's own simulated battery,
  declared as the daemon declares it), reports the battery's dynamic limits every second (so the
  cloud's validation finds fresh telemetry), and answers every EdgeCommand at once with RECEIVED and
  EXECUTED: the round trip measured is the cloud's and the wire's, not a control cycle's.
- `--daemon PERIOD_S`: the real EdgeDaemon (the demo site: simulated battery, PV, load, EV charger and
  meter, its controllers, channel store, SQLite outbox and gRPC uplink) at that control cycle. It
  acknowledges RECEIVED when a command arrives and EXECUTED once a control cycle applied it, so its
  round trip includes the wait for the next cycle boundary (half a cycle on average, by design).

Either prints "ready" once its Hello is answered (the simulated edge: once its first limits are
stored too; for the daemon the benchmark itself waits for fresh limits in the database).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

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


async def simulated(port: int, edge: str, key: str) -> None:
    out: asyncio.Queue[edge_link_pb2.ConnectRequest] = asyncio.Queue()

    async def requests() -> AsyncIterator[edge_link_pb2.ConnectRequest]:
        while True:
            yield await out.get()

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = edge_link_pb2_grpc.EdgeLinkServiceStub(channel).Connect(requests())
        await out.put(hello(edge, key))

        async def limits(seq: int) -> None:
            while True:
                seq += 1
                await out.put(limits_batch(seq))
                await asyncio.sleep(1.0)

        task: asyncio.Task[None] | None = None
        ready = False
        async for msg in call:
            if task is None and msg.WhichOneof("message") == "welcome":
                # Numbered after what the cloud stored from this edge (an earlier process of it): a
                # batch_seq it has already stored is acknowledged as a duplicate and not stored, and the
                # limits would go stale.
                task = asyncio.create_task(limits(msg.welcome.last_stored_batch_seq))
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
        if task is not None:
            task.cancel()


async def daemon(port: int, edge: str, key: str, period_s: float) -> None:
    """The real edge daemon on the demo site at `period_s`, connected to the cloud on `port`."""
    from edge_daemon.config import demo_site_dict, parse_config
    from edge_daemon.daemon import EdgeDaemon
    from edge_daemon.uplink import create_uplink

    with tempfile.TemporaryDirectory(prefix="emma-bench-edge-") as tmp:
        (Path(tmp) / "edge.key").write_text(key + "\n")
        doc = demo_site_dict(period_s=period_s, outbox_path="outbox.sqlite")
        # Limits reach the cloud within a second, so validation always finds them fresh.
        doc["telemetry"] = {"batch_interval_s": 1.0}
        doc["cloud"] = {"endpoint": f"127.0.0.1:{port}", "key_file": "edge.key", "edge": edge, "tls": False}
        config = parse_config(doc, Path(tmp) / "site.toml")
        edge_daemon = EdgeDaemon(config, uplink=create_uplink(config))
        runner = asyncio.create_task(edge_daemon.run())
        await edge_daemon.started.wait()
        print("ready", flush=True)
        await runner


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--edge", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--daemon", type=float, metavar="PERIOD_S", help="run the real edge daemon at this cycle")
    args = p.parse_args()
    if args.daemon:
        asyncio.run(daemon(args.port, args.edge, args.key, args.daemon))
    else:
        asyncio.run(simulated(args.port, args.edge, args.key))


if __name__ == "__main__":
    main()
