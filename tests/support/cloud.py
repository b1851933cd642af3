"""Cloud fixtures: the real services hosted on loopback port 0 over the module's migrated database.

A pytest plugin registered in tests/conftest.py (host, token); Host, platform_config and new_edge are
imported by tests and other helpers."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import asyncpg
import pytest

from services.cloud import hosted_services
from services.identity import issue_edge_key
from services.names import EdgeName
from services.platform.config import DatabaseConfig, IngestConfig, PlatformConfig, ServerConfig, StateConfig
from services.platform.runtime import Runtime
from services.platform.server import HostedServer
from services.registry import ensure_edge
from tests.support.identity import grant

Host = Callable[..., AbstractAsyncContextManager[tuple[HostedServer, Runtime]]]


def platform_config(dsn: str, **ingest: float) -> PlatformConfig:
    return PlatformConfig(
        server=ServerConfig(port=0, shutdown_grace_s=0.5),
        database=DatabaseConfig(url=dsn, pool_min_size=1, pool_max_size=8),
        state=StateConfig(),
        ingest=dataclasses.replace(IngestConfig(), **ingest),
        # The process environment as it is now (what the services read when env is empty), with the
        # market fetch scheduler, the forecast scheduler and the optimizer's receding horizon off: a
        # hosted test fetches, forecasts or re-plans nothing unless it turns the worker on.
        env={
            **os.environ,
            "EMMA_MARKET_SCHEDULER": "off",
            "EMMA_FORECAST_SCHEDULER": "off",
            "EMMA_OPTIMIZER_SCHEDULER": "off",
        },
    )


@pytest.fixture
def host(migrated_url: str) -> Host:
    """host(["edge", "telemetry"], offline_after_s=1) -> async context of (HostedServer, Runtime)."""

    def start(keys: list[str], **ingest: float) -> AbstractAsyncContextManager[tuple[HostedServer, Runtime]]:
        return hosted_services(keys, platform_config(migrated_url, **ingest))

    return start


@pytest.fixture
async def token(db: asyncpg.Connection) -> str:
    """An access token of a new admin of organizations/acme, the organization new_edge provisions."""
    return (await grant(db, "acme", "admin")).token


async def new_edge(conn: asyncpg.Connection, name: str, time_zone: str = "Europe/Madrid") -> tuple[EdgeName, int, str]:
    """Provision organizations/acme/sites/<name>/edges/<name> with a fresh key."""
    edge = EdgeName("acme", name, name)
    pk = await ensure_edge(conn, edge, time_zone=time_zone, latitude_deg=40.4, longitude_deg=-3.7)
    _, key = await issue_edge_key(conn, pk, "test")
    return edge, pk, key
