"""`emma up`: the whole stack on one machine.

Embedded PostgreSQL under the state folder (unless DATABASE_URL is set), migrations, every cloud
service in one gRPC server, a demo organization with its admin. Ctrl-C stops everything; a second run
reuses the data.
"""

from __future__ import annotations

import asyncio
import sys

from services import catalog
from services.cloud import hosted_services
from services.platform.config import PlatformConfig
from services.platform.embedded_pg import EmbeddedPostgres, start_embedded_postgres
from services.platform.server import HostedServer, wait_for_shutdown_signal


def _say(line: str) -> None:
    print(line, flush=True)


async def run_up(config: PlatformConfig) -> None:
    config.state.state_dir.mkdir(parents=True, exist_ok=True)
    embedded: EmbeddedPostgres | None = None
    dsn = config.database.url
    if dsn is None:
        _say(f"emma up: starting embedded PostgreSQL in {config.state.state_dir / 'pgdata'}")
        embedded = await asyncio.to_thread(start_embedded_postgres, config.state.state_dir)
        dsn = embedded.uri()
    try:

        def announce(hosted: HostedServer) -> None:
            _say(f"emma up: gRPC services on {config.server.host}:{hosted.port}")
            for spec in catalog.resolve(["all"]):
                state = "serving" if spec.factory else f"UNIMPLEMENTED until {spec.issue}"
                _say(f"  {spec.full_name:<36} {state}")
            _say("  grpc.health.v1.Health and server reflection are on")
            where = "embedded" if embedded else "external"
            _say(f"emma up: database {where}; state in {config.state.state_dir}")
            _say("emma up: ready; press Ctrl-C to stop")

        async with hosted_services(["all"], config, dsn=dsn, apply_migrations=True) as (hosted, runtime):
            # The demo organization, its admin (password printed once) and its edge's key.
            from services.identity.admin_cli import ensure_demo

            async with runtime.pool.acquire() as conn:
                await ensure_demo(conn, config, _say)
            announce(hosted)
            await wait_for_shutdown_signal()
        _say("emma up: stopped")
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        sys.stdout.flush()
