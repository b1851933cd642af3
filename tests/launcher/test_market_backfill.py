"""`emma market backfill` as a real subprocess against a real PostgreSQL and the replay server
in-process (the test's event loop keeps serving while the command runs)."""

from __future__ import annotations

import asyncio
import os

import asyncpg

from launcher.market_replay import Fault
from tests.support.cli_process import EMMA
from tests.support.market_replay import ENTSOE_TOKEN, ESIOS_TOKEN, replay_server


async def backfill(url: str, database: str, *args: str) -> tuple[int, list[str], str]:
    env = {
        **os.environ,
        "DATABASE_URL": database,
        "EMMA_ENTSOE_TOKEN": ENTSOE_TOKEN,
        "EMMA_ESIOS_TOKEN": ESIOS_TOKEN,
        "EMMA_ENTSOE_URL": f"{url}/api",
        "EMMA_REDATA_URL": url,
        "EMMA_ESIOS_URL": url,
        "EMMA_MARKET_RETRIES": "1",
        "EMMA_MARKET_BACKOFF_S": "0.01",
        "EMMA_MARKET_BACKOFF_MAX_S": "0.02",
    }
    proc = await asyncio.create_subprocess_exec(
        EMMA,
        "market",
        "backfill",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode().splitlines(), err.decode()


async def test_backfill_stores_prints_one_line_per_document_and_exits_0(migrated_url: str) -> None:
    async with replay_server() as server:
        code, lines, err = await backfill(
            server.url, migrated_url, "--zone", "DE-LU", "--from", "2024-10-05", "--to", "2024-10-07"
        )
    assert code == 0, err
    body = lines[1:]
    # Two products (day-ahead, intraday) for three days: one line each.
    assert len(body) == 6, lines
    assert "day-ahead:10Y1001A1001A82H:2024-10-06 stored: " in "\n".join(body)
    assert "day-ahead:10Y1001A1001A82H:2024-10-05 no data" in body
    assert "intraday:10Y1001A1001A82H:2024-10-06 no data" in body
    conn = await asyncpg.connect(migrated_url)
    try:
        stored = await conn.fetchval("SELECT count(*) FROM market.prices WHERE zone = '10Y1001A1001A82H'")
    finally:
        await conn.close()
    assert stored > 0
    # Again: the same documents come back unchanged (the validators make it a 304).
    async with replay_server() as server:
        code, lines, err = await backfill(
            server.url,
            migrated_url,
            "--zone",
            "10Y1001A1001A82H",
            "--from",
            "2024-10-06",
            "--to",
            "2024-10-06",
            "--product",
            "day-ahead",
        )
    assert code == 0, err
    assert lines[1:] == ["day-ahead:10Y1001A1001A82H:2024-10-06 not modified"]


async def test_backfill_failures_print_their_reason_and_exit_1(migrated_url: str) -> None:
    async with replay_server(Fault(status=503, count=1000, source="entsoe")) as server:
        code, lines, err = await backfill(
            server.url,
            migrated_url,
            "--zone",
            "es",
            "--from",
            "2025-10-01",
            "--to",
            "2025-10-01",
            "--product",
            "day-ahead",
            "--product",
            "redata",
        )
    assert code == 1, (lines, err)
    failed = [line for line in lines if line.startswith("day-ahead:10YES-REE------0:2025-10-01 failed: ")]
    assert failed and "HTTP 503" in failed[0]
    assert ENTSOE_TOKEN not in "\n".join(lines) + err
    # REE answered (no recording of that day: its "no data"), so that line is not a failure.
    assert "redata:10YES-REE------0:2025-10-01 no data" in lines


async def test_backfill_refuses_bad_arguments_with_a_clear_error(migrated_url: str) -> None:
    for args, message in (
        (("--zone", "XX", "--from", "2025-10-01", "--to", "2025-10-02"), "neither a bidding zone"),
        (("--zone", "ES", "--from", "2025-10-07", "--to", "2025-10-01"), "is before --from"),
        (("--zone", "ES", "--from", "2020-01-01", "--to", "2025-10-01"), "more than 366 days"),
    ):
        code, _, err = await backfill("http://127.0.0.1:9", migrated_url, *args)
        assert code == 1 and message in err, err
    code, _, err = await backfill(
        "http://127.0.0.1:9", migrated_url, "--zone", "ES", "--from", "01/10/2025", "--to", "x"
    )
    assert code == 2 and "is not a date" in err
