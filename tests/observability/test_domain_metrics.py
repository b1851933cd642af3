"""The domains' metrics and the edge batch trace, from a real `emma serve` process: telemetry over a real
EdgeLink stream, commands through their states, and a market fetch from the local replay server, seen in
Prometheus scrapes of EMMA_METRICS_PORT and received by OTLP/HTTP in the test.

Processes, as in test_otlp_and_scrape.py: the meter and tracer providers are per process, so every
value here is this process's own from zero (the asserts still compare before and after where a value
may have moved in an earlier test of this module).
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import grpc
import pytest
from emma.command.v1 import command_pb2, command_pb2_grpc
from emma.edge.v1 import edge_link_pb2
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.deploy.kubelet import free_port
from tests.observability.otlp_receiver import Receiver, attributes
from tests.observability.scrape import Samples, scrape, value
from tests.support.cli_process import EmmaProcess
from tests.support.cloud import new_edge
from tests.support.edge_client import EdgeStream, batch, battery_inventory, hello
from tests.support.identity import authed_channel, grant
from tests.support.market_replay import ENTSOE_TOKEN, ESIOS_TOKEN, replay_server

S = command_pb2
OTEL = {
    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    "OTEL_BSP_SCHEDULE_DELAY": "100",
    "OTEL_METRIC_EXPORT_INTERVAL": "300",
}
# The command edge's channel table: the battery's dynamic limits first, as the command tests do.
LIMITS = [("battery_1/MaxDischargePower", "W"), ("battery_1/MaxChargePower", "W"), ("battery_1/Soc", "%")]


@dataclass
class Serve:
    receiver: Receiver
    port: int
    metrics_url: str
    process: EmmaProcess


async def _start(receiver: Receiver, env: dict[str, str], *services: str) -> tuple[EmmaProcess, int, str]:
    metrics_port = free_port()
    process = EmmaProcess(
        "serve",
        *services,
        env={**OTEL, **env, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "EMMA_METRICS_PORT": str(metrics_port)},
    )
    line = await asyncio.to_thread(process.wait_for, "emma serve:", 60)
    port = re.search(r":(\d+)$", line)
    assert port is not None, line
    return process, int(port.group(1)), f"http://127.0.0.1:{metrics_port}/metrics"


def _stop(process: EmmaProcess) -> None:
    code = process.stop(signal.SIGTERM)
    assert code == 0, process.lines


@pytest.fixture(scope="module")
async def serve(migrated_url: str) -> AsyncIterator[Serve]:
    with Receiver() as receiver:
        env = {"DATABASE_URL": migrated_url, "EMMA_GRPC_PORT": "0", "EMMA_MARKET_SCHEDULER": "off"}
        process, port, metrics_url = await _start(receiver, env, "edge", "telemetry", "command", "registry", "identity")
        try:
            yield Serve(receiver, port, metrics_url, process)
        finally:
            _stop(process)


async def _until(serve: Serve, check: Callable[[Samples], bool], what: str, timeout: float = 20) -> Samples:
    """Scrape until `check` holds; fail with the last scrape."""
    deadline = time.monotonic() + timeout
    while True:
        samples, _ = await scrape(serve.metrics_url)
        if check(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not scraped within {timeout} s: {samples}")
        await asyncio.sleep(0.1)


async def test_telemetry_batches_are_counted_timed_and_traced_from_the_edge_batch_to_sql(
    serve: Serve, db: asyncpg.Connection
) -> None:
    edge, _, key = await new_edge(db, "obs-telemetry")
    before, types = await scrape(serve.metrics_url)
    stream = EdgeStream(serve.port)
    try:
        await stream.send(hello(str(edge), key))
        await stream.recv_kind("welcome")
        await _until(serve, lambda s: value(s, "emma_edge_connected") == 1, "one connected edge")

        now = time.time()
        await stream.send(batch(1, now, [(0, 0, 50.0), (1, 0, 1200.0), (2, 500, -300.0)]))
        assert (await stream.recv_ack()).result == edge_link_pb2.TELEMETRY_ACK_RESULT_STORED
        await stream.send(batch(1, now, [(0, 0, 50.0), (1, 0, 1200.0), (2, 500, -300.0)]))  # resent
        assert (await stream.recv_ack()).result == edge_link_pb2.TELEMETRY_ACK_RESULT_DUPLICATE
        await stream.send(batch(2, now, [(99, 0, 1.0)]))  # no channel 99 in the table
        assert (await stream.recv_ack()).result == edge_link_pb2.TELEMETRY_ACK_RESULT_REJECTED

        def delta(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        after, types = await scrape(serve.metrics_url)
        assert delta("emma_ingest_points_total") == 3  # the resent and the rejected batch store nothing
        assert delta("emma_ingest_batches_total", result="stored") == 1
        assert delta("emma_ingest_batches_total", result="duplicate") == 1
        assert delta("emma_ingest_batches_total", result="rejected") == 1
        assert delta("emma_ingest_ack_duration_seconds_count") == 3  # every ack, whatever its result
        buckets = [n for labels, n in after["emma_ingest_ack_duration_seconds_bucket"]]
        assert buckets == sorted(buckets) and buckets[-1] == value(after, "emma_ingest_ack_duration_seconds_count")
        assert value(after, "emma_edge_connected") == 1
        queues = {labels["queue"]: n for labels, n in after["emma_queue_depth"]}
        assert set(queues) >= {"ingest_writer", "edge_outbound", "ingest_pending_acks"}, queues
        assert all(n >= 0 for n in queues.values())
        assert types["emma_ingest_points_total"] == "counter" and types["emma_edge_connected"] == "gauge"
        assert types["emma_ingest_ack_duration_seconds"] == "histogram" and types["emma_queue_depth"] == "gauge"
    finally:
        await stream.close()
    await _until(serve, lambda s: value(s, "emma_edge_connected") == 0, "no connected edge after the disconnect")

    def batch_traces() -> tuple[Span, Span, list[Span], Span, list[Span]] | None:
        """the stored batch's span, its transaction, their SQL, and the rejected batch's span and SQL"""
        spans = [span for service, span in serve.receiver.spans() if service == "emma"]
        ours = [s for s in spans if s.name == "telemetry batch" and attributes(s.attributes)["emma.edge"] == str(edge)]
        stored = [s for s in ours if attributes(s.attributes).get("emma.result") == "stored"]
        rejected = [s for s in ours if attributes(s.attributes).get("emma.result") == "rejected"]
        if not stored or not rejected:
            return None
        transaction = [s for s in spans if s.name == "ingest transaction" and s.parent_span_id == stored[0].span_id]
        if not transaction:
            return None
        sql = [s for s in spans if s.parent_span_id == transaction[0].span_id]
        event_sql = [s for s in spans if s.parent_span_id == rejected[0].span_id]
        if not sql or not event_sql:
            return None
        return stored[0], transaction[0], sql, rejected[0], event_sql

    stored, transaction, sql, rejected, event_sql = serve.receiver.wait_for(batch_traces)
    # A batch is a trace of its own, whatever else the stream did.
    assert stored.parent_span_id == b"" and rejected.parent_span_id == b""
    assert stored.trace_id != rejected.trace_id
    assert {s.trace_id for s in [stored, transaction, *sql]} == {stored.trace_id}
    assert attributes(stored.attributes) == {
        "emma.edge": str(edge),
        "emma.batch_seq": 1,
        "emma.points": 3,
        "emma.result": "stored",
    }
    assert attributes(transaction.attributes)["emma.points"] == 3
    texts = [str(attributes(s.attributes)["db.query.text"]) for s in sql]
    # A small batch is stored by one statement (ledger and samples); a large one by COPY and statements.
    assert any("telemetry.batch_ledger" in t for t in texts), texts
    assert any("INSERT INTO telemetry.samples" in t or t == "COPY telemetry.samples" for t in texts), texts
    assert all(s.kind == Span.SPAN_KIND_CLIENT for s in sql)
    assert attributes(rejected.attributes)["emma.reason"] == "BATCH_UNKNOWN_CHANNEL"
    assert any("app.edge_events" in str(attributes(s.attributes)["db.query.text"]) for s in event_sql)
    # The ack is sent after the batch's span ends no earlier than its transaction.
    assert stored.end_time_unix_nano >= transaction.end_time_unix_nano

    def exported() -> dict[str, float] | None:
        """emma.ingest.points and emma.edge.connected pushed by OTLP"""
        last: dict[str, float] = {}
        for service, metric in serve.receiver.metric_points():
            if service == "emma" and metric.name in ("emma.ingest.points", "emma.edge.connected"):
                last[metric.name] = sum(p.as_int or p.as_double for p in metric.sum.data_points)
        return last if last.get("emma.ingest.points", 0) >= 3 and last.get("emma.edge.connected") == 0 else None

    serve.receiver.wait_for(exported)


async def test_a_replaced_and_a_cancelled_stream_both_leave_the_connected_gauge(
    serve: Serve, db: asyncpg.Connection
) -> None:
    edge, _, key = await new_edge(db, "obs-replaced")
    first = EdgeStream(serve.port)
    second = EdgeStream(serve.port)
    try:
        await first.send(hello(str(edge), key))
        await first.recv_kind("welcome")
        await second.send(hello(str(edge), key))  # the same edge again: the first stream is replaced
        await second.recv_kind("welcome")
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while True:
                await first.recv()
        assert ended.value.code() == grpc.StatusCode.ABORTED
        await _until(serve, lambda s: value(s, "emma_edge_connected") == 1, "the newer stream only")
        second.call.cancel()  # no half-close: the call is cut
        await _until(serve, lambda s: value(s, "emma_edge_connected") == 0, "no stream after the cancel")
    finally:
        await first.close()
        await second.close()


async def _wait_state(stub: command_pb2_grpc.CommandServiceStub, name: str, state: int) -> None:
    deadline = time.monotonic() + 15
    while True:
        command = await stub.GetCommand(S.GetCommandRequest(name=name))
        if command.state == state:
            return
        assert time.monotonic() < deadline, command
        await asyncio.sleep(0.05)


async def test_command_transitions_are_counted_by_state(serve: Serve, db: asyncpg.Connection) -> None:
    edge, _, key = await new_edge(db, "obs-commands")
    parked, _, parked_key = await new_edge(db, "obs-parked")
    token = (await grant(db, "acme", "admin")).token
    before, _ = await scrape(serve.metrics_url)

    async def online(name: str, edge_key: str) -> EdgeStream:
        stream = EdgeStream(serve.port)
        await stream.send(hello(name, edge_key, LIMITS, devices=[battery_inventory()]))
        await stream.recv_kind("welcome")
        await stream.send(batch(1, time.time(), [(0, 0, 4000.0), (1, 0, 4000.0), (2, 0, 50.0)]))
        await stream.recv_ack()
        return stream

    # An edge that declared its battery and went away: its command stays QUEUED until cancelled. Once
    # the gauge is back to 0 the replica has detached it, so nothing is delivered to it.
    gone = await online(str(parked), parked_key)
    await gone.close()
    await _until(serve, lambda s: value(s, "emma_edge_connected") == 0, "the parked edge gone")
    stream = await online(str(edge), key)
    async with authed_channel(serve.port, token) as channel:
        stub = command_pb2_grpc.CommandServiceStub(channel)

        async def create(target: object, watts: float) -> str:
            request = S.CreateCommandRequest(
                parent=str(target),
                request_id=f"obs-{target}-{watts}",
                command=S.Command(channel="battery_1/SetActivePower", value=watts),
            )
            return (await stub.CreateCommand(request)).name

        ends: list[tuple[int, int]] = [
            (edge_link_pb2.COMMAND_ACK_STATUS_EXECUTED, S.COMMAND_STATE_EXECUTED),
            (edge_link_pb2.COMMAND_ACK_STATUS_REJECTED, S.COMMAND_STATE_REJECTED_BY_EDGE),
            (edge_link_pb2.COMMAND_ACK_STATUS_FAILED, S.COMMAND_STATE_FAILED),
        ]
        for n, (status, state) in enumerate(ends):
            name = await create(edge, 1000.0 + n)
            delivered = (await stream.recv_kind("command")).command
            assert delivered.name == name
            if n == 0:
                ack = edge_link_pb2.CommandAck(command=name, status=edge_link_pb2.COMMAND_ACK_STATUS_RECEIVED)
                await stream.send(edge_link_pb2.ConnectRequest(command_ack=ack))
                await _wait_state(stub, name, S.COMMAND_STATE_RECEIVED)
            ack = edge_link_pb2.CommandAck(command=name, status=status, applied_value=1000.0 + n)  # type: ignore[arg-type]
            await stream.send(edge_link_pb2.ConnectRequest(command_ack=ack))
            await _wait_state(stub, name, state)
        queued = await create(parked, 500.0)
        await stub.CancelCommand(S.CancelCommandRequest(name=queued))
    await stream.close()

    expected = {
        "QUEUED": 4,
        "DELIVERED": 3,
        "RECEIVED": 1,
        "EXECUTED": 1,
        "REJECTED_BY_EDGE": 1,
        "FAILED": 1,
        "CANCELLED": 1,
    }

    def counted(samples: Samples) -> dict[str, float]:
        return {
            state: value(samples, "emma_command_transitions_total", state=state)
            - value(before, "emma_command_transitions_total", state=state)
            for state in expected
        }

    after = await _until(serve, lambda s: counted(s) == expected, "every transition")
    assert {labels["state"] for labels, _ in after["emma_command_transitions_total"]} <= set(expected)


@pytest.fixture
async def cleared_market(migrated_url: str) -> AsyncIterator[None]:
    conn = await asyncpg.connect(migrated_url)
    try:
        await conn.execute("TRUNCATE market.fetch_jobs, market.fetch_queries, market.source_status")
        yield
    finally:
        await conn.close()


async def _fetching_done(dsn: str) -> None:
    """Until no fetch job is due or being fetched (claimed jobs stay pending until they finish)."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + 60
        query = "SELECT count(*) FROM market.fetch_jobs WHERE state IN ('pending', 'retry') AND due_at <= now()"
        while await conn.fetchval(query):
            assert time.monotonic() < deadline, await conn.fetch("SELECT * FROM market.fetch_jobs")
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def test_the_market_data_age_gauge_after_a_fetch_from_the_replay(migrated_url: str, cleared_market: None) -> None:
    async with replay_server(redate=True) as replay:
        url = f"http://127.0.0.1:{replay.port}"
        env = {
            "DATABASE_URL": migrated_url,
            "EMMA_GRPC_PORT": "0",
            "EMMA_MARKET_SCHEDULER": "on",
            "EMMA_MARKET_SCHEDULER_INTERVAL_S": "0.2",
            "EMMA_MARKET_ZONES": "10Y1001A1001A82H",  # DE-LU, whose auctions the recordings hold
            "EMMA_MARKET_BORDERS": "",
            "EMMA_ENTSOE_TOKEN": ENTSOE_TOKEN,
            "EMMA_ESIOS_TOKEN": ESIOS_TOKEN,
            "EMMA_ENTSOE_URL": f"{url}/api",
            "EMMA_REDATA_URL": url,
            "EMMA_ESIOS_URL": url,
        }
        with Receiver() as receiver:
            started = datetime.now(UTC).timestamp()
            process, _, metrics_url = await _start(receiver, env, "market")
            try:
                deadline = time.monotonic() + 60
                while True:
                    samples, types = await scrape(metrics_url)
                    ages = {
                        (labels["source"], labels["document"]): age
                        for labels, age in samples.get("emma_market_data_age_seconds", [])
                    }
                    if ("entsoe", "day-ahead") in ages:
                        break
                    assert time.monotonic() < deadline, (samples, process.lines[-20:])
                    await asyncio.sleep(0.2)
                # Seconds since the fetch that stored a day-ahead document, which this process made.
                assert 0 <= ages[("entsoe", "day-ahead")] <= datetime.now(UTC).timestamp() - started
                assert types["emma_market_data_age_seconds"] == "gauge"
                await _fetching_done(migrated_url)
                first, _ = await scrape(metrics_url)
                await asyncio.sleep(1.0)
                again, _ = await scrape(metrics_url)
                # Read at collection: with nothing newer fetched the age grows with the clock.
                age = value(first, "emma_market_data_age_seconds", source="entsoe", document="day-ahead")
                later = value(again, "emma_market_data_age_seconds", source="entsoe", document="day-ahead")
                assert later - age >= 0.9, (age, later)

                def exported() -> bool:
                    """emma.market.data.age pushed by OTLP"""
                    return any(
                        service == "emma" and metric.name == "emma.market.data.age"
                        for service, metric in receiver.metric_points()
                    )

                await asyncio.to_thread(receiver.wait_for, exported)
            finally:
                await asyncio.to_thread(_stop, process)
