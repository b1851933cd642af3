"""The gateway's listening socket: connections accepted on it send small writes at once (TCP_NODELAY)."""

from __future__ import annotations

import asyncio
import socket

from gateway.server import bind_socket


async def test_connections_accepted_on_the_gateway_socket_have_nagle_off() -> None:
    """uvicorn writes an answer's headers and body separately; with Nagle's algorithm on, the body waited
    for the client's delayed ACK of the headers (40 ms on Linux). asyncio turns it off only on sockets
    whose proto is IPPROTO_TCP, which accepted sockets inherit from the listening one."""
    sock = bind_socket("127.0.0.1", 0)
    assert sock.proto == socket.IPPROTO_TCP
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(on_connect, sock=sock)  # as uvicorn serves the bound socket
    try:
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        assert await asyncio.wait_for(accepted, 10) == 1
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
