"""Shared pieces of the uplink tests: site files, a real cloud on a chosen port, a scriptable EdgeLink
stand-in for commands and schedules, and exactly-once checks against the telemetry store."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from emma.edge.v1 import edge_link_pb2, edge_link_pb2_grpc
from google.protobuf import duration_pb2

from edge_daemon.config import SiteConfig, demo_site_dict, parse_config
from edge_daemon.site_toml import write_site_toml
from edge_daemon.uplink.wire import timestamp, wire_channel
from services.cloud import hosted_services
from services.platform.config import ServerConfig
from services.platform.server import HostedServer, create_server, start_server
from tests.support.cloud import platform_config

EDGE_LINK = edge_link_pb2.DESCRIPTOR.services_by_name["EdgeLinkService"].full_name
SETPOINT = "battery_1/SetActivePower"


# -- site configuration ---------------------------------------------------------------------------


def site_doc(
    tmp: Path,
    *,
    endpoint: str,
    edge: str,
    key: str,
    period_s: float = 0.1,
    batch_interval_s: float = 0.2,
    **cloud: Any,
) -> dict[str, Any]:
    """The demo site at a fast cycle, with a [cloud] section and its key file written next to it."""
    (tmp / "edge.key").write_text(key + "\n")
    doc = demo_site_dict(period_s=period_s, outbox_path="outbox.sqlite")
    doc["telemetry"] = {"batch_interval_s": batch_interval_s}
    doc["cloud"] = {
        "endpoint": endpoint,
        "key_file": "edge.key",
        "edge": edge,
        "tls": False,
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.5,
        **cloud,
    }
    return doc


def site_config(tmp: Path, **kwargs: Any) -> SiteConfig:
    return parse_config(site_doc(tmp, **kwargs), tmp / "site.toml")


def write_toml(path: Path, doc: Mapping[str, Any]) -> Path:
    return write_site_toml(path, doc)


def closed_port() -> int:
    """A loopback port nobody listens on (bound and released at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(check: Callable[[], object | Awaitable[object]], timeout: float = 20, what: str = "") -> None:
    """Poll `check` (sync or async) until it is truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.05)


# -- the real cloud -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def real_cloud(dsn: str, port: int = 0) -> AsyncIterator[HostedServer]:
    """EdgeLinkService over the test database on 127.0.0.1:port (0 = any), heartbeats every second."""
    config = platform_config(dsn, heartbeat_interval_s=1.0)
    server_config = ServerConfig(port=port, shutdown_grace_s=0.2)
    async with hosted_services(["edge"], config, server_config=server_config) as (server, _):
        yield server


class TcpRelay:
    """A fixed loopback address in front of whichever cloud currently runs (servers get a fresh port
    each start, because the old port lingers in TIME_WAIT). With no upstream set, connections are
    accepted and closed at once, which the edge sees as an unavailable cloud."""

    def __init__(self) -> None:
        self.upstream: int | None = None
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    def cut(self) -> None:
        for task in list(self._pipes):
            task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.upstream is None:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)  # type: ignore[arg-type]
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._pipes.discard(task)  # type: ignore[arg-type]
            writer.close()
            up_writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()


# -- the telemetry store --------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerRow:
    batch_seq: int
    point_count: int
    received_time: float


async def ledger(db: asyncpg.Connection, edge_pk: int) -> list[LedgerRow]:
    rows = await db.fetch(
        "SELECT batch_seq, point_count, extract(epoch FROM received_time)::float8 AS t"
        " FROM telemetry.batch_ledger WHERE edge_pk = $1 ORDER BY batch_seq",
        edge_pk,
    )
    return [LedgerRow(r["batch_seq"], r["point_count"], r["t"]) for r in rows]


Point = tuple[str, int, float]  # (cloud channel address, time in ms since the epoch, value)


async def stored_points(db: asyncpg.Connection, edge_pk: int) -> Counter[Point]:
    rows = await db.fetch(
        "SELECT r.channel, (extract(epoch FROM s.time) * 1000000)::bigint AS us, s.value"
        " FROM telemetry.samples s JOIN telemetry.series r ON r.id = s.series_id WHERE r.edge_pk = $1",
        edge_pk,
    )
    return Counter((r["channel"], r["us"] // 1000, r["value"]) for r in rows)


# -- the outbox file, read as the test's own evidence -------------------------------------------


@dataclass
class OutboxContent:
    batches: dict[int, edge_link_pb2.TelemetryBatch]
    channels: dict[int, str]  # registry index -> cloud address

    def points(self, seqs: Iterable[int] | None = None) -> Counter[Point]:
        out: Counter[Point] = Counter()
        for seq in self.batches if seqs is None else seqs:
            out.update(batch_points(self.batches[seq], self.channels))
        return out


def batch_points(batch: edge_link_pb2.TelemetryBatch, channels: Mapping[int, str]) -> list[Point]:
    base_ms = batch.base_time.seconds * 1000 + batch.base_time.nanos // 1_000_000
    return [
        (channels[i], base_ms + off, v)
        for i, off, v in zip(batch.channel_indexes, batch.time_offsets_ms, batch.values, strict=True)
    ]


def registry_channels(conn: sqlite3.Connection) -> dict[int, str]:
    out = {}
    for index, name in conn.execute("SELECT channel_index, name FROM channel_registry"):
        address = wire_channel(name)
        if address is not None:
            out[int(index)] = address
    return out


def read_outbox(path: Path) -> OutboxContent:
    """Every batch still in an outbox file (the daemon may be dead or stopped)."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT batch_seq, payload FROM batches ORDER BY batch_seq").fetchall()
        batches = {int(s): edge_link_pb2.TelemetryBatch.FromString(p) for s, p in rows}
        return OutboxContent(batches, registry_channels(conn))
    finally:
        conn.close()


def outbox_count(path: Path) -> int:
    if not path.exists():
        return 0
    conn = sqlite3.connect(path, timeout=5)
    try:
        return int(conn.execute("SELECT count(*) FROM batches").fetchone()[0])
    except sqlite3.OperationalError:  # the daemon has not created the table yet
        return 0
    finally:
        conn.close()


# -- a scriptable EdgeLink for commands and schedules ---------------------------------------------


@dataclass
class FakeEdgeLink(edge_link_pb2_grpc.EdgeLinkServiceServicer):
    """Welcomes every Hello, acks every batch STORED and records everything the edge sends.

    The test pushes commands and schedules with `send`; `end_stream_when(predicate)` ends the stream
    with UNAVAILABLE right after receiving a matching message; `refuse` refuses new streams."""

    sessions: int = 0
    refuse: bool = False
    received: list[tuple[int, edge_link_pb2.ConnectRequest]] = field(default_factory=list)
    hellos: list[edge_link_pb2.Hello] = field(default_factory=list)
    last_stored: int = 0
    _end_when: Callable[[edge_link_pb2.ConnectRequest], bool] | None = None
    _out: asyncio.Queue[edge_link_pb2.ConnectResponse] | None = None

    def end_stream_when(self, predicate: Callable[[edge_link_pb2.ConnectRequest], bool] | None) -> None:
        self._end_when = predicate

    async def send(self, message: edge_link_pb2.ConnectResponse) -> None:
        await until(lambda: self._out is not None, what="an open stream")
        assert self._out is not None
        await self._out.put(message)

    def command_acks(self, name: str) -> list[tuple[int, edge_link_pb2.CommandAck]]:
        return [
            (s, r.command_ack)
            for s, r in self.received
            if r.WhichOneof("message") == "command_ack" and r.command_ack.command == name
        ]

    def schedule_acks(self, schedule_id: str) -> list[edge_link_pb2.ScheduleAck]:
        return [
            r.schedule_ack
            for _, r in self.received
            if r.WhichOneof("message") == "schedule_ack" and r.schedule_ack.schedule_id == schedule_id
        ]

    async def Connect(  # type: ignore[override]
        self, request_iterator: AsyncIterator[edge_link_pb2.ConnectRequest], context: Any
    ) -> AsyncIterator[edge_link_pb2.ConnectResponse]:
        requests = aiter(request_iterator)
        hello = await anext(requests)
        assert hello.WhichOneof("message") == "hello"
        self.hellos.append(hello.hello)
        if self.refuse:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "refusing streams")
        self.sessions += 1
        session = self.sessions
        out: asyncio.Queue[edge_link_pb2.ConnectResponse] = asyncio.Queue()
        self._out = out
        ended = asyncio.Event()

        async def read() -> None:
            async for request in requests:
                self.received.append((session, request))
                if request.WhichOneof("message") == "telemetry_batch":
                    seq = request.telemetry_batch.batch_seq
                    self.last_stored = max(self.last_stored, seq)
                    ack = edge_link_pb2.TelemetryAck(batch_seq=seq, result=edge_link_pb2.TELEMETRY_ACK_RESULT_STORED)
                    await out.put(edge_link_pb2.ConnectResponse(telemetry_ack=ack))
                if self._end_when is not None and self._end_when(request):
                    self._end_when = None
                    break
            ended.set()

        reader = asyncio.create_task(read())
        try:
            yield edge_link_pb2.ConnectResponse(
                welcome=edge_link_pb2.Welcome(
                    session_id=f"fake-{session}",
                    server_time=timestamp(time.time()),
                    last_stored_batch_seq=self.last_stored,
                    heartbeat_interval=duration_pb2.Duration(nanos=300_000_000),
                    max_batch_points=10_000,
                    max_unacked_batches=8,
                )
            )
            while not ended.is_set():
                getter = asyncio.create_task(out.get())
                stopper = asyncio.create_task(ended.wait())
                try:
                    done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    # Also when the stream is dropped while waiting: a getter left pending would be
                    # destroyed pending whenever the generator is collected, reported to a later test.
                    stopper.cancel()
                    if not getter.done():
                        getter.cancel()
                if getter in done:
                    yield getter.result()
            await context.abort(grpc.StatusCode.UNAVAILABLE, "stream ended by the test")
        finally:
            if self._out is out:
                self._out = None
            reader.cancel()


@contextlib.asynccontextmanager
async def fake_cloud(fake: FakeEdgeLink) -> AsyncIterator[HostedServer]:
    config = ServerConfig(port=0, shutdown_grace_s=0.1)
    server = create_server(config)
    edge_link_pb2_grpc.add_EdgeLinkServiceServicer_to_server(fake, server)
    hosted = await start_server(server, config, [EDGE_LINK])
    try:
        yield hosted
    finally:
        await hosted.drain(0.1)
