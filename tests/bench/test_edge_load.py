"""bench/edge_load.py, the ingest bench's load generator, against a real EdgeLink server: a stream that
is refused does not end the generator (until session 14 its first failure did, and the bench printed
nothing); it is counted by its status, and the other edges' batches are all acked."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from tests.support.bench_process import ROOT, bench_argv
from tests.support.cloud import Host, new_edge


async def _edge_load(port: int, keys: Path, *args: str) -> dict[str, Any]:
    """bench.edge_load run as the benchmark runs it (its own process) against `port`: its result line."""
    # Not bench_stdout: the server under test runs in this event loop, which a blocking run would stop.
    generator = await asyncio.create_subprocess_exec(
        *bench_argv("edge_load", "--port", str(port), "--keys", str(keys), *args),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(generator.communicate(), timeout=120)
    assert generator.returncode == 0
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def test_a_refused_stream_is_counted_and_the_other_edges_run_on(
    host: Host, db: asyncpg.Connection, tmp_path: Path
) -> None:
    prefix = f"load-{uuid.uuid4().hex[:6]}"
    edges = [await new_edge(db, f"{prefix}-{i}") for i in range(3)]
    bad_key = edges[1][2][: edges[1][2].rindex("_") + 1] + "wrong"
    keys = tmp_path / "keys.json"
    keys.write_text(
        json.dumps([{"edge": str(edge), "key": bad_key if i == 1 else key} for i, (edge, _, key) in enumerate(edges)])
    )
    async with host(["edge"]) as (server, _):
        result = await _edge_load(server.port, keys, "--edges", "3", "--points", "20", "--batches", "5")
    assert (result["acked"], result["points"]) == (10, 200)  # two edges, five 20-point batches each
    assert result["errors"] == 1
    assert result["stream_failures"] == {"UNAUTHENTICATED": 1}


async def test_with_hold_the_streams_go_on_unmeasured_before_they_close(
    host: Host, db: asyncpg.Connection, tmp_path: Path
) -> None:
    """The fleet bench's ending (session 15): at a fixed rate each edge goes on sending past its measured
    batches for --hold seconds; only the measured ones are counted and timed, the others are stored."""
    prefix = f"hold-{uuid.uuid4().hex[:6]}"
    edges = [await new_edge(db, f"{prefix}-{i}") for i in range(2)]
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps([{"edge": str(edge), "key": key} for edge, _, key in edges]))
    async with host(["edge"]) as (server, _):
        result = await _edge_load(
            server.port, keys, "--edges", "2", "--points", "10", "--rate", "5", "--duration", "1", "--hold", "1.1"
        )
    # Measured: the batches due in the first second, five per edge.
    assert (result["acked"], result["points"], result["errors"]) == (10, 100, 0)
    assert len(result["latencies_ms"]) == 10
    # Sent and stored: also those due in the 1.1 s after (the sixth to the eleventh), before the close.
    stored = await db.fetch(
        "SELECT edge_pk, max(batch_seq) AS last, count(*) AS n FROM telemetry.batch_ledger"
        " WHERE edge_pk = ANY($1) GROUP BY edge_pk",
        [pk for _, pk, _ in edges],
    )
    assert sorted((r["last"], r["n"]) for r in stored) == [(11, 11), (11, 11)]


async def test_as_fast_as_acked_each_edge_uploads_a_backlog_in_time_order(
    host: Host, db: asyncpg.Connection, tmp_path: Path
) -> None:
    """The throughput bench's shape (session 16): each batch of an edge goes on in time where the one
    before it ended, so no two batches of a series overlap (they used to all start at the current time,
    which made PostgreSQL insert into the middle of each series' index range), and the last one ends
    about now."""
    edge, edge_pk, key = await new_edge(db, f"backlog-{uuid.uuid4().hex[:6]}")
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps([{"edge": str(edge), "key": key}]))
    async with host(["edge"]) as (server, _):
        result = await _edge_load(server.port, keys, "--edges", "1", "--points", "100", "--batches", "4")
    assert (result["acked"], result["points"], result["errors"]) == (4, 400, 0)
    spans = await db.fetch(
        "SELECT batch_seq, min_time, max_time, now() - max_time AS age FROM telemetry.batch_ledger"
        " WHERE edge_pk = $1 ORDER BY batch_seq",
        edge_pk,
    )
    # 100 points of 50 channels: two samples per channel, 100 ms apart, so a batch covers 0.2 s.
    assert [(r["max_time"] - r["min_time"]).total_seconds() for r in spans] == [0.1] * 4
    assert [(b["min_time"] - a["min_time"]).total_seconds() for a, b in itertools.pairwise(spans)] == [0.2] * 3
    assert 0 <= spans[-1]["age"].total_seconds() < 60
