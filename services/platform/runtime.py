"""What a servicer gets when it is built: configuration and the shared database pool."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from services.platform.config import PlatformConfig


@dataclass
class Runtime:
    config: PlatformConfig
    pool: asyncpg.Pool
    # The DSN the pool connects to (the embedded server's when DATABASE_URL is unset); LISTEN
    # connections need it because they live outside the pool.
    dsn: str = ""

    @property
    def replica_id(self) -> str:
        return self.config.server.replica_id
