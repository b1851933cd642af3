"""The database of the operator commands that read it directly (`emma market backfill`, `emma forecast
backtest`): DATABASE_URL, else the embedded PostgreSQL of an `emma up` running on the state folder."""

from __future__ import annotations

import asyncio

from core.errors import ConfigError


async def operator_dsn(env: dict[str, str]) -> tuple[str, str]:
    """(DSN, where it came from): DATABASE_URL, else a running `emma up`'s embedded PostgreSQL."""
    from services.platform.config import PlatformConfig
    from services.platform.embedded_pg import start_embedded_postgres

    config = PlatformConfig.from_env(env)
    if config.database.url is not None:
        return config.database.url, "DATABASE_URL"
    state_dir = config.state.state_dir
    if not (state_dir / "pgdata" / "postmaster.pid").exists():
        raise ConfigError(f"DATABASE_URL is not set and no emma up is running on {state_dir} (see --state-dir)")
    # Attaches to the running server (and leaves it running: only its starter stops it).
    embedded = await asyncio.to_thread(start_embedded_postgres, state_dir)
    return embedded.uri(), f"the emma up in {state_dir}"
