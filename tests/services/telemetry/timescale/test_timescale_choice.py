"""Which telemetry store migration 0006 chooses, on a server that has TimescaleDB.

(The plain server's side, where the extension cannot be created, is in tests/services/platform/test_platform.py.)
"""

from __future__ import annotations

import datetime as dt

import pytest

from services.platform import migrations
from tests.support.timescale import connect

UTC = dt.UTC


async def test_a_store_that_holds_data_stays_partitioned_unless_timescaledb_is_required(
    timescaledb_server: str,
) -> None:
    conn = await connect(timescaledb_server)
    try:
        loaded = migrations.load_migrations()
        before, timescale = loaded[:5], loaded[5]
        assert timescale.name == "0006_telemetry_timescaledb"
        await migrations.migrate(conn, before)
        await conn.execute(
            "INSERT INTO telemetry.samples (series_id, time, value) VALUES (1, $1, 2.5)", dt.datetime.now(UTC)
        )
        with pytest.raises(migrations.MigrationError, match="the plain store already holds data"):
            await migrations.migrate(conn, loaded, settings={"telemetry_store": "timescaledb"})
        notices: list[str] = []
        conn.add_log_listener(lambda _c, msg: notices.append(str(msg)))
        # 0006 first; later domains' migrations follow it.
        assert (await migrations.migrate(conn, loaded, settings={"telemetry_store": "auto"}))[0] == timescale.name
        assert await conn.fetchval("SELECT mode FROM telemetry.storage_info") == "partitioned"
        assert any("staying on the plain PostgreSQL path" in n for n in notices)
        assert await conn.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'") == 0
        assert await conn.fetchval("SELECT count(*) FROM telemetry.samples") == 1
    finally:
        await conn.close()
