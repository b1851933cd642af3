"""What a servicer gets when it is built: configuration and the shared database pool."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg

from services.platform.config import PlatformConfig


@dataclass
class Runtime:
    config: PlatformConfig
    pool: asyncpg.Pool
    # The DSN the pool connects to (the embedded server's when DATABASE_URL is unset); LISTEN
    # connections need it because they live outside the pool.
    dsn: str = ""
    # What servicers made for the whole process (a shared HTTP client) and must close on shutdown:
    # registration.build_workers turns these into a worker that stops last, before the pool closes.
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list, repr=False)

    @property
    def replica_id(self) -> str:
        return self.config.server.replica_id

    def on_close(self, close: Callable[[], Awaitable[None]]) -> None:
        """Call `close` when the process shuts down (after the server drained, before the pool closes)."""
        self.closers.append(close)

    async def close(self) -> None:
        """Run the closers, last registered first; one that fails is logged and the others still run."""
        while self.closers:
            close = self.closers.pop()
            try:
                await close()
            except Exception:
                logging.getLogger("emma.platform").warning("a shutdown hook failed", exc_info=True)
