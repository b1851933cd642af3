"""asyncpg pool creation with errors a person can act on."""

from __future__ import annotations

import asyncio
import logging
import re
import sys

import asyncpg

from core.metrics import watch_pool
from services.errors import StartupError
from services.platform.config import DatabaseConfig
from services.platform.sql_tracing import TracedConnection


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, for messages."""
    return re.sub(r"(//[^:/@]+:)[^@]*@", r"\1***@", dsn)


# What a statement meets while PostgreSQL cannot be reached (a restart, a failover, the network): no
# fault of the call, so an RPC answers UNAVAILABLE / DATABASE_UNAVAILABLE ("retry with backoff"), not
# INTERNAL (services/platform/interceptors.py). Narrower than the ingest writer's is_transient
# (services/edgelink/writer.py), which also retries deadlocks and exhausted resources itself.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.PostgresConnectionError,  # SQLSTATE class 08, and a connection closed mid-statement
    asyncpg.exceptions.CannotConnectNowError,  # 57P03: the server is starting up or shutting down
    asyncpg.exceptions.AdminShutdownError,  # 57P01: its connection was ended by a shutdown
    asyncpg.exceptions.CrashShutdownError,  # 57P02
    ConnectionError,  # refused or reset: no server at the address
    # A connection whose protocol state broke when the server went away mid-statement ("cannot switch to
    # state ...; another operation is in progress"), seen when PostgreSQL was killed under a call.
    asyncpg.exceptions.InternalClientError,
)


def database_unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the database could not be reached, rather than that a statement was wrong."""
    if isinstance(exc, _UNREACHABLE):
        return True
    # The Unix socket of a server that is restarting is gone: connecting raises a FileNotFoundError
    # that names no file (one from opening a file names it).
    return isinstance(exc, FileNotFoundError) and exc.filename is None


def log_failed_pass(logger: logging.Logger, what: str, level: int = logging.WARNING) -> None:
    """In a background loop's `except`: log the pass that failed and will be retried. While the database
    cannot be reached that is one line a pass (the traceback would say the same every second); anything
    else is logged with its traceback at `level` (a bug or a bad row)."""
    exc = sys.exc_info()[1]
    if exc is not None and database_unreachable(exc):
        logger.warning("%s: the database cannot be reached (%s); retrying", what, str(exc) or type(exc).__name__)
    else:
        logger.log(level, "%s; retrying", what, exc_info=True)


async def _keep_session(_conn: asyncpg.Connection) -> None:
    return None


async def create_pool(config: DatabaseConfig, dsn: str | None = None, *, name: str = "main") -> asyncpg.Pool:
    """`name` labels the pool's emma.db.pool.connections metric (a process may hold several pools)."""
    dsn = dsn or config.url
    if not dsn:
        raise StartupError("no database: set DATABASE_URL, or use `emma up` for an embedded PostgreSQL")
    try:
        async with asyncio.timeout(config.connect_timeout_s + 1):
            pool = await asyncpg.create_pool(
                dsn,
                min_size=config.pool_min_size,
                max_size=config.pool_max_size,
                timeout=config.connect_timeout_s,
                # Statement caching breaks behind transaction-pooling proxies (pgbouncer); the few
                # hot statements are prepared explicitly where it matters.
                statement_cache_size=100,
                # Everything is stored and bucketed in UTC; local views convert explicitly.
                server_settings={"TimeZone": "UTC", "application_name": "emma"},
                # asyncpg's default reset costs a round trip on every release (unlock all, CLOSE ALL,
                # UNLISTEN, RESET ALL). EMMA never leaves session state on a pool connection: settings
                # are SET LOCAL, LISTEN uses dedicated connections, the one session advisory lock
                # (migrations) is released in a finally.
                reset=_keep_session,
                # A span per statement inside a trace (services/platform/sql_tracing.py).
                connection_class=TracedConnection,
            )
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StartupError(f"cannot connect to PostgreSQL at {redact_dsn(dsn)}: {detail}") from None
    assert pool is not None
    watch_pool(pool, name)
    return pool
