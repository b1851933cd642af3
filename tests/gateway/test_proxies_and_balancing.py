"""The gateway behind an ingress: whose X-Forwarded-For it believes (EMMA_GATEWAY_TRUSTED_PROXIES),
calls spread over every address of its target (round_robin), as a headless Service gives them, and
over the gateway's connections to one address (EMMA_GATEWAY_CONNECTIONS), as the services' workers
sharing a port by SO_REUSEPORT need them."""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import httpx
import pytest

from gateway.app import client_address, create_app
from gateway.config import LOOPBACK, GatewayConfig
from gateway.errors import GatewayConfigError
from services import catalog
from services.platform.config import ServerConfig
from services.platform.interceptors import rewrap_handler
from services.platform.server import create_server, start_server

INGRESS = (ipaddress.ip_network("10.0.0.0/8"),)


def test_trusted_proxies_setting() -> None:
    assert GatewayConfig.from_env({}).trusted_proxies == LOOPBACK
    config = GatewayConfig.from_env({"EMMA_GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.7 ,fd00::/8"})
    assert [str(n) for n in config.trusted_proxies] == ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"]
    assert GatewayConfig.from_env({"EMMA_GATEWAY_TRUSTED_PROXIES": "none"}).trusted_proxies == ()
    with pytest.raises(GatewayConfigError, match="EMMA_GATEWAY_TRUSTED_PROXIES: 'ingress' is not an IP address"):
        GatewayConfig.from_env({"EMMA_GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8,ingress"})


def test_the_client_is_the_first_address_no_trusted_proxy_vouches_for() -> None:
    # Straight from a browser: the header is the browser's own claim and is ignored.
    assert client_address("203.0.113.9", "1.2.3.4", INGRESS) == "203.0.113.9"
    # Through the ingress controller (10.2.0.5), which appended the address it saw.
    assert client_address("10.2.0.5", "203.0.113.9", INGRESS) == "203.0.113.9"
    # A client's forged entries stay to the left of what the ingress appended.
    assert client_address("10.2.0.5", "1.2.3.4, 203.0.113.9", INGRESS) == "203.0.113.9"
    # Two trusted hops (a cloud load balancer in 10/8 in front of the controller).
    assert client_address("10.2.0.5", "203.0.113.9, 10.9.9.9", INGRESS) == "203.0.113.9"
    # Garbage where an address belongs ends the walk at the proxy that passed it on.
    assert client_address("10.2.0.5", "203.0.113.9, <script>", INGRESS) == "10.2.0.5"
    # Nothing trusted: the peer, whatever the header says.
    assert client_address("10.2.0.5", "203.0.113.9", ()) == "10.2.0.5"
    assert client_address(None, "203.0.113.9", INGRESS) == "unknown"
    assert client_address("::1", "2001:db8::7", LOOPBACK) == "2001:db8::7"


class _Count(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, name: str, seen: Counter[str]) -> None:
        self.name, self.seen = name, seen

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        self.seen[self.name] += 1
        return await continuation(details)


async def test_calls_are_spread_over_every_address_of_the_target() -> None:
    """Two servers behind one target, as a headless Service's DNS name resolves to every pod:
    pick_first would send every call to the first one."""
    seen: Counter[str] = Counter()
    specs = list(catalog.SERVICES.values())
    hosted = []
    for name in ("a", "b"):
        server = create_server(ServerConfig(port=0), [_Count(name, seen)])
        for spec in specs:
            spec.add_to_server(catalog.unimplemented_servicer(spec), server)
        hosted.append(await start_server(server, ServerConfig(port=0), [s.full_name for s in specs]))
    target = "ipv4:" + ",".join(f"127.0.0.1:{h.port}" for h in hosted)
    app = create_app(GatewayConfig(target=target))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test") as c:
            for _ in range(20):
                r = await c.get("/v1/organizations/acme/sites")
                assert r.status_code == 501, r.text  # the stand-ins answer UNIMPLEMENTED
    finally:
        await app.state.gateway.close()
        for h in hosted:
            await h.drain(0)
    assert seen["a"] + seen["b"] == 20
    assert seen["a"] >= 5 and seen["b"] >= 5, seen


class _Peers(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts the calls of each peer (client address and port: one TCP connection)."""

    def __init__(self, seen: Counter[str]) -> None:
        self.seen = seen

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(details)

        def wrap(behavior: Any) -> Any:
            async def counted(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                self.seen[context.peer()] += 1
                return await behavior(request, context)

            return counted

        return rewrap_handler(handler, unary_unary=wrap, unary_stream=wrap, stream_unary=wrap, stream_stream=wrap)


@pytest.mark.parametrize("connections", [1, 3])
async def test_calls_take_the_gateways_connections_in_turn(connections: int) -> None:
    """Workers sharing a port by SO_REUSEPORT each get whole connections: over one connection every call
    went to one worker. The gateway's calls take its connections in turn, each its own TCP connection."""
    seen: Counter[str] = Counter()
    specs = list(catalog.SERVICES.values())
    server = create_server(ServerConfig(port=0), [_Peers(seen)])
    for spec in specs:
        spec.add_to_server(catalog.unimplemented_servicer(spec), server)
    served = await start_server(server, ServerConfig(port=0), [s.full_name for s in specs])
    app = create_app(GatewayConfig(target=f"127.0.0.1:{served.port}", connections=connections))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test") as c:
            for _ in range(6 * connections):
                r = await c.get("/v1/organizations/acme/sites")
                assert r.status_code == 501, r.text
    finally:
        await app.state.gateway.close()
        await served.drain(0)
    assert sorted(seen.values()) == [6] * connections, seen
