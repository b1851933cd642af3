"""Market benchmarks: parse and store a year of day-ahead prices, and read them back over gRPC.

    python -m bench.market [--quick]

1. Store: one ENTSO-E A44 document per zone and delivery day, as the Transparency Platform publishes
   them (the real documents' shape: tests/services/market/data/A44_DE-LU_*.xml; PT60M, curve type A03,
   so a price equal to the previous hour's is omitted), for 40 zones and the 365 days up to tomorrow:
   14,600 documents, 350,400 prices. Each is parsed with `services.market.documents.parse_document` and
   stored with `services.market.store.save_documents`, `--batch` documents per transaction (the
   fetch scheduler saves a fetch's documents as one batch), from `--connections` connections, parsed
   by `--parsers` worker processes ahead of the saves; or, with `--savers N`, by N processes that each
   parse their share in line and save it on a connection of their own (N replicas). Reference in the
   same run, into a table of the same shape (`LIKE market.prices INCLUDING ALL`, so the same primary
   key and index): a raw binary COPY of the same rows in 10,000-row transactions from 1, 2 and 4
   connections, both as asyncpg records and as bytes encoded before the clock starts; the goal
   compares with the best of these six in each run. A COPY of the same rows in the store's batches is reported too.
   Parsing alone is timed too.
2. Read: `emma serve identity market` as its own process (scheduler off), a token from
   IdentityService.Login, and the client in its own process (`python -m bench.market client ...`) on
   several connections, open loop at a stated rate: each request has a due time, and its latency runs
   from that time, so a slow answer delays no later request's clock (no coordinated omission).
   GetPriceCurve of one zone and one day (zone and day drawn at random from the stored ones), and the
   summaries of 40 zones: one BatchGetMarketSummaries, and 40 GetMarketSummary calls at once.

Every goal is run 3 times; the result holds each run and the median (min-max).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from bench.harness import (
    BENCH_ENV,
    ROOT,
    cloud_process,
    cpu_seconds,
    database,
    login,
    migrate,
    percentile,
    print_and_write,
    summary,
)
from bench.machine import describe
from services.market import MarketDocument, SaveOutcome, SaveResult
from services.market.binary_copy import CopyRows, int2, int4, int8, text
from services.market.documents import parse_document, parse_documents
from services.market.model import epoch_us
from services.market.store import PRICE_COLUMNS, save_documents
from services.market.zones import BIDDING_ZONES

# The first 40 bidding zones services/market/zones.py lists (the SDAC zones and IE-SEM).
ZONES: tuple[str, ...] = tuple(BIDDING_ZONES)[:40]
SUMMARY_COUNT = 40
# The SDAC delivery day is the CET/CEST day for every zone here.
MARKET_TZ = ZoneInfo("Europe/Brussels")
NAMESPACE = "urn:iec62325.351:tc57wg16:451-3:publicationdocument:7:3"
GOAL_RATIO = 0.5
GOAL_CURVE_P99_MS = 10.0
GOAL_SUMMARY_P99_MS = 50.0
COPY_ROWS_PER_TRANSACTION = 10_000
RUNS = 3


# --- the documents -----------------------------------------------------------------------------


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The UTC interval of a delivery day (23, 24 or 25 hours)."""
    start = datetime.combine(day, dtime(0), MARKET_TZ).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), dtime(0), MARKET_TZ).astimezone(UTC)
    return start, end


def delivery_days(count: int, today: date | None = None) -> list[date]:
    """`count` delivery days ending tomorrow (the day-ahead auction's latest), so today has prices."""
    today = today or datetime.now(MARKET_TZ).date()
    last = today + timedelta(days=1)
    return [last - timedelta(days=count - 1 - i) for i in range(count)]


def _utc(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def day_prices(rng: random.Random, base: float, hours: int) -> list[float]:
    """A day's hourly prices: a morning and evening peak, a midday dip that goes negative some days,
    and runs of equal prices (which an A03 curve omits)."""
    dip = rng.uniform(0, 1.4) * base
    out: list[float] = []
    for h in range(hours):
        if out and rng.random() < 0.15:
            out.append(out[-1])
            continue
        shape = 0.35 * (h in (7, 8, 9, 18, 19, 20)) - (dip / base) * (10 <= h <= 15)
        out.append(round(base * (1 + shape) + rng.gauss(0, base * 0.08), 2))
    return out


def a44_document(zone: str, day: date, prices: Sequence[float], mrid: str, created: datetime) -> bytes:
    """One zone's day-ahead prices of one day as the Transparency Platform's A44 answer: the header,
    element names and layout of the real documents, one TimeSeries, one PT60M Period, curve type A03
    (a position whose price equals the previous one's is left out)."""
    start, end = day_bounds(day)
    points = []
    for i, value in enumerate(prices):
        if i and value == prices[i - 1]:
            continue
        points.append(
            f"            <Point>\n                <position>{i + 1}</position>\n"
            f"                <price.amount>{value:g}</price.amount>\n            </Point>\n"
        )

    def interval(indent: str) -> str:
        return f"{indent}    <start>{_utc(start)}</start>\n{indent}    <end>{_utc(end)}</end>\n"

    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<Publication_MarketDocument xmlns="{NAMESPACE}">\n'
        f"    <mRID>{mrid}</mRID>\n"
        "    <revisionNumber>1</revisionNumber>\n"
        "    <type>A44</type>\n"
        '    <sender_MarketParticipant.mRID codingScheme="A01">10X1001A1001A450</sender_MarketParticipant.mRID>\n'
        "    <sender_MarketParticipant.marketRole.type>A32</sender_MarketParticipant.marketRole.type>\n"
        '    <receiver_MarketParticipant.mRID codingScheme="A01">10X1001A1001A450</receiver_MarketParticipant.mRID>\n'
        "    <receiver_MarketParticipant.marketRole.type>A33</receiver_MarketParticipant.marketRole.type>\n"
        f"    <createdDateTime>{created.strftime('%Y-%m-%dT%H:%M:%SZ')}</createdDateTime>\n"
        f"    <period.timeInterval>\n{interval('    ')}    </period.timeInterval>\n"
        "    <TimeSeries>\n"
        "        <mRID>1</mRID>\n"
        "        <auction.type>A01</auction.type>\n"
        "        <businessType>A62</businessType>\n"
        f'        <in_Domain.mRID codingScheme="A01">{zone}</in_Domain.mRID>\n'
        f'        <out_Domain.mRID codingScheme="A01">{zone}</out_Domain.mRID>\n'
        "        <contract_MarketAgreement.type>A01</contract_MarketAgreement.type>\n"
        "        <currency_Unit.name>EUR</currency_Unit.name>\n"
        "        <price_Measure_Unit.name>MWH</price_Measure_Unit.name>\n"
        "        <classificationSequence_AttributeInstanceComponent.position>1"
        "</classificationSequence_AttributeInstanceComponent.position>\n"
        "        <curveType>A03</curveType>\n"
        "        <Period>\n"
        f"            <timeInterval>\n{interval('            ')}            </timeInterval>\n"
        "            <resolution>PT60M</resolution>\n"
        f"{''.join(points)}"
        "        </Period>\n"
        "    </TimeSeries>\n"
        "</Publication_MarketDocument>\n"
    ).encode()


def generate(zones: Sequence[str], days: Sequence[date], seed: int = 15) -> list[tuple[str, bytes]]:
    """(name, document) per zone and day, in publication order (day by day, every zone of a day)."""
    rng = random.Random(seed)
    bases = {zone: rng.uniform(30, 130) for zone in zones}
    docs = []
    for day in days:
        start, end = day_bounds(day)
        hours = int((end - start) / timedelta(hours=1))
        created = datetime.combine(day - timedelta(days=1), dtime(11, 50), UTC)
        for zone in zones:
            mrid = f"{rng.getrandbits(128):032x}"
            prices = day_prices(rng, bases[zone], hours)
            docs.append((f"A44_{zone}_{day.isoformat()}.xml", a44_document(zone, day, prices, mrid, created)))
    return docs


def price_rows(doc: MarketDocument) -> list[tuple[object, ...]]:
    """The market.prices rows save_document writes for `doc` (the same columns, the same values)."""
    return [
        (
            p.zone,
            p.product.value,
            p.auction,
            p.sequence,
            p.geography,
            slot.start,
            int(p.resolution.total_seconds()),
            slot.value,
            p.currency,
            p.unit,
            doc.source.value,
            doc.document_id,
            doc.revision,
        )
        for p in doc.prices
        for slot in p.slots
    ]


# --- parse and store -----------------------------------------------------------------------------


def parse_all(docs: Sequence[tuple[str, bytes]]) -> tuple[list[MarketDocument], float]:
    started = time.perf_counter()
    parsed = [parse_document(data, name) for name, data in docs]
    return parsed, time.perf_counter() - started


async def _reset(dsn: str, tables: Sequence[str]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"TRUNCATE {', '.join(tables)}")
        await conn.execute(f"VACUUM ANALYZE {', '.join(tables)}")
    finally:
        await conn.close()


async def _workers(dsn: str, connections: int, work: Callable[[asyncpg.Connection], Awaitable[None]]) -> float:
    """Wall time of `connections` workers, each on its own connection, running `work` until done."""
    conns = [await asyncpg.connect(dsn) for _ in range(connections)]
    try:
        started = time.perf_counter()
        await asyncio.gather(*(work(c) for c in conns))
        return time.perf_counter() - started
    finally:
        for c in conns:
            await c.close()


def parse_batch(docs: Sequence[tuple[str, bytes]]) -> list[MarketDocument]:
    """Parse one batch (run in a worker process: the parser is pure Python and holds the GIL)."""
    return [parse_document(data, name) for name, data in docs]


async def store_run(
    dsn: str, docs: Sequence[tuple[str, bytes]], connections: int, batch: int, parsers: int
) -> dict[str, float]:
    """Parse and save every document: `batch` documents per `save_documents` call (one transaction,
    each document checked before anything is written), on `connections` connections, parsed by
    `parsers` worker processes ahead of the saves (0: parsed in the saving process, in line)."""
    await _reset(dsn, ["market.prices", "market.documents"])
    batches = [docs[i : i + batch] for i in range(0, len(docs), batch)]
    rows = 0
    outcomes: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    executor = ProcessPoolExecutor(parsers) if parsers else None
    try:
        if executor is not None:  # started before the clock runs, as a service's would be
            await asyncio.gather(*(loop.run_in_executor(executor, parse_batch, []) for _ in range(parsers)))
        # Parsed batches in order, at most two per connection ahead of the saves.
        ready: asyncio.Queue[asyncio.Future[list[MarketDocument]] | None] = asyncio.Queue(2 * connections)

        async def produce() -> None:
            for chunk in batches:
                if executor is not None:
                    await ready.put(loop.run_in_executor(executor, parse_batch, chunk))
                else:
                    done: asyncio.Future[list[MarketDocument]] = loop.create_future()
                    done.set_result(parse_batch(chunk))
                    await ready.put(done)
            for _ in range(connections):
                await ready.put(None)

        async def work(conn: asyncpg.Connection) -> None:
            nonlocal rows
            while (parsed := await ready.get()) is not None:
                for result in await save_documents(conn, await parsed, datetime.now(UTC)):
                    rows += result.written
                    outcomes[result.outcome.value] = outcomes.get(result.outcome.value, 0) + 1

        producer: list[asyncio.Task[None]] = []

        async def first(conn: asyncpg.Connection) -> None:
            if not producer:
                producer.append(asyncio.create_task(produce()))
            await work(conn)

        seconds = await _workers(dsn, connections, first)
        await producer[0]
    finally:
        if executor is not None:
            executor.shutdown()
    conn = await asyncpg.connect(dsn)
    try:
        stored = int(await conn.fetchval("SELECT count(*) FROM market.prices"))
    finally:
        await conn.close()
    assert outcomes == {SaveOutcome.STORED.value: len(docs)}, outcomes
    assert stored == rows, f"stored {stored} rows, save_documents reported {rows}"
    return {"seconds": seconds, "documents_per_s": len(docs) / seconds, "rows_per_s": rows / seconds}


def _saver_process(
    dsn: str, batches: Sequence[Sequence[tuple[str, bytes]]], ready: Any, go: Any
) -> tuple[float, float, int, dict[str, int]]:
    """One saving process of `savers_run`: connect, say so, wait for the common start, then parse each
    batch in line and save it on this process's own connection, parsing the next batch while the
    database writes the previous one (parse_documents gives the loop a turn after each document, so the
    save in flight moves on while the batch is parsed). (started, finished) on the system's monotonic
    clock."""

    async def run() -> tuple[float, float, int, dict[str, int]]:
        conn = await asyncpg.connect(dsn)
        try:
            ready.set()
            await asyncio.to_thread(go.wait)
            rows = 0
            outcomes: dict[str, int] = {}
            started = time.monotonic()
            pending: asyncio.Task[list[SaveResult]] | None = None
            for chunk in batches:
                # As the fetch scheduler parses a fetch: a turn for the loop after each document, in
                # which `pending` reads PostgreSQL's answer and sends its next statement.
                parsed = await parse_documents(chunk)
                if pending is not None:
                    for result in await pending:
                        rows += result.written
                        outcomes[result.outcome.value] = outcomes.get(result.outcome.value, 0) + 1
                pending = asyncio.create_task(save_documents(conn, parsed, datetime.now(UTC)))
                await asyncio.sleep(0)  # let the save send its first statements before parsing on
            if pending is not None:
                for result in await pending:
                    rows += result.written
                    outcomes[result.outcome.value] = outcomes.get(result.outcome.value, 0) + 1
            return started, time.monotonic(), rows, outcomes
        finally:
            await conn.close()

    return asyncio.run(run())


async def savers_run(dsn: str, docs: Sequence[tuple[str, bytes]], savers: int, batch: int) -> dict[str, float]:
    """Parse and save every document from `savers` processes, each a replica of its own: it parses
    its share of the batches in line (no parser pool, nothing pickled between processes) and saves
    them with `save_documents` on its own connection, `batch` documents per transaction. Batch i goes
    to process i % savers, so every process moves through the year in publication order. The clock
    runs from the common start (every process connected and holding its documents) to the last one
    done."""
    await _reset(dsn, ["market.prices", "market.documents"])
    batches = [docs[i : i + batch] for i in range(0, len(docs), batch)]
    manager = multiprocessing.get_context("spawn").Manager()
    try:
        go = manager.Event()
        readies = [manager.Event() for _ in range(savers)]
        with ProcessPoolExecutor(savers, mp_context=multiprocessing.get_context("spawn")) as pool:
            loop = asyncio.get_running_loop()
            futures = [
                loop.run_in_executor(pool, _saver_process, dsn, batches[k::savers], readies[k], go)
                for k in range(savers)
            ]
            for ready in readies:
                await asyncio.to_thread(ready.wait)
            go.set()
            done = await asyncio.gather(*futures)
    finally:
        manager.shutdown()
    seconds = max(d[1] for d in done) - min(d[0] for d in done)
    rows = sum(d[2] for d in done)
    outcomes: dict[str, int] = {}
    for d in done:
        for k, v in d[3].items():
            outcomes[k] = outcomes.get(k, 0) + v
    conn = await asyncpg.connect(dsn)
    try:
        stored = int(await conn.fetchval("SELECT count(*) FROM market.prices"))
    finally:
        await conn.close()
    assert outcomes == {SaveOutcome.STORED.value: len(docs)}, outcomes
    assert stored == rows, f"stored {stored} rows, save_documents reported {rows}"
    return {"seconds": seconds, "documents_per_s": len(docs) / seconds, "rows_per_s": rows / seconds}


COPY_TABLE = "bench_market.prices"


async def _copy_table(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE SCHEMA IF NOT EXISTS bench_market")
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {COPY_TABLE} (LIKE market.prices INCLUDING ALL)")
    finally:
        await conn.close()


async def copy_run(dsn: str, chunks: Sequence[Sequence[tuple[object, ...]]], connections: int) -> float:
    """Rows/s of binary COPY of `chunks` (one transaction each) into the copy of market.prices."""
    await _reset(dsn, [COPY_TABLE])
    queue = iter(chunks)

    async def work(conn: asyncpg.Connection) -> None:
        for chunk in queue:
            async with conn.transaction():
                await conn.copy_records_to_table("prices", schema_name="bench_market", records=chunk)

    seconds = await _workers(dsn, connections, work)
    return sum(len(c) for c in chunks) / seconds


def encoded(rows: Sequence[tuple[Any, ...]]) -> tuple[int, memoryview]:
    """`rows` (price_rows) as one binary COPY stream, encoded before any clock runs."""
    out = CopyRows(len(PRICE_COLUMNS))
    for zone, product, auction, sequence, geography, start, res, value, currency, unit, source, doc, rev in rows:
        out.series(
            text(zone) + int2(product) + int2(auction) + int4(sequence) + text(geography),
            [epoch_us(start)],
            int4(res),
            [value],
            text(currency) + text(unit) + text(source) + text(doc) + int8(rev),
        )
    return out.rows, out.payload()


async def copy_bytes_run(dsn: str, chunks: Sequence[tuple[int, memoryview]], connections: int) -> float:
    """Rows/s of binary COPY of already encoded chunks (one transaction each): PostgreSQL's side of a
    COPY alone, no client encoding at all (the store path encodes its rows itself, so the reference
    must not be weakened by asyncpg's record encoding)."""
    await _reset(dsn, [COPY_TABLE])
    queue = iter(chunks)

    async def work(conn: asyncpg.Connection) -> None:
        for _, buffer in queue:
            payload: Any = buffer  # asyncpg copies from any buffer; its stubs name files and iterables
            async with conn.transaction():
                await conn.copy_to_table(
                    "prices", schema_name="bench_market", source=payload, columns=PRICE_COLUMNS, format="binary"
                )

    seconds = await _workers(dsn, connections, work)
    return sum(n for n, _ in chunks) / seconds


async def store_benchmark(
    dsn: str, docs: Sequence[tuple[str, bytes]], connections: int, batch: int, parsers: int, savers: int = 0
) -> dict[str, object]:
    if savers:  # the path's connections: one per saving process
        connections = savers
    parse_docs_s, parse_rows_s = [], []
    parsed: list[MarketDocument] = []
    for _ in range(RUNS):
        parsed, seconds = parse_all(docs)
        parse_docs_s.append(len(docs) / seconds)
        parse_rows_s.append(sum(len(s.slots) for d in parsed for s in d.prices) / seconds)
    per_document = [price_rows(d) for d in parsed]
    rows = [r for chunk in per_document for r in chunk]
    bulk = [rows[i : i + COPY_ROWS_PER_TRANSACTION] for i in range(0, len(rows), COPY_ROWS_PER_TRANSACTION)]
    bulk_bytes = [encoded(chunk) for chunk in bulk]
    same_batches = [
        [r for chunk in per_document[i : i + batch] for r in chunk] for i in range(0, len(per_document), batch)
    ]
    await _copy_table(dsn)
    runs: list[dict[str, float]] = []
    for _ in range(RUNS):
        run: dict[str, float] = {}
        for n in (1, 2, 4):
            run[f"copy_{n}_rows_per_s"] = await copy_run(dsn, bulk, n)
            run[f"copy_encoded_{n}_rows_per_s"] = await copy_bytes_run(dsn, bulk_bytes, n)
        run["copy_same_batches_rows_per_s"] = await copy_run(dsn, same_batches, connections)
        # Last, so the year stays stored for the read benchmarks.
        if savers:
            stored = await savers_run(dsn, docs, savers, batch)
        else:
            stored = await store_run(dsn, docs, connections, batch, parsers)
        run["store_documents_per_s"] = stored["documents_per_s"]
        run["store_rows_per_s"] = stored["rows_per_s"]
        # The strongest reference: the best of every COPY above (records or pre-encoded, 1, 2 or 4
        # connections), whichever won this run.
        run["best_copy_rows_per_s"] = max(run[f"copy_{k}{n}_rows_per_s"] for k in ("", "encoded_") for n in (1, 2, 4))
        run["same_connections_copy_rows_per_s"] = run[f"copy_{connections}_rows_per_s"]
        run["ratio_to_best_copy"] = run["store_rows_per_s"] / run["best_copy_rows_per_s"]
        run["ratio_to_same_connections_copy"] = run["store_rows_per_s"] / run["same_connections_copy_rows_per_s"]
        run["ratio_to_copy_same_batches"] = run["store_rows_per_s"] / run["copy_same_batches_rows_per_s"]
        runs.append(run)
        print(json.dumps({"store_run": run}), flush=True)
    await _reset(dsn, [COPY_TABLE])
    ratios = [r["ratio_to_best_copy"] for r in runs]
    return {
        "connections": connections,
        "documents_per_transaction": batch,
        "parse_processes": 0 if savers else parsers,
        "saving_processes": savers or 1,
        "path": (
            f"{savers} processes, each parsing in line and saving on its own connection"
            if savers
            else f"one saving process on {connections} connection(s), {parsers} parser process(es)"
        ),
        "parse_documents_per_s": summary(parse_docs_s),
        "parse_rows_per_s": summary(parse_rows_s),
        "store_documents_per_s": summary([r["store_documents_per_s"] for r in runs]),
        "store_rows_per_s": summary([r["store_rows_per_s"] for r in runs]),
        **{f"copy_{n}_rows_per_s": summary([r[f"copy_{n}_rows_per_s"] for r in runs]) for n in (1, 2, 4)},
        **{
            f"copy_encoded_{n}_rows_per_s": summary([r[f"copy_encoded_{n}_rows_per_s"] for r in runs])
            for n in (1, 2, 4)
        },
        "best_copy_rows_per_s": summary([r["best_copy_rows_per_s"] for r in runs]),
        "copy_same_batches_rows_per_s": summary([r["copy_same_batches_rows_per_s"] for r in runs]),
        "ratio_to_best_copy": summary([r["ratio_to_best_copy"] for r in runs]),
        "ratio_to_same_connections_copy": summary([r["ratio_to_same_connections_copy"] for r in runs]),
        "ratio_to_copy_same_batches": summary([r["ratio_to_copy_same_batches"] for r in runs]),
        "goal": (
            f"parse + store rows/s >= {GOAL_RATIO} of the best raw COPY of the same rows into the same table"
            " and indexes in the same run (10,000-row transactions; 1, 2 or 4 connections; asyncpg records or"
            " pre-encoded binary)"
        ),
        "met": all(r >= GOAL_RATIO for r in ratios),
        "copy_rows_per_transaction": COPY_ROWS_PER_TRANSACTION,
        "runs": runs,
    }


# --- reading over gRPC: the client process -------------------------------------------------------


def _timestamp(value: datetime) -> Any:
    from google.protobuf import timestamp_pb2

    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


async def open_loop(call: Callable[[int], Awaitable[None]], rate: float, count: int, warmup: int) -> dict[str, object]:
    """Start request i at its due time t0 + i / rate whatever the earlier ones are doing; its latency
    runs from the due time, so time spent waiting to be sent counts. The first `warmup` are not kept."""
    import grpc

    latencies: list[float] = []
    errors: dict[str, int] = {}
    send_lag: list[float] = []
    t0 = time.perf_counter() + 0.05

    async def one(i: int, due: float) -> None:
        try:
            await call(i)
        except grpc.aio.AioRpcError as exc:
            errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
            return
        if i >= warmup:
            latencies.append((time.perf_counter() - due) * 1000)

    tasks = []
    for i in range(warmup + count):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        send_lag.append((time.perf_counter() - due) * 1000)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    return {
        "samples": len(latencies),
        "errors": errors,
        "rate_per_s": rate,
        "achieved_per_s": (warmup + count) / elapsed,
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies, default=float("nan")),
        "client_send_lag_p99_ms": percentile(send_lag, 0.99),
    }


async def client_main(args: argparse.Namespace) -> dict[str, object]:
    import grpc
    from emma.market.v1 import market_pb2, market_pb2_grpc

    auth = (("authorization", f"Bearer {args.token}"),)
    # A local subchannel pool per channel: each is its own TCP connection, not one shared underneath.
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{args.port}", options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(args.connections)
    ]
    stubs = [market_pb2_grpc.MarketDataServiceStub(c) for c in channels]
    rng = random.Random(args.seed)
    days = [date.fromisoformat(args.first_day) + timedelta(days=i) for i in range(args.days)]
    zones = args.zones.split(",")

    async def curve(i: int) -> None:
        zone, day = rng.choice(zones), rng.choice(days)
        start, end = day_bounds(day)
        reply = await stubs[i % len(stubs)].GetPriceCurve(
            market_pb2.GetPriceCurveRequest(
                series=market_pb2.SeriesSelector(zone=zone), start_time=_timestamp(start), end_time=_timestamp(end)
            ),
            metadata=auth,
        )
        assert len(reply.points) == int((end - start) / timedelta(hours=1)), (zone, day, len(reply.points))

    async def batch(i: int) -> None:
        reply = await stubs[i % len(stubs)].BatchGetMarketSummaries(
            market_pb2.BatchGetMarketSummariesRequest(zones=zones), metadata=auth
        )
        assert len(reply.summaries) == len(zones) and all(s.HasField("current") for s in reply.summaries)

    async def parallel(i: int) -> None:
        replies = await asyncio.gather(
            *(
                stubs[(i + k) % len(stubs)].GetMarketSummary(market_pb2.GetMarketSummaryRequest(zone=z), metadata=auth)
                for k, z in enumerate(zones)
            )
        )
        assert all(r.HasField("current") for r in replies)

    calls: dict[str, Callable[[int], Awaitable[None]]] = {"curve": curve, "batch": batch, "parallel": parallel}
    try:
        for ch in channels:
            await ch.channel_ready()
        return await open_loop(calls[args.kind], args.rate, args.count, args.warmup)
    finally:
        for ch in channels:
            await ch.close()


# --- reading over gRPC: the benchmark side -------------------------------------------------------


async def run_client(port: int, token: str, kind: str, zones: Sequence[str], days: Sequence[date], **load: Any) -> Any:
    argv = [
        sys.executable,
        "-m",
        "bench.market",
        "client",
        "--port",
        str(port),
        "--token",
        token,
        "--kind",
        kind,
        "--zones",
        ",".join(zones),
        "--first-day",
        days[0].isoformat(),
        "--days",
        str(len(days)),
        *(x for k, v in load.items() for x in (f"--{k.replace('_', '-')}", str(v))),
    ]
    out = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary_zones(zones: Sequence[str]) -> list[str]:
    """40 zones for the summaries, which need a zone's local day, so only listed ones (all 40 stored
    zones are; with --zones N fewer, they repeat)."""
    listed = [z for z in zones if z in BIDDING_ZONES]
    return [listed[i % len(listed)] for i in range(SUMMARY_COUNT)]


async def read_benchmark(
    dsn: str, zones: Sequence[str], days: Sequence[date], quick: bool, samples: int | None
) -> dict[str, object]:
    # (kind, zones, requests per second, samples per run, goal p99 ms)
    plans = [
        ("curve", zones, 200.0, samples or 1500, GOAL_CURVE_P99_MS),
        ("batch", summary_zones(zones), 10.0, samples or (300 if quick else 1000), GOAL_SUMMARY_P99_MS),
        ("parallel", summary_zones(zones), 10.0, samples or (300 if quick else 1000), GOAL_SUMMARY_P99_MS),
    ]
    connections = 4
    out: dict[str, object] = {}
    env = {**BENCH_ENV, "EMMA_MARKET_SCHEDULER": "off"}
    async with cloud_process(dsn, "identity market", env=env) as (port, pid, _stats):
        token = (await login(dsn, port, "bench"))[0][1].removeprefix("Bearer ")
        for kind, zones, rate, count, goal in plans:
            runs = []
            for _ in range(RUNS):
                cpu0, t0 = cpu_seconds(pid), time.perf_counter()
                result = await run_client(
                    port,
                    token,
                    kind,
                    zones,
                    days,
                    rate=rate,
                    count=count,
                    warmup=min(50, count),
                    connections=connections,
                )
                result["server_cpu_cores"] = (cpu_seconds(pid) - cpu0) / (time.perf_counter() - t0)
                runs.append(result)
                print(json.dumps({kind: result}), flush=True)
            assert all(not r["errors"] for r in runs), runs
            p99 = [float(r["p99_ms"]) for r in runs]
            out[kind] = {
                "zones": len(zones),
                "rate_per_s": rate,
                "client_connections": connections,
                "samples_per_run": count,
                "p50_ms": summary([float(r["p50_ms"]) for r in runs]),
                "p99_ms": summary(p99),
                "goal": f"p99 < {goal:g} ms",
                "met": all(p < goal for p in p99),
                "runs": runs,
            }
    return out


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    days = delivery_days(args.days or (28 if args.quick else 365))
    zones = ZONES[: args.zones]
    docs = generate(zones, days)
    with database() as dsn:
        version = await migrate(dsn)
        command = "python -m bench.market" + " ".join(
            [
                "",
                *(["--quick"] if args.quick else []),
                *([f"--connections {args.connections}"] if args.connections != 2 else []),
                *([f"--batch {args.batch}"] if args.batch != 100 else []),
                *([f"--parsers {args.parsers}"] if args.parsers != 1 else []),
                *([f"--savers {args.savers}"] if args.savers else []),
                *([f"--only {args.only}"] if args.only else []),
            ]
        )
        result: dict[str, object] = {
            "machine": describe(version),
            "command": command,
            "dataset": {
                "zones": len(zones),
                "days": len(days),
                "first_day": days[0].isoformat(),
                "last_day": days[-1].isoformat(),
                "documents": len(docs),
                "xml_mib": round(sum(len(d) for _, d in docs) / 2**20, 1),
                "shape": "ENTSO-E A44, one document per zone and day, PT60M, curve type A03",
            },
        }
        print(json.dumps(result), flush=True)
        if args.only in ("", "store"):
            result["store"] = await store_benchmark(dsn, docs, args.connections, args.batch, args.parsers, args.savers)
        elif args.savers:  # the year stored once, untimed, for the read benchmarks
            await savers_run(dsn, docs, args.savers, args.batch)
        else:
            await store_run(dsn, docs, args.connections, args.batch, args.parsers)
        if args.only in ("", "read"):
            result["read"] = await read_benchmark(dsn, zones, days, args.quick, args.samples)
    return result


def main() -> None:
    if sys.argv[1:2] == ["client"]:
        p = argparse.ArgumentParser(prog="python -m bench.market client")
        p.add_argument("client")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--token", required=True)
        p.add_argument("--kind", choices=("curve", "batch", "parallel"), required=True)
        p.add_argument("--zones", required=True)
        p.add_argument("--first-day", required=True)
        p.add_argument("--days", type=int, required=True)
        p.add_argument("--rate", type=float, required=True)
        p.add_argument("--count", type=int, required=True)
        p.add_argument("--warmup", type=int, default=50)
        p.add_argument("--connections", type=int, default=4)
        p.add_argument("--seed", type=int, default=21)
        sys.stdout.write(json.dumps(asyncio.run(client_main(p.parse_args()))) + "\n")
        return
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="28 days instead of 365, fewer summary samples")
    p.add_argument("--connections", type=int, default=2, choices=(1, 2, 4), help="store path connections")
    p.add_argument("--batch", type=int, default=100, help="documents per save_documents transaction")
    p.add_argument("--parsers", type=int, default=1, help="parser worker processes (0: parse in line)")
    p.add_argument("--zones", type=int, default=len(ZONES), help="the first N of the 40 zones (smoke tests)")
    p.add_argument("--days", type=int, default=0, help="delivery days (default 365, --quick 28)")
    p.add_argument("--samples", type=int, default=0, help="requests per latency run (smoke tests)")
    p.add_argument(
        "--savers",
        type=int,
        default=0,
        choices=(0, 1, 2, 4),
        help="N processes each parsing in line and saving on its own connection (0: one saving process"
        " fed by --parsers on --connections)",
    )
    p.add_argument("--only", choices=("store", "read"), default="", help="one of the two benchmarks")
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "market.json")
    args = p.parse_args()
    result = asyncio.run(main_async(args))
    print_and_write(result, args.output)


if __name__ == "__main__":
    main()
