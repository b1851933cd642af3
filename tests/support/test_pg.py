"""The session PostgreSQL helper on a server that other test processes share (DATABASE_URL)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.support.pg import SessionPostgres


async def _backend_gone(admin_dsn: str, pid: int) -> None:
    """pg_terminate_backend only signals the backend: wait (bounded) until it has exited."""
    admin = await asyncpg.connect(admin_dsn)
    try:
        for _ in range(200):
            if not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"backend {pid} still there 10 s after the restart")
    finally:
        await admin.close()


async def test_restart_of_a_shared_server_drops_only_this_sessions_connections(postgres: SessionPostgres) -> None:
    # Two sessions on one external server, as two xdist workers on one DATABASE_URL are.
    mine, theirs = SessionPostgres(admin_dsn=postgres.admin_dsn), SessionPostgres(admin_dsn=postgres.admin_dsn)
    my_dsn, their_dsn = await mine.create_database("restart_mine"), await theirs.create_database("restart_theirs")
    my_conn, their_conn = await asyncpg.connect(my_dsn), await asyncpg.connect(their_dsn)
    try:
        await mine.restart()
        await _backend_gone(postgres.admin_dsn, my_conn.get_server_pid())
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError)):
            await my_conn.fetchval("SELECT 1")
        assert await their_conn.fetchval("SELECT 1") == 1
    finally:
        await my_conn.close()
        await their_conn.close()
        await mine.drop_database(my_dsn)
        await theirs.drop_database(their_dsn)
