"""Connections to the test TimescaleDB (PGlite with timescaledb, one database session; see
tests/services/telemetry/timescale/conftest.py)."""

from __future__ import annotations

import asyncpg

from services.platform.config import DatabaseConfig
from services.platform.db import create_pool


async def connect(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, server_settings={"TimeZone": "UTC"})


async def one_connection_pool(dsn: str) -> asyncpg.Pool:
    """The services' own pool, with one connection. (Its release keeps the session as it is; asyncpg's
    default RESET ALL would leave search_path at pg_catalog in PGlite once timescaledb is loaded.)"""
    return await create_pool(DatabaseConfig(pool_min_size=1, pool_max_size=1), dsn)
