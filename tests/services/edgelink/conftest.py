"""Fixtures of the EdgeLink tests that talk to the database through the services' own pool."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from services import registry
from services.identity import use_edge_directory


@pytest.fixture
async def pool(migrated_url: str) -> AsyncIterator[asyncpg.Pool]:
    use_edge_directory(registry)  # as the composition does (services/cloud.py)
    pool = await asyncpg.create_pool(migrated_url, min_size=1, max_size=4)
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()
