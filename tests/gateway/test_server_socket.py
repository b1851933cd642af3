"""The gateway's server: connections accepted on its socket send small writes at once (TCP_NODELAY); the
process tunes its garbage collector once it listens."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys

from core.collector import YOUNG_THRESHOLD
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


_REPORT_COLLECTOR = """
import asyncio, gc, sys
from gateway.config import GatewayConfig
from gateway.server import serve

def announce(url: str) -> None:
    print(url, gc.get_threshold()[0], gc.get_freeze_count(), flush=True)

asyncio.run(serve(GatewayConfig(port=0, target="127.0.0.1:1"), announce))
"""


async def test_the_gateway_tunes_the_garbage_collector_once_it_listens() -> None:
    """As `emma serve` does: what the gateway built at start is frozen out of the collector's way, and
    young collections run less often (core/collector.py). Checked in a process of its own, as `emma
    gateway` runs, since the tuning is process-wide."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _REPORT_COLLECTOR, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        url, threshold, frozen = line.split()
        assert url.startswith("http://127.0.0.1:")
        assert int(threshold) == YOUNG_THRESHOLD
        assert int(frozen) > 0
    finally:
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 30) in (0, 1, -signal.SIGINT)
