"""Session-wide fixtures: one real PostgreSQL per test process, a fresh database per test module.

`make test` runs the suite on every core with pytest-xdist (docs/contributing.md, "How the suite
runs"): each worker is a test process of its own, so it starts its own PostgreSQL, gets its own
tmp_path root and binds its own ports (port 0). What workers do share (files in the checkout) is
prepared once, in the controller, before any worker starts (tests/support/parallel.py).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

# The shared helpers' asserts explain a failure like a test's (registered before they are imported).
pytest.register_assert_rewrite("tests.support")

from tests.support.pg import SessionPostgres  # noqa: E402

# Fixtures shared across test packages (host, token), and how xdist shares the suite out among its
# workers (tests/support/parallel.py), registered once here.
pytest_plugins = ["tests.support.cloud", "tests.support.parallel"]

# Key material and cheap password hashing for the test session (inherited by `emma` subprocesses);
# a deployment gets its keys from the environment or the state folder's 0600 secrets file.
os.environ.setdefault("EMMA_JWT_SIGNING_KEY", "test-signing-key-not-a-secret-0123456789abcdef")
os.environ.setdefault("EMMA_PSEUDONYM_KEY", "test-pseudonym-key-not-a-secret-0123456789abcd")
os.environ.setdefault("EMMA_ARGON2_TIME_COST", "1")
os.environ.setdefault("EMMA_ARGON2_MEMORY_KIB", "8192")
os.environ.setdefault("EMMA_ARGON2_PARALLELISM", "1")


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
async def migrated_url(postgres: SessionPostgres, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A fresh database for the test module with every migration applied (a copy of the session's
    migrated template; a module that also asks for database_url gets that one empty and apart)."""
    dsn = await postgres.create_migrated_database(request.module.__name__.rsplit(".", 1)[-1])
    try:
        yield dsn
    finally:
        await postgres.drop_database(dsn)


@pytest.fixture
async def db(migrated_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the module's migrated database, for the test to set up and check rows."""
    conn = await asyncpg.connect(migrated_url)
    try:
        yield conn
    finally:
        await conn.close()
