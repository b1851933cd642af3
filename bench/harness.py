"""Shared set-up for benchmarks: a database, cloud processes on loopback, statistics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import cast

import asyncpg

from services.platform import migrations
from services.platform.embedded_pg import start_embedded_postgres

ROOT = Path(__file__).resolve().parent.parent
EMMA = str(Path(sys.executable).with_name("emma"))


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median and spread of repeated runs."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": len(values),
    }


# How long before a request is due `until_due` stops sleeping and starts yielding (see there).
_SPIN_S = 0.002


async def until_due(due: float) -> float:
    """Return at `due` (the running loop's clock) and say how late that was, in ms.

    asyncio sleeps in epoll waits of whole milliseconds rounded up, so a plain sleep until a request is
    due sends it 0-1 ms late (0.6 ms at the median on the 2-core machine), and a latency timed from
    the due time counts that as the server's. Sleeping until shortly before and then yielding to the
    loop until the time has come sends on time; when this process is the one behind (a stall, a busy
    loop), the lateness stays in the figure, as it must (no coordinated omission), and is returned so
    the report can show the generator's own part.
    """
    loop = asyncio.get_running_loop()
    if due - loop.time() > _SPIN_S:
        await asyncio.sleep(due - loop.time() - _SPIN_S)
    while loop.time() < due:  # noqa: ASYNC110 (a turn of the loop per check is the point: no timer is this fine)
        await asyncio.sleep(0)
    return (loop.time() - due) * 1000


@contextlib.contextmanager
def database() -> Iterator[str]:
    """A fresh database: on DATABASE_URL's server if set, else on an embedded PostgreSQL."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    with tempfile.TemporaryDirectory(prefix="emma-bench-") as tmp:
        pg = start_embedded_postgres(Path(tmp), database="bench")
        try:
            yield pg.uri("bench")
        finally:
            pg.stop()


async def migrate(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        await migrations.migrate(conn)
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def cloud_process(
    dsn: str, services: str = "edge", env: dict[str, str] | None = None
) -> AsyncIterator[tuple[int, int, list[dict[str, object]]]]:
    """`emma serve <services>` as a separate process on a free port; yields (port, pid)."""
    proc = subprocess.Popen(
        [EMMA, "--log-level", "INFO", "serve", *services.split(), "--port", "0"],
        env={**os.environ, "DATABASE_URL": dsn, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    port = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = await asyncio.to_thread(proc.stdout.readline)
        if not line:
            break
        if " on 127.0.0.1:" in line:
            port = int(line.rsplit(":", 1)[1])
            break
    if not port:
        proc.kill()
        raise RuntimeError("emma serve did not start")
    # Keep draining its output so it never blocks on a full pipe; keep the ingest and alarm engine stats
    # lines.
    stats: list[dict[str, object]] = []

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            if '"ingest stats"' in line or '"alarm engine stats"' in line:
                stats.append(json.loads(line))

    drain = asyncio.create_task(asyncio.to_thread(pump))
    try:
        yield port, proc.pid, stats
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
        drain.cancel()


async def stop_processes(procs: Sequence[asyncio.subprocess.Process], grace_s: float = 10) -> None:
    """SIGTERM to each, in order; one that has not ended within `grace_s` is killed."""
    for proc in procs:
        proc.terminate()
        try:
            async with asyncio.timeout(grace_s):
                await proc.wait()
        except TimeoutError:
            proc.kill()


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_result(name: str, result: dict[str, object]) -> Path:
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    return path


def print_and_write(result: dict[str, object], output: Path) -> None:
    """Print a benchmark's result and keep it at `output` (a script's --output)."""
    print(json.dumps(result, indent=2, default=str))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2, default=str))
    print(f"written to {output}")


async def copy_samples(conn: asyncpg.Connection, payload: bytes | bytearray) -> None:
    """Load a binary COPY payload (services.telemetry's samples_copy_payload) into telemetry.samples."""

    async def chunks() -> AsyncIterator[bytes | bytearray]:
        yield payload

    await conn.copy_to_table(
        "samples",
        schema_name="telemetry",
        # asyncpg sends any buffer (its typing says bytes): the payload is not copied to pass it.
        source=cast("AsyncIterable[bytes]", chunks()),
        format="binary",
        columns=["series_id", "time", "value"],
    )


BENCH_ENV = {"EMMA_JWT_SIGNING_KEY": "bench-signing-key-" + "x" * 32}


async def login(dsn: str, port: int, org: str) -> list[tuple[str, str]]:
    """An admin of `org` logged in through IdentityService.Login: the call metadata to send."""
    import secrets as pysecrets

    from emma.identity.v1 import identity_pb2, identity_pb2_grpc

    from services.identity import accounts
    from services.identity.passwords import Passwords

    email, password = f"bench-{pysecrets.token_hex(4)}@{org}.bench", pysecrets.token_urlsafe(18)
    conn = await asyncpg.connect(dsn)
    try:
        await accounts.create_org(conn, org, org)
        await accounts.ensure_user(
            conn,
            Passwords(time_cost=1, memory_kib=8192, parallelism=1),
            email=email,
            password=password,
            org_id=org,
            role=3,
        )
    finally:
        await conn.close()
    import grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await identity_pb2_grpc.IdentityServiceStub(channel).Login(
            identity_pb2.LoginRequest(email=email, password=password)
        )
    return [("authorization", f"Bearer {reply.access_token}")]


def run_benchmark(name: str, doc: str | None, main_async: Callable[[bool], Awaitable[dict[str, object]]]) -> None:
    """The command line of a benchmark: `--quick` or not, print the result, write bench/results/<name>.json."""
    import argparse

    parser = argparse.ArgumentParser(description=(doc or name).splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (what `make bench` uses)")
    args = parser.parse_args()
    result = asyncio.run(main_async(args.quick))
    print(json.dumps(result, indent=2, default=str))
    print(f"written to {write_result(name, result)}")
