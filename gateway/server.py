"""Running the gateway under uvicorn: as `emma gateway`, or embedded in another process (`emma up`, tests).

The listening socket is bound here rather than by uvicorn so that port 0 works (the real port is
known before the first request) and a busy port is one clear error line.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import AsyncIterator, Callable, Iterator

import uvicorn

from core.collector import tune_garbage_collector
from core.tracing import configure_tracing
from gateway.app import create_app
from gateway.config import GatewayConfig
from gateway.errors import GatewayConfigError
from gateway.http_protocol import OneWriteProtocol
from gateway.web import with_web


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not left 0: accepted sockets inherit it, and asyncio turns Nagle's algorithm
    # off (TCP_NODELAY) only on sockets whose proto says TCP. With proto 0 every answer's body, written
    # after its headers, waited for the client's delayed ACK of them: 40 ms per request on Linux
    # (bench.gateway: 44 ms p50 at one client, 1,000 req/s at 50 clients with both processes half idle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            where = "EMMA_GATEWAY_PORT; emma gateway --port, emma up --gateway-port"
            raise GatewayConfigError(f"port {port} on {host} is already in use ({where})") from None
        raise GatewayConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _uvicorn_config(config: GatewayConfig) -> uvicorn.Config:
    return uvicorn.Config(
        # The dashboard (web/dist) at `/` in front of the API, same origin (gateway/web.py).
        with_web(create_app(config)),
        # httptools, each answer's headers and body written as one (gateway/http_protocol.py).
        http=OneWriteProtocol,
        lifespan="on",
        # The process configured logging already (JSON lines); uvicorn must not replace it.
        log_config=None,
        access_log=False,
        # X-Forwarded-For from a proxy on this machine names the real client (rate limits, logs).
        proxy_headers=True,
        forwarded_allow_ips="127.0.0.1",
        timeout_graceful_shutdown=5,
    )


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the hosting process owns SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _wait_started(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    while not server.started:
        if task.done():
            task.result()  # re-raise why it stopped
            raise GatewayConfigError("the gateway stopped during start-up")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running_gateway(config: GatewayConfig) -> AsyncIterator[int]:
    """Serve in the current event loop until the block exits; yields the bound port."""
    sock = bind_socket(config.host, config.port)
    port = int(sock.getsockname()[1])
    server = _EmbeddedServer(_uvicorn_config(config))
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        await _wait_started(server, task)
        yield port
    finally:
        server.should_exit = True
        await task
        sock.close()


async def serve(config: GatewayConfig, announce: Callable[[str], None] | None = None) -> None:
    """`emma gateway`: serve until SIGINT or SIGTERM (uvicorn's handlers drain connections first)."""
    configure_tracing("emma-gateway")
    sock = bind_socket(config.host, config.port)
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(_uvicorn_config(config))
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        await _wait_started(server, task)
        # As `emma serve` does (core/collector.py): a full collection walks everything the gateway built
        # at start (route table, OpenAPI document, descriptors: 16 ms for the app alone on the 2-core
        # machine), with the event loop stopped and every request in flight waiting.
        tune_garbage_collector()
        if announce is not None:
            host = f"[{config.host}]" if ":" in config.host else config.host
            announce(f"http://{host}:{port}")
        await task
    finally:
        sock.close()
