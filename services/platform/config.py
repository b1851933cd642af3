"""Typed configuration read from EMMA_* environment variables (and DATABASE_URL).

Every setting has one dataclass field, one variable and a default that works on a laptop; a bad value
fails at start with ConfigError naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.errors import ConfigError


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum}")
    return value


@dataclass(frozen=True)
class ServerConfig:
    """The gRPC server: where it listens and how it treats connections."""

    host: str = "127.0.0.1"
    port: int = 50051
    # Larger than any legitimate telemetry batch (10,000 points ~ 140 kB) with room for history answers.
    max_message_bytes: int = 16 * 1024 * 1024
    # Server pings idle connections so that dead edges behind NAT are noticed within ~30 s.
    keepalive_time_ms: int = 20_000
    keepalive_timeout_ms: int = 10_000
    # Clients (edges) may ping every 10 s; more frequent pings get the connection closed (GOAWAY).
    min_client_ping_interval_ms: int = 10_000
    shutdown_grace_s: float = 10.0
    replica_id: str = field(default_factory=lambda: f"{os.uname().nodename}-{os.getpid()}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ServerConfig:
        port = _int(env, "EMMA_GRPC_PORT", cls.port)
        if port > 65535:
            raise ConfigError(f"EMMA_GRPC_PORT={port} is not a TCP port")
        return cls(
            host=env.get("EMMA_GRPC_HOST", cls.host),
            port=port,
            max_message_bytes=_int(env, "EMMA_GRPC_MAX_MESSAGE_BYTES", cls.max_message_bytes, 1024),
            keepalive_time_ms=_int(env, "EMMA_GRPC_KEEPALIVE_TIME_MS", cls.keepalive_time_ms, 1000),
            keepalive_timeout_ms=_int(env, "EMMA_GRPC_KEEPALIVE_TIMEOUT_MS", cls.keepalive_timeout_ms, 1000),
            min_client_ping_interval_ms=_int(
                env, "EMMA_GRPC_MIN_CLIENT_PING_INTERVAL_MS", cls.min_client_ping_interval_ms, 1000
            ),
            shutdown_grace_s=_float(env, "EMMA_SHUTDOWN_GRACE_S", cls.shutdown_grace_s),
            replica_id=env.get("EMMA_REPLICA_ID") or f"{os.uname().nodename}-{os.getpid()}",
        )


@dataclass(frozen=True)
class DatabaseConfig:
    """PostgreSQL. Without a URL, `emma up` starts an embedded server under the state folder."""

    url: str | None = None
    # Where the SQL migrations are; only extensions and the tests that prove a failing migration is
    # rolled back point it elsewhere.
    migrations_dir: Path | None = None
    pool_min_size: int = 1
    pool_max_size: int = 10
    connect_timeout_s: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> DatabaseConfig:
        return cls(
            url=env.get("EMMA_DATABASE_URL") or env.get("DATABASE_URL") or None,
            migrations_dir=Path(env["EMMA_MIGRATIONS_DIR"]) if env.get("EMMA_MIGRATIONS_DIR") else None,
            pool_min_size=_int(env, "EMMA_DB_POOL_MIN", cls.pool_min_size, 0),
            pool_max_size=_int(env, "EMMA_DB_POOL_MAX", cls.pool_max_size, 1),
            connect_timeout_s=_float(env, "EMMA_DB_CONNECT_TIMEOUT_S", cls.connect_timeout_s, 0.1),
        )


@dataclass(frozen=True)
class StateConfig:
    """Where local runs keep their data: embedded PostgreSQL, generated secrets, edge outboxes."""

    state_dir: Path = Path(".emma")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> StateConfig:
        return cls(state_dir=Path(env.get("EMMA_STATE_DIR", str(cls.state_dir))).absolute())


@dataclass(frozen=True)
class PlatformConfig:
    """Everything a cloud process needs to start."""

    server: ServerConfig
    database: DatabaseConfig
    state: StateConfig

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> PlatformConfig:
        return cls(
            server=ServerConfig.from_env(env),
            database=DatabaseConfig.from_env(env),
            state=StateConfig.from_env(env),
        )
