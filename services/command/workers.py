"""The command timers: queued commands whose TTL passed, delivered commands the edge never finished.

State lives in PostgreSQL, so these survive restarts; each pass is one guarded statement with
FOR UPDATE SKIP LOCKED, so any number of replicas can run them at the same time.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from core.metrics import record_command_transition
from core.tasks import stop_task
from services.command import states
from services.command.transitions import bulk_transition_sql
from services.platform.db import log_failed_pass

log = logging.getLogger("emma.command.workers")

EDGE_TIMEOUT_S = 5.0
INTERVAL_S = 0.5

EXPIRE_QUEUED = bulk_transition_sql(
    states.FAILED,
    "expire_time <= now() AND state = 'QUEUED'",
    "TIMEOUT_IN_QUEUE",
    "the TTL passed before the edge was reachable",
)
TIME_OUT_DELIVERED = bulk_transition_sql(
    states.FAILED,
    f"state IN ('DELIVERED', 'RECEIVED') AND delivered_time <= now() - interval '{EDGE_TIMEOUT_S} seconds'",
    "EDGE_TIMEOUT",
    f"no final acknowledgement within {EDGE_TIMEOUT_S:.0f} s of delivery",
)


class CommandWorkers:
    def __init__(self, pool: asyncpg.Pool, replica_id: str) -> None:
        self._pool = pool
        self._replica_id = replica_id
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="command-workers")

    async def stop(self) -> None:
        await stop_task(self._task)

    async def run_once(self) -> int:
        failed = 0
        async with self._pool.acquire() as conn:
            for sql, reason in ((EXPIRE_QUEUED, "TIMEOUT_IN_QUEUE"), (TIME_OUT_DELIVERED, "EDGE_TIMEOUT")):
                async with conn.transaction():
                    rows = await conn.fetch(sql, self._replica_id)
                if rows:
                    record_command_transition(states.FAILED, len(rows))
                for r in rows:
                    log.info("command failed", extra={"command_id": str(r["id"]), "reason": reason})
                failed += len(rows)
        return failed

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:
                log_failed_pass(log, "command workers failed")
            await asyncio.sleep(INTERVAL_S)
