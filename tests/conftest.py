"""Session-wide fixtures: one real PostgreSQL per test session, a fresh database per test module."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from services.platform import migrations
from tests.pg import SessionPostgres


@pytest.fixture(scope="session")
def postgres() -> Iterator[SessionPostgres]:
    pg = SessionPostgres.start()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture(scope="module")
async def database_url(postgres: SessionPostgres, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A fresh, empty database for the test module."""
    dsn = await postgres.create_database(request.module.__name__.rsplit(".", 1)[-1])
    try:
        yield dsn
    finally:
        await postgres.drop_database(dsn)


@pytest.fixture(scope="module")
async def migrated_url(database_url: str) -> str:
    """The module's database with every migration applied."""
    conn = await asyncpg.connect(database_url)
    try:
        await migrations.migrate(conn)
    finally:
        await conn.close()
    return database_url
