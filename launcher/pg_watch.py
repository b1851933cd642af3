"""`emma up` starts its embedded PostgreSQL again when the server dies under it.

Without this, a killed or crashed server left `emma up` saying "ready" while every call answered
DATABASE_UNAVAILABLE and the background workers logged a failure a second until someone pressed Ctrl-C.
The services, the gateway and the edge daemons reconnect by themselves, and the edges resend from their
outboxes whatever was not stored, so starting the server again is all it takes. A server that keeps
dying (launcher/restarts.py), or does not start, stops `emma up` with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from launcher.restarts import RestartBudget
from services.errors import StartupError
from services.platform.embedded_pg import EmbeddedPostgres, start_embedded_postgres

CHECK_INTERVAL_S = 1.0
# After a kill -9 of the server its backends notice and exit within moments; until then the data folder's
# shared memory is in use and a new server refuses to start.
START_ATTEMPTS = 10
START_RETRY_S = 1.0


def postmaster_pid(pgdata: Path) -> int | None:
    """The running server's process id, None when no server runs on `pgdata`."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, as the server's own user
        return pid
    return None if _zombie(pid) else pid


def _zombie(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] == "Z"


async def _start_again(state_dir: Path) -> EmbeddedPostgres:
    """Start the server, retrying while the dead one's backends still hold the data folder; the last
    attempt's StartupError says why it would not start."""
    for _ in range(START_ATTEMPTS - 1):
        try:
            return await asyncio.to_thread(start_embedded_postgres, state_dir)
        except StartupError:
            await asyncio.sleep(START_RETRY_S)
    return await asyncio.to_thread(start_embedded_postgres, state_dir)


@contextlib.asynccontextmanager
async def embedded_postgres_kept_running(
    embedded: EmbeddedPostgres, state_dir: Path, say: Callable[[str], None]
) -> AsyncIterator[None]:
    """Within the block, start the embedded server again whenever it dies."""

    async def watch() -> None:
        budget = RestartBudget()
        while True:
            await asyncio.sleep(CHECK_INTERVAL_S)
            if postmaster_pid(embedded.pgdata) is not None:
                continue
            if not budget.spend():
                say(
                    f"emma up: the embedded PostgreSQL stopped {budget.deaths} times in {budget.window()}"
                    f" (its log: {embedded.pgdata / 'log'}); stopping"
                )
                os.kill(os.getpid(), signal.SIGTERM)  # the same clean shutdown as Ctrl-C
                return
            say("emma up: the embedded PostgreSQL stopped unexpectedly; starting it again")
            try:
                await _start_again(state_dir)
            except StartupError as exc:
                say(f"emma up: {exc}; stopping")
                os.kill(os.getpid(), signal.SIGTERM)
                return
            say("emma up: the embedded PostgreSQL runs again; services and edges reconnect by themselves")

    watcher = asyncio.create_task(watch(), name="embedded-postgres-watch")
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
