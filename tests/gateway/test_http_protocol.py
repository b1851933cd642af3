"""gateway/http_protocol.py: what is written to a connection during one step of the event loop leaves
as one write, so an answer's headers and body reach the client in one TCP segment.

Segments are counted by the kernel (TCP_INFO's tcpi_data_segs_in on the client's socket): with Nagle
off (the gateway's sockets, asyncio's transports) every write of a few bytes is a segment of its own."""

from __future__ import annotations

import asyncio
import socket
import struct

from gateway.config import GatewayConfig
from gateway.http_protocol import StepWrites
from gateway.server import running_gateway

# struct tcp_info (linux/tcp.h): __u32 tcpi_data_segs_in at byte 152, tcpi_data_segs_out after it.
_DATA_SEGS_IN = 152


def _data_segments_received(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    (count,) = struct.unpack_from("I", info, _DATA_SEGS_IN)
    return int(count)


class _Writer(asyncio.Protocol):
    """Writes what each line it receives asks for, through StepWrites: "ab" writes a then b in one step;
    "a|b" writes a, then b in the next step; "ab+close" writes a, b and closes; "ab+abort" aborts."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = StepWrites(transport, asyncio.get_running_loop())

    def data_received(self, data: bytes) -> None:
        command = data.decode().strip()
        if command == "a|b":
            self.transport.write(b"a")
            asyncio.get_running_loop().call_soon(self.transport.write, bytearray(b"b"))
            return
        self.transport.writelines([b"a", memoryview(b"b")])
        if command == "ab+close":
            self.transport.close()
        elif command == "ab+abort":
            self.transport.abort()


async def _exchange(client: socket.socket, command: bytes, expected: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(client, command)
    received = b""
    while len(received) < len(expected):
        chunk = await asyncio.wait_for(loop.sock_recv(client, 64), 10)
        if not chunk:
            break
        received += chunk
    return received


async def test_writes_of_one_step_leave_as_one_segment_and_of_two_steps_as_two() -> None:
    server = await asyncio.get_running_loop().create_server(_Writer, "127.0.0.1", 0)
    client = socket.create_connection(server.sockets[0].getsockname())
    client.setblocking(False)
    try:
        assert await _exchange(client, b"ab\n", b"ab") == b"ab"
        assert _data_segments_received(client) == 1
        assert await _exchange(client, b"a|b\n", b"ab") == b"ab"
        assert _data_segments_received(client) == 3  # the counter tells separate writes apart
    finally:
        client.close()
        server.close()
        await server.wait_closed()


async def test_closing_writes_what_was_held_and_aborting_drops_it() -> None:
    server = await asyncio.get_running_loop().create_server(_Writer, "127.0.0.1", 0)
    try:
        for command, expected in ((b"ab+close\n", b"ab"), (b"ab+abort\n", b"")):
            client = socket.create_connection(server.sockets[0].getsockname())
            client.setblocking(False)
            try:
                received = await _exchange(client, command, b"ab")
                assert received == expected
                rest = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(client, 64), 10)
                assert rest == b""  # the connection ended
            except ConnectionResetError:
                assert expected == b""  # an abort may reset rather than end the connection
            finally:
                client.close()
    finally:
        server.close()
        await server.wait_closed()


async def _get(port: int, path: str) -> tuple[bytes, int]:
    """The raw answer to GET `path` (Content-Length read) and the data segments it came in."""
    loop = asyncio.get_running_loop()
    client = socket.create_connection(("127.0.0.1", port))
    client.setblocking(False)
    try:
        await loop.sock_sendall(client, f"GET {path} HTTP/1.1\r\nhost: gateway\r\n\r\n".encode())
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
            chunk = await asyncio.wait_for(loop.sock_recv(client, 65536), 30)
            assert chunk, answer
            answer += chunk
        return answer, _data_segments_received(client)
    finally:
        client.close()


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise AssertionError(f"no content-length in {answer!r}")


async def test_the_gateway_sends_each_answer_in_one_segment() -> None:
    """Starlette's own route (/healthz) and the API's path (a call the services cannot answer: 503),
    each an http.response.start and an http.response.body uvicorn writes separately."""
    async with running_gateway(GatewayConfig(port=0, target="127.0.0.1:1", deadline_s=5.0)) as port:
        health, segments = await _get(port, "/healthz")
        assert health.startswith(b"HTTP/1.1 200") and health.endswith(b'{"status":"SERVING"}')
        assert segments == 1
        answer, segments = await _get(port, "/v1/organizations/o/sites/s/latestValues")
        assert answer.startswith(b"HTTP/1.1 503") and b'"code":503' in answer
        assert segments == 1
