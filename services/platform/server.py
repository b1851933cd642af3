"""Builds and runs the grpc.aio server that hosts one or more EMMA services.

Health (grpc.health.v1) and reflection are always on; keepalive and message sizes are set explicitly
(see ServerConfig); SIGTERM and SIGINT drain gracefully: health flips to NOT_SERVING first so load
balancers and Kubernetes stop routing, then the server stops with a grace period for in-flight calls.
With EMMA_METRICS_PORT set, a small HTTP listener next to it answers Prometheus scrapes.
"""

from __future__ import annotations

import asyncio
import errno
import signal
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from core.metrics import configure_metrics, start_metrics_server
from services.errors import StartupError
from services.platform.config import ServerConfig
from services.platform.interceptors import HandlerWrapper, PlatformInterceptor


def server_options(config: ServerConfig) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.keepalive_time_ms", config.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", config.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", config.min_client_ping_interval_ms),
        ("grpc.http2.max_pings_without_data", 0),
        # Up to this many calls wait for the event loop; one more is refused (see ServerConfig).
        ("grpc.server.max_pending_requests", config.max_pending_calls),
        ("grpc.server.max_pending_requests_hard_limit", config.max_pending_calls + 1),
        # gRPC sets SO_REUSEPORT by default, which lets a second server silently share a busy port: only
        # the workers of one `emma serve --workers N` share theirs (the first checked it was free).
        ("grpc.so_reuseport", 1 if config.shares_port else 0),
    ]


def create_server(
    config: ServerConfig | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),  # type: ignore[type-arg]
) -> grpc.aio.Server:
    """A grpc.aio server with the platform interceptor and explicit transport options.

    `interceptors` run inside the platform interceptor (so their ApiErrors become rich statuses and
    they see the call's trace); cloud processes pass the auth interceptor here (services/cloud.py).
    The leading ones that are HandlerWrappers (the auth interceptor) are folded into the platform
    interceptor, which wraps each method once: grpc.aio would ask each interceptor for a new handler
    on every call.
    """
    config = config or ServerConfig()
    folded: list[HandlerWrapper] = []
    rest = list(interceptors)
    while rest:
        first = rest[0]
        if not isinstance(first, HandlerWrapper):
            break
        folded.append(first)
        rest.pop(0)
    server = grpc.aio.server(interceptors=[PlatformInterceptor(folded), *rest], options=server_options(config))
    return GenericHandlersOnly(server)


class GenericHandlersOnly(grpc.aio.Server):
    """A grpc.aio server whose methods are all served through its generic handlers.

    The generated `add_*Servicer_to_server` functions hand every method to the server twice: in a
    generic handler and as a "registered method". grpc.aio keeps one pending request per registered
    method (about 140 in `emma serve all`) and, for every call that arrives, waits again on all of
    them with asyncio.wait: ~95 µs of the event loop per call against ~12 µs with the one generic
    request (measured: asyncio.wait over 135 futures, one completing per round), a sixth of the
    services' CPU per ListLatestValues call. Registration is dropped, so the generic handlers, which
    the same functions always add, serve every method: the same handlers, found by a dictionary
    lookup per service.
    """

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler[Any, Any]]) -> None:
        self._server.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict[str, Any]) -> None:
        """Not registered (see the class): the generic handler added with them serves these methods."""

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(address, server_credentials)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace: float | None = None) -> None:
        await self._server.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 (grpc.aio.Server's signature)
        return await self._server.wait_for_termination(timeout)


@dataclass
class HostedServer:
    """A started server with its health servicer and bound port."""

    server: grpc.aio.Server
    health: HealthServicer
    port: int
    service_names: list[str]
    metrics: asyncio.Server | None = None

    @property
    def metrics_port(self) -> int | None:
        return int(self.metrics.sockets[0].getsockname()[1]) if self.metrics is not None else None

    async def drain(self, grace_s: float) -> None:
        """Health NOT_SERVING for every service, then stop with a grace period."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        if self.metrics is not None:
            # Scrapes during the drain still see the last values; afterwards the port is free.
            self.metrics.close()
            await self.metrics.wait_closed()


def check_port_free(host: str, port: int) -> None:
    """Fail with a clear message before gRPC does, because gRPC's own bind error is opaque."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like gRPC's own listener: a port whose old connections linger in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(f"port {port} on {host} is already in use (set EMMA_GRPC_PORT)") from None
            raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


async def start_server(server: grpc.aio.Server, config: ServerConfig, service_names: Sequence[str]) -> HostedServer:
    """Add health and reflection for `service_names`, bind, start (and the metrics listener)."""
    configure_metrics("emma")
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
    reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server)
    if config.worker_index == 0:  # the other workers join the port the first one bound
        check_port_free(config.host, config.port)
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    if port == 0:
        raise StartupError(f"cannot listen on {config.host}:{config.port}")
    metrics = None
    if config.metrics_port is not None:
        try:
            metrics = await start_metrics_server(config.host, config.metrics_port)
        except OSError as exc:
            where = f"{config.host}:{config.metrics_port}"
            raise StartupError(f"cannot listen on {where} (EMMA_METRICS_PORT): {exc.strerror}") from None
    try:
        await server.start()
    except BaseException:
        if metrics is not None:
            metrics.close()
        raise
    for name in [*service_names, ""]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return HostedServer(
        server=server, health=health_servicer, port=port, service_names=list(service_names), metrics=metrics
    )


async def wait_for_shutdown_signal(ready: Callable[[], None] | None = None) -> None:
    """Return on the first SIGTERM or SIGINT.

    `ready` runs once the handlers are installed: a process that announces readiness from it cannot be
    interrupted by a signal sent right after the announcement (it would raise KeyboardInterrupt).
    A further worker of `emma serve --workers N` gets its SIGTERM from the kernel when the first one
    dies without stopping it (kill -9; core/stop_with_parent.py).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready()
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
