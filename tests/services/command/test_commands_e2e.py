"""Commands end to end with a real edge daemon (simulated battery, real uplink) and the real cloud."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
from emma.command.v1 import command_pb2, command_pb2_grpc

from edge_daemon.daemon import EdgeDaemon
from edge_daemon.uplink import create_uplink
from services.names import EdgeName
from tests.support.cloud import Host, new_edge
from tests.support.identity import authed_channel
from tests.support.uplink import SETPOINT, TcpRelay, site_config, until

S = command_pb2


@dataclass
class Site:
    edge: EdgeName
    daemon: EdgeDaemon
    relay: TcpRelay
    stub: command_pb2_grpc.CommandServiceStub

    def battery_power_w(self) -> float:
        value = self.daemon.store.get("battery_1/ActivePower")
        assert value is not None
        return float(value.value)


@pytest.fixture
def edge_log() -> Iterator[list[logging.LogRecord]]:
    """Log records of the edge daemon and the cloud's command relay (both run in this process)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.INFO)
    loggers = [logging.getLogger("edge_daemon"), logging.getLogger("emma.command")]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    try:
        yield records
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


@pytest.fixture
async def site(host: Host, db: asyncpg.Connection, token: str, tmp_path: Path) -> AsyncIterator[Site]:
    edge, _, key = await new_edge(db, f"e2e-{uuid.uuid4().hex[:6]}")
    async with host(["edge", "command"], heartbeat_interval_s=1.0) as (server, _):
        relay = TcpRelay()  # lets a test cut the edge's connection
        relay.upstream = server.port
        await relay.start()
        # A 0.5 s cycle leaves a visible gap between RECEIVED and EXECUTED.
        config = site_config(tmp_path, endpoint=f"127.0.0.1:{relay.port}", edge=str(edge), key=key, period_s=0.5)
        daemon = EdgeDaemon(config, uplink=create_uplink(config))
        runner = asyncio.create_task(daemon.run())
        try:
            async with authed_channel(server.port, token) as channel:
                stub = command_pb2_grpc.CommandServiceStub(channel)
                # Ready when the cloud knows the battery and has fresh limits from its telemetry.
                await until(
                    lambda: db.fetchval(
                        """SELECT count(*) FROM telemetry.latest l JOIN telemetry.series s ON s.id = l.series_id
                       JOIN app.edges e ON e.pk = s.edge_pk
                       WHERE e.edge_id = $1 AND s.channel = 'battery_1/MaxChargePower'""",
                        edge.edge,
                    ),
                    what="battery limits in the cloud",
                )
                yield Site(edge, daemon, relay, stub)
        finally:
            daemon.stop()
            await asyncio.gather(runner, return_exceptions=True)
            await relay.stop()


def setpoint(site: Site, value: float) -> command_pb2.CreateCommandRequest:
    return S.CreateCommandRequest(
        parent=str(site.edge), request_id=str(uuid.uuid4()), command=S.Command(channel=SETPOINT, value=value)
    )


async def test_a_setpoint_reaches_the_battery_and_becomes_executed(
    site: Site, edge_log: list[logging.LogRecord]
) -> None:
    created = await site.stub.CreateCommand(setpoint(site, -2000.0))
    states = [m async for m in site.stub.WatchCommand(S.WatchCommandRequest(name=created.name))]
    final = states[-1].command
    assert S.CommandState.Name(final.state) == "COMMAND_STATE_EXECUTED", final
    assert final.applied_value == -2000.0
    assert [S.CommandState.Name(t.to_state) for t in final.transitions] == [
        "COMMAND_STATE_QUEUED",
        "COMMAND_STATE_DELIVERED",
        "COMMAND_STATE_RECEIVED",
        "COMMAND_STATE_EXECUTED",
    ]
    await until(lambda: site.battery_power_w() == -2000.0, what="the battery charging at 2 kW")
    # The command id is in the log lines of every waypoint, in the cloud and at the edge.
    command_id = created.name
    waypoints = {
        r.getMessage()
        for r in edge_log
        if command_id.endswith(str(getattr(r, "command_id", "-"))) or getattr(r, "command_id", None) == command_id
    }
    assert {"command delivered", "command acknowledged", "command received"} <= waypoints


async def test_out_of_limit_at_the_cloud_and_the_edge_rejecting(site: Site) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await site.stub.CreateCommand(setpoint(site, 50_000.0))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # static limit, before any queue


async def test_ack_lost_the_command_is_resent_and_applied_once(
    site: Site, db: asyncpg.Connection, edge_log: list[logging.LogRecord]
) -> None:
    # The moment the edge has the command, before it can acknowledge it, cut its connection: no ack
    # reaches the cloud, which holds the command as DELIVERED and must send it again. Cut from the edge's
    # own log line, in this event loop, ahead of any ack: waiting for RECEIVED in the database instead
    # missed it once on a slow machine, where the command arrived just before a cycle and RECEIVED and
    # EXECUTED came within one poll.
    cloud_port = site.relay.upstream
    cut = asyncio.Event()

    class CutOnReceipt(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "command received" and not cut.is_set():
                site.relay.upstream = None
                site.relay.cut()
                cut.set()

    daemon_log = logging.getLogger("edge_daemon.daemon")
    handler = CutOnReceipt(logging.INFO)
    daemon_log.addHandler(handler)
    try:
        created = await site.stub.CreateCommand(setpoint(site, -1500.0))
        await asyncio.wait_for(cut.wait(), timeout=10)
    finally:
        daemon_log.removeHandler(handler)
    command_id = uuid.UUID(created.name.rsplit("/", 1)[1])
    state = await db.fetchval("SELECT state FROM app.commands WHERE id = $1", command_id)
    assert state == "DELIVERED", state  # no ack got through the cut
    await asyncio.sleep(1.0)
    site.relay.upstream = cloud_port  # back within the 5 s edge timeout
    final = await _wait_final(site, created.name)
    assert S.CommandState.Name(final.state) == "COMMAND_STATE_EXECUTED"
    assert final.applied_value == -1500.0
    resent = [
        r
        for r in edge_log
        if r.getMessage() == "command redelivered" and getattr(r, "command_id", "") == str(command_id)
    ]
    applied = [
        r
        for r in edge_log
        if r.getMessage() == "command received" and str(getattr(r, "command_id", "")).endswith(str(command_id))
    ]
    assert resent, "the cloud did not resend the unacknowledged command"
    assert len(applied) == 1, "the edge applied the command more than once"


async def _wait_final(site: Site, name: str) -> command_pb2.Command:
    while True:
        command = await site.stub.GetCommand(S.GetCommandRequest(name=name))
        if command.state in (S.COMMAND_STATE_EXECUTED, S.COMMAND_STATE_FAILED, S.COMMAND_STATE_REJECTED_BY_EDGE):
            return command
        await asyncio.sleep(0.05)
