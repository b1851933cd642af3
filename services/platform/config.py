"""Typed configuration read from EMMA_* environment variables (and DATABASE_URL).

Every setting has one dataclass field, one variable and a default that works on a laptop; a bad value
fails at start with ConfigError naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from core.env import env_float, env_int
from services.errors import ConfigError


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
    # Calls the gRPC core holds while the event loop has not yet taken them up (grpc.aio asks for one
    # call at a time). Beyond gRPC's default of 1,000 it refused calls at random, and from 3,000 all
    # of them, as a bare CANCELLED the server never saw or logged: 2,000 edges reconnecting at once
    # to a busy replica lost one stream in fourteen before its Welcome (docs/performance.md, issue 21).
    max_pending_calls: int = 20_000
    shutdown_grace_s: float = 10.0
    replica_id: str = field(default_factory=lambda: f"{os.uname().nodename}-{os.getpid()}")
    # A plain-HTTP listener answering GET /metrics (Prometheus text) on `host`; None: no listener.
    metrics_port: int | None = None
    # Processes serving the port together (SO_REUSEPORT; the kernel spreads connections over them). One
    # Python process answers on one core at most; every process is a full replica (docs/deployment.md).
    workers: int = 1
    # Which of them this process is: 0 starts the others (services/cloud.py), which get 1..workers-1.
    worker_index: int = 0

    @property
    def shares_port(self) -> bool:
        return self.workers > 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ServerConfig:
        port = env_int(env, "EMMA_GRPC_PORT", cls.port)
        if port > 65535:
            raise ConfigError(f"EMMA_GRPC_PORT={port} is not a TCP port")
        workers = env_int(env, "EMMA_GRPC_WORKERS", cls.workers, 1, 64)
        index = env_int(env, "EMMA_GRPC_WORKER_INDEX", cls.worker_index, 0, workers - 1)
        replica_id = env.get("EMMA_REPLICA_ID") or f"{os.uname().nodename}-{os.getpid()}"
        if index and env.get("EMMA_REPLICA_ID"):
            # Each worker holds edge streams of its own: edge_sessions must tell them apart.
            replica_id = f"{replica_id}-{index}"
        metrics_port = _metrics_port(env)
        if index and metrics_port:
            metrics_port += index  # one listener per worker, side by side
            if metrics_port > 65535:
                raise ConfigError(f"EMMA_METRICS_PORT + worker {index} = {metrics_port} is not a TCP port")
        return cls(
            host=env.get("EMMA_GRPC_HOST", cls.host),
            port=port,
            max_message_bytes=env_int(env, "EMMA_GRPC_MAX_MESSAGE_BYTES", cls.max_message_bytes, 1024),
            keepalive_time_ms=env_int(env, "EMMA_GRPC_KEEPALIVE_TIME_MS", cls.keepalive_time_ms, 1000),
            keepalive_timeout_ms=env_int(env, "EMMA_GRPC_KEEPALIVE_TIMEOUT_MS", cls.keepalive_timeout_ms, 1000),
            min_client_ping_interval_ms=env_int(
                env, "EMMA_GRPC_MIN_CLIENT_PING_INTERVAL_MS", cls.min_client_ping_interval_ms, 1000
            ),
            max_pending_calls=env_int(env, "EMMA_GRPC_MAX_PENDING_CALLS", cls.max_pending_calls, 1),
            shutdown_grace_s=env_float(env, "EMMA_SHUTDOWN_GRACE_S", cls.shutdown_grace_s),
            replica_id=replica_id,
            metrics_port=metrics_port,
            workers=workers,
            worker_index=index,
        )


def _metrics_port(env: Mapping[str, str]) -> int | None:
    if not env.get("EMMA_METRICS_PORT", "").strip():
        return None
    port = env_int(env, "EMMA_METRICS_PORT", 0, 0)
    if port > 65535:
        raise ConfigError(f"EMMA_METRICS_PORT={port} is not a TCP port")
    return port


TELEMETRY_STORES = ("auto", "partitioned", "timescaledb")


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
    # Which telemetry store a new database gets (migration 0006): TimescaleDB where the extension can
    # be created ('auto'), never ('partitioned'), or required ('timescaledb').
    telemetry_store: str = "auto"

    @property
    def migration_settings(self) -> dict[str, str]:
        """The choices migrations read as emma.<name> settings."""
        return {"telemetry_store": self.telemetry_store}

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> DatabaseConfig:
        store = env.get("EMMA_TELEMETRY_STORE", cls.telemetry_store)
        if store not in TELEMETRY_STORES:
            raise ConfigError(f"EMMA_TELEMETRY_STORE={store!r} is not one of {', '.join(TELEMETRY_STORES)}")
        return cls(
            telemetry_store=store,
            url=env.get("EMMA_DATABASE_URL") or env.get("DATABASE_URL") or None,
            migrations_dir=Path(env["EMMA_MIGRATIONS_DIR"]) if env.get("EMMA_MIGRATIONS_DIR") else None,
            pool_min_size=env_int(env, "EMMA_DB_POOL_MIN", cls.pool_min_size, 0),
            pool_max_size=env_int(env, "EMMA_DB_POOL_MAX", cls.pool_max_size, 1),
            connect_timeout_s=env_float(env, "EMMA_DB_CONNECT_TIMEOUT_S", cls.connect_timeout_s, 0.1),
        )


@dataclass(frozen=True)
class StateConfig:
    """Where local runs keep their data: embedded PostgreSQL, generated secrets, edge outboxes."""

    state_dir: Path = Path(".emma")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> StateConfig:
        return cls(state_dir=Path(env.get("EMMA_STATE_DIR", str(cls.state_dir))).absolute())


@dataclass(frozen=True)
class IngestConfig:
    """The edge stream and the telemetry store."""

    heartbeat_interval_s: float = 5.0
    # An edge whose heartbeats stop for this long is marked offline.
    offline_after_s: float = 15.0
    clock_drift_warn_ms: float = 2000.0
    max_batch_points: int = 10_000
    # Batches an edge may have in flight without an ack; with the bounded writer queue this is what
    # makes a slow database slow the edges down instead of growing memory.
    max_unacked_batches: int = 8
    writer_queue_batches: int = 4096
    max_group_points: int = 200_000
    # Samples older than the raw retention or further ahead than this are rejected as absurd.
    retention_days: int = 30
    # TimescaleDB path: raw chunks older than this are compressed (segmented by series).
    compress_after_days: int = 7
    max_future_s: float = 300.0
    rollup_interval_s: float = 5.0
    # A 15-minute bucket is rolled up this long after it closes, so in-flight batches land first.
    rollup_grace_s: float = 30.0
    # A new value waits up to this long before a live stream sends it: at 1 s a few values reached the
    # dashboard 1.02-1.04 s after ingest (bench.dashboard), over the second. One query per
    # open live stream and interval.
    live_poll_interval_s: float = 0.5
    stats_interval_s: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> IngestConfig:
        return cls(
            heartbeat_interval_s=env_float(env, "EMMA_EDGE_HEARTBEAT_S", cls.heartbeat_interval_s, 0.1),
            offline_after_s=env_float(env, "EMMA_EDGE_OFFLINE_AFTER_S", cls.offline_after_s, 0.5),
            clock_drift_warn_ms=env_float(env, "EMMA_EDGE_CLOCK_DRIFT_WARN_MS", cls.clock_drift_warn_ms),
            max_batch_points=env_int(env, "EMMA_EDGE_MAX_BATCH_POINTS", cls.max_batch_points, 1),
            max_unacked_batches=env_int(env, "EMMA_EDGE_MAX_UNACKED_BATCHES", cls.max_unacked_batches, 1),
            writer_queue_batches=env_int(env, "EMMA_INGEST_QUEUE_BATCHES", cls.writer_queue_batches, 1),
            max_group_points=env_int(env, "EMMA_INGEST_MAX_GROUP_POINTS", cls.max_group_points, 1),
            retention_days=env_int(env, "EMMA_TELEMETRY_RETENTION_DAYS", cls.retention_days, 1),
            compress_after_days=env_int(env, "EMMA_TELEMETRY_COMPRESS_AFTER_DAYS", cls.compress_after_days, 1),
            max_future_s=env_float(env, "EMMA_TELEMETRY_MAX_FUTURE_S", cls.max_future_s),
            rollup_interval_s=env_float(env, "EMMA_ROLLUP_INTERVAL_S", cls.rollup_interval_s, 0.05),
            rollup_grace_s=env_float(env, "EMMA_ROLLUP_GRACE_S", cls.rollup_grace_s),
            live_poll_interval_s=env_float(env, "EMMA_LIVE_POLL_INTERVAL_S", cls.live_poll_interval_s, 0.05),
            stats_interval_s=env_float(env, "EMMA_INGEST_STATS_INTERVAL_S", cls.stats_interval_s, 0.5),
        )


@dataclass(frozen=True)
class PlatformConfig:
    """Everything a cloud process needs to start."""

    server: ServerConfig
    database: DatabaseConfig
    state: StateConfig
    ingest: IngestConfig = field(default_factory=IngestConfig)
    # The variables this configuration was read from (the process environment with command-line flags
    # applied on top): domains read their own settings from it (identity's AuthConfig), so flags reach
    # them without anyone writing os.environ. Not in repr: it holds the signing keys.
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> PlatformConfig:
        return cls(
            server=ServerConfig.from_env(env),
            database=DatabaseConfig.from_env(env),
            state=StateConfig.from_env(env),
            ingest=IngestConfig.from_env(env),
            env=dict(env),
        )
