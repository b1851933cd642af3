"""A PostgreSQL restart under running services (what an operator's failover does to us): everything that
holds a pool or a LISTEN connection comes back by itself, and what a client was promised is never lost
silently. Ingest alone across a restart is tests/services/edgelink/test_ingest.py's."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import asyncpg
import grpc
import pytest
from emma.alarm.v1 import alarm_pb2, alarm_pb2_grpc
from emma.command.v1 import command_pb2, command_pb2_grpc
from emma.edge.v1 import edge_link_pb2
from emma.market.v1 import market_pb2, market_pb2_grpc
from emma.registry.v1 import registry_pb2, registry_pb2_grpc
from google.protobuf import duration_pb2
from grpc_status import rpc_status

from services.errors import error_info_of
from services.identity.sessions import revoke
from services.market import save_document
from tests.services.command.test_commands import ack, create, online_edge
from tests.services.market.test_service import _doc
from tests.support.cloud import Host, new_edge
from tests.support.edge_client import batch
from tests.support.identity import authed_channel, grant
from tests.support.pg import SessionPostgres

ACME = "organizations/acme"
STORED = 1  # TELEMETRY_ACK_RESULT_STORED


async def _ended_with(call: Any) -> tuple[grpc.StatusCode, str]:
    """How a server stream ended: its code and ErrorInfo reason."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async with asyncio.timeout(30):
            while True:
                await call.read()
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    info = error_info_of(status) if status is not None else None
    return caught.value.code(), info.reason if info is not None else ""


async def _refused(call: Any) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    info = error_info_of(status) if status is not None else None
    return info.reason if info is not None else ""


async def test_after_a_restart_watches_end_with_aborted_and_commands_revocations_and_ingest_work_again(
    host: Host, db: asyncpg.Connection, postgres: SessionPostgres, migrated_url: str
) -> None:
    edge, _, key = await new_edge(db, "pg-restart-all")
    admin = await grant(db, "acme", "admin")
    viewer = await grant(db, "acme", "viewer")
    async with (
        host(["edge", "command", "alarm", "market", "identity", "registry"]) as (server, _),
        authed_channel(server.port, admin.token) as ch,
        authed_channel(server.port, viewer.token) as viewer_ch,
    ):
        commands = command_pb2_grpc.CommandServiceStub(ch)
        edge_stream = await online_edge(server.port, edge, key)
        alarms_watch = alarm_pb2_grpc.AlarmServiceStub(ch).WatchAlarms(alarm_pb2.WatchAlarmsRequest(parent=ACME))
        market_watch = market_pb2_grpc.MarketDataServiceStub(ch).WatchPublications(
            market_pb2.WatchPublicationsRequest()
        )
        await alarms_watch.initial_metadata()
        await market_watch.initial_metadata()
        viewer_registry = registry_pb2_grpc.RegistryServiceStub(viewer_ch)
        await viewer_registry.ListSites(registry_pb2.ListSitesRequest(parent=ACME))  # the session is cached now

        await postgres.restart()

        # What the database announced while the servers listened on nothing is gone: each watch ends with
        # an error, never silently going on. Which error is a race between two connections noticing the
        # restart: the watch's LISTEN (WATCH_INTERRUPTED) or the auth listener, whose loss makes the
        # stream re-check its session against a database that is not back yet (DATABASE_UNAVAILABLE).
        ended = {(grpc.StatusCode.ABORTED, "WATCH_INTERRUPTED"), (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE")}
        assert await _ended_with(alarms_watch) in ended
        assert await _ended_with(market_watch) in ended

        # A command created now reaches the edge that stayed connected (its relay listens again), and
        # its outcome comes back in the same call.
        request = create(edge, "battery_1/SetActivePower", -1500.0)
        request.final_state_wait.CopyFrom(duration_pb2.Duration(seconds=20))
        answer = asyncio.ensure_future(commands.CreateCommand(request))
        delivered = (await edge_stream.recv_kind("command", timeout=30)).command
        await ack(edge_stream, delivered.name, edge_link_pb2.COMMAND_ACK_STATUS_RECEIVED)
        await ack(edge_stream, delivered.name, edge_link_pb2.COMMAND_ACK_STATUS_EXECUTED, applied=-1500.0)
        done = await asyncio.wait_for(answer, 30)
        assert (done.name, done.state) == (delivered.name, command_pb2.COMMAND_STATE_EXECUTED)

        # Telemetry on the same stream is stored again.
        await edge_stream.send(batch(2, time.time(), [(2, 0, 51.0)]))
        assert (await edge_stream.recv_ack(timeout=30)).result == STORED

        # A session revoked now, by plain SQL as another replica would, is refused here within moments:
        # the identity state listens again and no longer trusts what it cached before the restart.
        conn = await asyncpg.connect(migrated_url)  # the fixture's connection died with the restart
        try:
            assert await revoke(conn, viewer.user_id, viewer.session_id) is not None
        finally:
            await conn.close()
        async with asyncio.timeout(10):
            while True:
                try:
                    await viewer_registry.ListSites(registry_pb2.ListSitesRequest(parent=ACME))
                except grpc.aio.AioRpcError:
                    break
                await asyncio.sleep(0.05)
        reason = await _refused(viewer_registry.ListSites(registry_pb2.ListSitesRequest(parent=ACME)))
        assert reason == "SESSION_REVOKED"

        # A new watch gets what is stored from now on.
        again = market_pb2_grpc.MarketDataServiceStub(ch).WatchPublications(market_pb2.WatchPublicationsRequest())
        await again.initial_metadata()
        doc = _doc("A44_DE-LU_2024-10-06_07_dayahead_PT60M+PT15M_negative.xml")
        conn = await asyncpg.connect(migrated_url)
        try:
            await save_document(conn, doc, dt.datetime.now(dt.UTC))
        finally:
            await conn.close()
        publication = await asyncio.wait_for(again.read(), 10)
        assert isinstance(publication, market_pb2.Publication)
        assert publication.document.document_id == doc.document_id
        again.cancel()
        await edge_stream.close()
