"""A cloud process: connect to PostgreSQL, optionally migrate, host services, drain on SIGTERM.

With EMMA_GRPC_WORKERS=N (`emma serve --workers N`) the process is the first of N that serve one
port together: once its server listens it starts the others (the same command, told their index and
the port), and they stop when it does. Each is a full replica, as if on another machine: every
background worker is written for several replicas (claims with FOR UPDATE SKIP LOCKED and leases,
advisory locks, LISTEN/NOTIFY between replicas; see each worker's module), so none runs only once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from core.collector import tune_garbage_collector
from core.stop_with_parent import child_env
from core.tracing import configure_tracing
from services import catalog, registry
from services.edgelink import edge_connections
from services.errors import StartupError
from services.identity import AuthInterceptor, auth_state_for, use_edge_directory
from services.platform import db, migrations
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
            # Again: a stream's audit row is queued only once its handler has recorded the stream's end,
            # which the services' stop waits for; rows queued after the first drain are written here,
            # before the pool closes (ends taken together wait for the statement before theirs).
            await auth_interceptor.drain()
    finally:
        async with asyncio.timeout(10):
            await pool.close()


# How long a further worker may take to listen (imports, pool, servicers) before start-up fails.
WORKER_START_TIMEOUT_S = 60.0


class Workers:
    """The further worker processes of a port served by several (the first process starts them).

    Each runs `argv` (the same `emma serve` command) with EMMA_GRPC_WORKER_INDEX set and the bound
    port, prints one line when it listens, and logs to this process's stderr. One that exits while
    the others serve stops the whole set (a SIGTERM to this process): a supervisor then restarts
    one command, as it would a single process.
    """

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], count: int) -> None:
        self._argv = list(argv)
        self._env = dict(env)
        self._count = count
        self._procs: list[asyncio.subprocess.Process] = []
        self._watchers: list[asyncio.Task[None]] = []
        self._stopping = False

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    async def start(self, port: int) -> None:
        for index in range(1, self._count + 1):
            # child_env: a worker stops when this process dies, kill -9 included (core/stop_with_parent.py).
            env = child_env(
                {
                    **self._env,
                    "EMMA_GRPC_PORT": str(port),
                    "EMMA_GRPC_WORKERS": str(self._count + 1),
                    "EMMA_GRPC_WORKER_INDEX": str(index),
                }
            )
            proc = await asyncio.create_subprocess_exec(
                *self._argv, env=env, stdout=asyncio.subprocess.PIPE, start_new_session=True
            )
            self._procs.append(proc)
            assert proc.stdout is not None
            try:
                async with asyncio.timeout(WORKER_START_TIMEOUT_S):
                    line = (await proc.stdout.readline()).decode()
            except TimeoutError:
                line = ""
            if not line:
                raise StartupError(f"worker {index} of the port {port} did not start (see its log lines above)")
            self._watchers.append(asyncio.create_task(self._watch(index, proc), name=f"worker-{index}-watch"))

    async def _watch(self, index: int, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while await proc.stdout.read(65536):  # drain, so it never blocks on a full pipe
            pass
        code = await proc.wait()
        if not self._stopping:
            log.error("worker %d stopped (exit code %s); stopping every worker", index, code)
            os.kill(os.getpid(), signal.SIGTERM)  # the same clean shutdown as Ctrl-C

    def terminate(self) -> None:
        """SIGTERM to every worker still running: each drains as this process does."""
        self._stopping = True
        for proc in self._procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)

    async def wait(self, timeout_s: float) -> None:
        """Wait for the workers to exit (after terminate); kill those still running after `timeout_s`."""
        self.terminate()
        for proc in self._procs:
            try:
                async with asyncio.timeout(timeout_s):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for watcher in self._watchers:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


def worker_env(config: PlatformConfig, dsn: str | None = None) -> dict[str, str]:
    """The settings a further worker of this process runs with: its own, the database it uses and the state
    folder (its generated secrets) spelled out, so both are the same whatever the worker's defaults."""
    env = {**os.environ, **config.env, "EMMA_STATE_DIR": str(config.state.state_dir)}
    url = dsn or config.database.url
    if url:
        env["DATABASE_URL"] = url
        env.pop("EMMA_DATABASE_URL", None)  # it would win over DATABASE_URL
    return env


def further_workers(config: PlatformConfig, argv: Sequence[str] | None, dsn: str | None = None) -> Workers | None:
    """Workers 1..N-1 of the port (not started yet) when this process is worker 0 of N, else None."""
    server = config.server
    if argv is None or server.worker_index != 0 or server.workers <= 1:
        return None
    return Workers(argv, worker_env(config, dsn), server.workers - 1)


async def serve_until_signal(
    keys: list[str],
    config: PlatformConfig,
    *,
    dsn: str | None = None,
    apply_migrations: bool = False,
    announce: Callable[[HostedServer], None] | None = None,
    worker_argv: Sequence[str] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT. With EMMA_GRPC_WORKERS > 1, `worker_argv` is the command that runs the
    further workers (`emma serve ...`); `announce` runs once all of them listen."""
    workers = further_workers(config, worker_argv, dsn)
    try:
        async with hosted_services(keys, config, dsn=dsn, apply_migrations=apply_migrations) as (hosted, _):
            if workers is not None:
                await workers.start(hosted.port)
                log.info("serving port %d with %d workers (pids %s)", hosted.port, config.server.workers, workers.pids)
            tune_garbage_collector()
            await wait_for_shutdown_signal(ready=(lambda: announce(hosted)) if announce else None)
            log.info("shutting down: health NOT_SERVING, draining for %.1f s", config.server.shutdown_grace_s)
            if workers is not None:
                workers.terminate()  # they drain while this process does
    finally:
        if workers is not None:
            await workers.wait(config.server.shutdown_grace_s + 5)
