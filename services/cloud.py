"""A cloud process: connect to PostgreSQL, optionally migrate, host services, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from core.tracing import configure_tracing
from services import catalog, registry
from services.edgelink import edge_connections
from services.identity import AuthInterceptor, auth_state_for, use_edge_directory
from services.platform import db, migrations
from services.platform.collector import tune_garbage_collector
from services.platform.config import PlatformConfig, ServerConfig
from services.platform.registration import build_workers, running_workers
from services.platform.runtime import Runtime
from services.platform.server import HostedServer, create_server, start_server, wait_for_shutdown_signal
from services.telemetry import erase_edge_telemetry

log = logging.getLogger("emma.cloud")


async def _apply_migrations(conn: migrations.Conn, config: PlatformConfig) -> list[str]:
    loaded = migrations.load_migrations(config.database.migrations_dir)
    return await migrations.migrate(conn, loaded, config.database.migration_settings)


async def run_migrations(config: PlatformConfig, dsn: str | None = None) -> list[str]:
    pool = await db.create_pool(config.database, dsn)
    try:
        async with pool.acquire() as conn:
            return await _apply_migrations(conn, config)
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def hosted_services(
    keys: list[str],
    config: PlatformConfig,
    *,
    dsn: str | None = None,
    apply_migrations: bool = False,
    server_config: ServerConfig | None = None,
) -> AsyncIterator[tuple[HostedServer, Runtime]]:
    """Start the named services in one server; stop them (with grace) when the block exits."""
    specs = catalog.resolve(keys)
    configure_tracing("emma")
    server_config = server_config or config.server
    pool = await db.create_pool(config.database, dsn)
    try:
        if apply_migrations:
            async with pool.acquire() as conn:
                applied = await _apply_migrations(conn, config)
                total = len(await migrations.applied_versions(conn))
                log.info("migrations: %d applied now, %d in total", len(applied), total)
        runtime = Runtime(config=config, pool=pool, dsn=dsn or config.database.url or "")
        # Identity names edges (key owners, audit actors) through the registry, which owns them.
        use_edge_directory(registry)
        # The registry reads edges' connection state from EdgeLink and erases an edge's telemetry
        # through these (it may not import either domain).
        registry.use_ports(
            registry.RegistryPorts(edge_connections=edge_connections, edge_erasers=(erase_edge_telemetry,))
        )
        # One interceptor authenticates, authorizes and audits every RPC (services/identity/).
        auth = auth_state_for(runtime)
        auth_interceptor = AuthInterceptor(auth)
        server = create_server(server_config, [auth_interceptor])
        servicers = catalog.add_services(server, specs, runtime)
        # Built here, so a bad setting of theirs fails before the server binds its port.
        workers = build_workers(specs, runtime)
        # Background work (ingest writer, sweepers, the revocation listener) starts before the first
        # call can arrive and stops after the last one drained.
        lifecycle: list[Any] = [auth, *(s for s in servicers if hasattr(s, "start"))]
        for s in lifecycle:
            await s.start()
        try:
            hosted = await start_server(server, server_config, [spec.full_name for spec in specs])
            drained = False
            try:
                # The domains' own workers (the market fetch scheduler) only once the port is ours: a
                # second process on a busy port must fail without fetching or writing anything.
                # They stop after the drain (health says NOT_SERVING at once) and before the pool closes.
                async with running_workers(workers):
                    try:
                        yield hosted, runtime
                    finally:
                        drained = True
                        await hosted.drain(server_config.shutdown_grace_s)
            finally:
                if not drained:  # a worker failed to start: the server still stops
                    await hosted.drain(server_config.shutdown_grace_s)
                await auth_interceptor.drain()
        finally:
            for s in reversed(lifecycle):
                await s.stop()
    finally:
        await asyncio.wait_for(pool.close(), timeout=10)


async def serve_until_signal(
    keys: list[str],
    config: PlatformConfig,
    *,
    dsn: str | None = None,
    apply_migrations: bool = False,
    announce: Callable[[HostedServer], None] | None = None,
) -> None:
    async with hosted_services(keys, config, dsn=dsn, apply_migrations=apply_migrations) as (hosted, _):
        tune_garbage_collector()
        await wait_for_shutdown_signal(ready=(lambda: announce(hosted)) if announce else None)
        log.info("shutting down: health NOT_SERVING, draining for %.1f s", config.server.shutdown_grace_s)
