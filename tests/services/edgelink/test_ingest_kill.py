"""kill -9 of the ingest server mid-stream: a real `emma serve edge` process is killed while a
real edge daemon streams to it; a new server starts on the same port; every batch the edge measured is
stored exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import asyncpg
from emma.edge.v1 import edge_link_pb2

from edge_daemon.daemon import EdgeDaemon
from edge_daemon.uplink import create_uplink
from tests.support.cli_process import EmmaProcess
from tests.support.cloud import new_edge
from tests.support.uplink import closed_port, ledger, site_config, until


def start_server(dsn: str, port: int, state: Path) -> EmmaProcess:
    proc = EmmaProcess(
        "serve",
        "edge",
        "--port",
        str(port),
        env={"DATABASE_URL": dsn, "EMMA_STATE_DIR": str(state), "EMMA_EDGE_HEARTBEAT_S": "1"},
    )
    proc.wait_for(f"on 127.0.0.1:{port}", timeout=60)
    return proc


async def test_kill_9_of_the_ingest_server_mid_stream_loses_nothing_and_stores_nothing_twice(
    tmp_path: Path, migrated_url: str
) -> None:
    db = await asyncpg.connect(migrated_url)
    try:
        edge, pk, key = await new_edge(db, "server-killed")
        port = closed_port()
        server = start_server(migrated_url, port, tmp_path / "state")
        config = site_config(tmp_path, endpoint=f"127.0.0.1:{port}", edge=str(edge), key=key)
        daemon = EdgeDaemon(config, uplink=create_uplink(config))
        await daemon.open()
        assert daemon.outbox is not None
        appended: dict[int, int] = {}  # batch_seq -> points, for every batch the edge measured
        append = daemon.outbox.append

        def recording(payload: bytes, **kwargs: float | None) -> int:
            seq = append(payload, **kwargs)
            appended[seq] = len(edge_link_pb2.TelemetryBatch.FromString(payload).values)
            return seq

        daemon.outbox.append = recording  # type: ignore[method-assign]
        runner = asyncio.create_task(daemon.run())
        try:
            await until(
                lambda: db.fetchval("SELECT count(*) >= 5 FROM telemetry.batch_ledger WHERE edge_pk = $1", pk),
                timeout=30,
                what="batches stored before the kill",
            )
            os.killpg(server.proc.pid, signal.SIGKILL)  # mid-stream: batches in flight, acks unsent
            server.proc.wait(10)
            killed_at = max(appended)
            await asyncio.sleep(1.5)  # the edge keeps measuring into its outbox
            server = start_server(migrated_url, port, tmp_path / "state")
            last = max(appended)
            assert last > killed_at

            async def caught_up() -> bool:
                seqs = {r.batch_seq for r in await ledger(db, pk)}
                return set(range(1, last + 1)) <= seqs

            await until(caught_up, timeout=60, what="every measured batch stored after the restart")
        finally:
            daemon.stop()
            await asyncio.gather(runner, return_exceptions=True)
            server.stop(signal.SIGTERM)
        rows = [r for r in await ledger(db, pk) if r.batch_seq <= last]
        assert [r.batch_seq for r in rows] == list(range(1, last + 1))  # each batch once, no holes
        assert {r.batch_seq: r.point_count for r in rows} == {s: appended[s] for s in range(1, last + 1)}
        stored = await db.fetchval(
            """SELECT count(*) FROM telemetry.samples s JOIN telemetry.series r ON r.id = s.series_id
               WHERE r.edge_pk = $1""",
            pk,
        )
        assert stored == sum(r.point_count for r in await ledger(db, pk))  # no sample written twice
    finally:
        await db.close()
