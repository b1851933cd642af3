"""The floor of the command round trip: its process hops and durable commits, and none of EMMA's logic.

    python -m bench.command_floor serve --dsn DSN    # prints "port N"
    python -m bench.command_floor edge --port N      # prints "ready" once its stream is open

bench.commands runs both as processes of their own and calls the server from its own process, so a
command takes the path EMMA's takes in that benchmark: caller -> server (one row INSERTed and
committed, waiting for the disk, before the command may leave) -> on the edge's open bidirectional
stream to the edge's process -> its answer back on that stream -> the row UPDATEd and committed (the
final state, durable before anyone is told) -> the caller's answer. The messages are EMMA's own
(CreateCommandRequest, ConnectResponse with an EdgeCommand, ConnectRequest with a CommandAck,
Command), so serialisation costs the same; what is left out is everything EMMA does besides: no
interceptors, auth, validation, lookups, limits, events, notifications, logs or metrics, one ack
instead of RECEIVED and EXECUTED, and the fastest simple gRPC usage (the call's own read and write,
no queues or tasks between the stream and the handlers). The gap between this and bench.commands'
idle line is what EMMA's own work costs; this line is what no command path on this machine can beat.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from typing import Any

import asyncpg
import grpc
from emma.command.v1 import command_pb2
from emma.edge.v1 import edge_link_pb2

SERVICE = "emma.bench.v1.CommandFloor"
CREATE = f"/{SERVICE}/Create"
CONNECT = f"/{SERVICE}/Connect"

_TABLE = """CREATE TABLE IF NOT EXISTS public.bench_command_floor (
    id uuid PRIMARY KEY, channel text NOT NULL, value double precision NOT NULL, state text NOT NULL,
    applied_value double precision, create_time timestamptz NOT NULL DEFAULT now(), update_time timestamptz)"""
# Each statement is its own transaction: its commit waits for the disk (synchronous_commit as configured).
_INSERT = "INSERT INTO public.bench_command_floor (id, channel, value, state) VALUES ($1, $2, $3, 'DELIVERED')"
_UPDATE = """UPDATE public.bench_command_floor SET state = 'EXECUTED', applied_value = $2, update_time = now()
             WHERE id = $1"""


class Floor:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._edge: grpc.aio.ServicerContext[Any, Any] | None = None
        self._write = asyncio.Lock()  # one write at a time on a stream
        self._waiting: dict[str, asyncio.Future[float]] = {}

    async def create(
        self, request: command_pb2.CreateCommandRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> command_pb2.Command:
        command_id = uuid.uuid4()
        name = f"{request.parent}/commands/{command_id}"
        async with self._pool.acquire() as conn:
            await conn.execute(_INSERT, command_id, request.command.channel, request.command.value)
        if self._edge is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no edge connected")
        edge = self._edge
        assert edge is not None
        done = self._waiting[name] = asyncio.get_running_loop().create_future()
        try:
            async with self._write:
                await edge.write(
                    edge_link_pb2.ConnectResponse(
                        command=edge_link_pb2.EdgeCommand(
                            name=name, channel=request.command.channel, value=request.command.value
                        )
                    )
                )
            applied = await done
        finally:
            del self._waiting[name]
        return command_pb2.Command(
            name=name,
            channel=request.command.channel,
            value=request.command.value,
            state=command_pb2.COMMAND_STATE_EXECUTED,
            applied_value=applied,
        )

    async def connect(self, _requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        # The Welcome tells the edge its stream is held here: it says "ready" only then.
        await context.write(edge_link_pb2.ConnectResponse(welcome=edge_link_pb2.Welcome()))
        self._edge = context
        while (message := await context.read()) is not grpc.aio.EOF:
            ack = message.command_ack
            async with self._pool.acquire() as conn:
                await conn.execute(_UPDATE, uuid.UUID(ack.command.rsplit("/", 1)[1]), ack.applied_value)
            done = self._waiting.get(ack.command)
            if done is not None and not done.done():
                done.set_result(ack.applied_value)


async def serve(dsn: str) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=4, max_size=8)
    await pool.execute(_TABLE)
    floor = Floor(pool)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Create": grpc.unary_unary_rpc_method_handler(
                        floor.create,
                        request_deserializer=command_pb2.CreateCommandRequest.FromString,
                        response_serializer=command_pb2.Command.SerializeToString,
                    ),
                    "Connect": grpc.stream_stream_rpc_method_handler(
                        floor.connect,
                        request_deserializer=edge_link_pb2.ConnectRequest.FromString,
                        response_serializer=edge_link_pb2.ConnectResponse.SerializeToString,
                    ),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"port {port}", flush=True)
    await server.wait_for_termination()


async def edge(port: int) -> None:
    """Answers every command at once with its final ack, on the stream it opened."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(
            CONNECT,
            request_serializer=edge_link_pb2.ConnectRequest.SerializeToString,
            response_deserializer=edge_link_pb2.ConnectResponse.FromString,
        )()
        welcome = await call.read()
        if welcome is grpc.aio.EOF or welcome.WhichOneof("message") != "welcome":
            raise RuntimeError(f"no Welcome from the floor's server: {welcome!r}")
        print("ready", flush=True)
        while (message := await call.read()) is not grpc.aio.EOF:
            command = message.command
            await call.write(
                edge_link_pb2.ConnectRequest(
                    command_ack=edge_link_pb2.CommandAck(
                        command=command.name,
                        status=edge_link_pb2.COMMAND_ACK_STATUS_EXECUTED,
                        applied_value=command.value,
                    )
                )
            )


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = p.add_subparsers(dest="role", required=True)
    sub.add_parser("serve").add_argument("--dsn", required=True)
    sub.add_parser("edge").add_argument("--port", type=int, required=True)
    args = p.parse_args()
    asyncio.run(serve(args.dsn) if args.role == "serve" else edge(args.port))


if __name__ == "__main__":
    main()
