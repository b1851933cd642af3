"""The gateway's configuration: one frozen dataclass read from EMMA_GATEWAY_* variables.

Every setting has a default that works on a laptop next to `emma serve`; a bad value stops the gateway
at start with one line naming the variable. Command-line flags of `emma gateway` win over the variables.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass

from core.env import env_float, env_int
from gateway.errors import GatewayConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _text(env: Mapping[str, str], name: str, default: str) -> str:
    return env.get(name) or default


def _int(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int | None = None) -> int:
    return env_int(env, name, default, minimum, maximum, error=GatewayConfigError)


def _float(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    return env_float(env, name, default, minimum, error=GatewayConfigError)


def _origins(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    out = []
    for item in (env.get(name) or "").split(","):
        origin = item.strip().rstrip("/")
        if not origin:
            continue
        if origin != "*" and "://" not in origin:
            raise GatewayConfigError(f"{name}: {origin!r} is not an origin like https://app.example.com")
        out.append(origin)
    return tuple(out)


def _networks(env: Mapping[str, str], name: str, default: tuple[IPNetwork, ...]) -> tuple[IPNetwork, ...]:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    if raw.strip().lower() == "none":
        return ()
    out = []
    for item in raw.split(","):
        text = item.strip()
        if not text:
            continue
        try:
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise GatewayConfigError(f"{name}: {text!r} is not an IP address or CIDR like 10.0.0.0/8") from None
    return tuple(out)


LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))


def _target(value: str, name: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise GatewayConfigError(f"{name}={value!r} is not host:port")
    return value


@dataclass(frozen=True)
class GatewayConfig:
    """Where the gateway listens, which gRPC address it serves, and its per-request limits."""

    # The gRPC services, host:port (one address; a load balancer or Kubernetes Service goes in front).
    target: str = "127.0.0.1:50051"
    host: str = "127.0.0.1"
    port: int = 8080
    # Deadline of every unary call; the service sees it and stops working when the client gave up.
    deadline_s: float = 30.0
    # Server streams (live values) end with a DEADLINE_EXCEEDED error event after this long, so an
    # abandoned stream behind a proxy that never closes is not kept forever; 0 means no deadline.
    # Browsers' EventSource reconnects by itself.
    stream_deadline_s: float = 3600.0
    # Origins browsers may call from ("*" for any). The gateway's own origin is always allowed.
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 1024 * 1024
    # Token bucket per client address for writes (POST, PUT, PATCH, DELETE); rate 0 turns it off.
    write_rate_per_s: float = 10.0
    write_burst: int = 20
    # A comment line on idle SSE streams, so proxies do not cut them and dead clients are noticed.
    sse_keepalive_s: float = 15.0
    # The gRPC channel: same limits as the services' ServerConfig, so any answer a service can send
    # the gateway can receive.
    max_message_bytes: int = 16 * 1024 * 1024
    # The services allow pings every 10 s at most (EMMA_GRPC_MIN_CLIENT_PING_INTERVAL_MS).
    keepalive_time_ms: int = 20_000
    keepalive_timeout_ms: int = 10_000
    # gRPC connections to the target, calls spread over them in turn. The services' workers
    # (EMMA_GRPC_WORKERS) share one port by SO_REUSEPORT, which spreads connections, not calls: over one
    # connection every call of the gateway goes to one worker. One by default: in front of one worker,
    # four cost both processes more CPU per call (likely fewer calls per read and write of a connection;
    # bench.gateway --gateway-connections 4,1, closed loop: 662-681 against 812-926 req/s).
    connections: int = 1
    # Peers whose X-Forwarded-For the gateway believes (the ingress controller's pods, a load
    # balancer): the client is the right-most address in the header not in these networks. A header
    # from anyone else is ignored, or a client could pick its own rate-limit bucket and audit address.
    trusted_proxies: tuple[IPNetwork, ...] = LOOPBACK

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] = os.environ,
        *,
        target: str | None = None,
        host: str | None = None,
        port: int | None = None,
    ) -> GatewayConfig:
        """Read EMMA_GATEWAY_*; the keyword arguments (command-line flags) win when given."""
        chosen_target = target or _text(env, "EMMA_GATEWAY_TARGET", cls.target)
        chosen_port = port if port is not None else _int(env, "EMMA_GATEWAY_PORT", cls.port, 0, 65535)
        if not 0 <= chosen_port <= 65535:
            raise GatewayConfigError(f"--port {chosen_port} is not a TCP port")
        return cls(
            target=_target(chosen_target, "--target" if target else "EMMA_GATEWAY_TARGET"),
            host=host or _text(env, "EMMA_GATEWAY_HOST", cls.host),
            port=chosen_port,
            deadline_s=_float(env, "EMMA_GATEWAY_DEADLINE_S", cls.deadline_s, 0.001),
            stream_deadline_s=_float(env, "EMMA_GATEWAY_STREAM_DEADLINE_S", cls.stream_deadline_s, 0.0),
            cors_origins=_origins(env, "EMMA_GATEWAY_CORS_ORIGINS"),
            max_body_bytes=_int(env, "EMMA_GATEWAY_MAX_BODY_BYTES", cls.max_body_bytes, 1),
            write_rate_per_s=_float(env, "EMMA_GATEWAY_WRITE_RATE_PER_S", cls.write_rate_per_s, 0.0),
            write_burst=_int(env, "EMMA_GATEWAY_WRITE_BURST", cls.write_burst, 1),
            sse_keepalive_s=_float(env, "EMMA_GATEWAY_SSE_KEEPALIVE_S", cls.sse_keepalive_s, 0.1),
            max_message_bytes=_int(env, "EMMA_GATEWAY_MAX_MESSAGE_BYTES", cls.max_message_bytes, 1024),
            keepalive_time_ms=_int(env, "EMMA_GATEWAY_KEEPALIVE_TIME_MS", cls.keepalive_time_ms, 10_000),
            keepalive_timeout_ms=_int(env, "EMMA_GATEWAY_KEEPALIVE_TIMEOUT_MS", cls.keepalive_timeout_ms, 1000),
            connections=_int(env, "EMMA_GATEWAY_CONNECTIONS", cls.connections, 1, 64),
            trusted_proxies=_networks(env, "EMMA_GATEWAY_TRUSTED_PROXIES", cls.trusted_proxies),
        )
