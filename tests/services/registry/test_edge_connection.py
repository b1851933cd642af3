"""An edge's connection state on the registry's Edge comes from EdgeLink's session record (wired into
the registry by services/cloud.py): never connected, online with what the edge reported, offline."""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg
from emma.registry.v1 import registry_pb2, registry_pb2_grpc

from services.names import EdgeName
from services.registry import ensure_edge
from tests.support.cloud import Host
from tests.support.identity import authed_channel, grant


async def test_get_and_list_edges_show_the_session_state(host: Host, db: asyncpg.Connection) -> None:
    admin = await grant(db, "conn", "admin")
    edge = EdgeName("conn", "home", "gw-1")
    pk = await ensure_edge(db, edge)
    await ensure_edge(db, EdgeName("conn", "home", "gw-2"))
    async with host(["registry"]) as (server, _), authed_channel(server.port, admin.token) as ch:
        reg = registry_pb2_grpc.RegistryServiceStub(ch)
        got = await reg.GetEdge(registry_pb2.GetEdgeRequest(name=str(edge)))
        assert got.connection_state == registry_pb2.EDGE_CONNECTION_STATE_NEVER_CONNECTED
        assert not got.HasField("last_seen_time") and (got.agent_version, got.clock_offset_ms) == ("", 0.0)

        seen = dt.datetime(2025, 5, 1, 12, 0, tzinfo=dt.UTC)
        await db.execute(
            """INSERT INTO app.edge_sessions (edge_pk, session_id, replica_id, online, connected_time,
                                              last_seen_time, agent_version, clock_offset_ms)
               VALUES ($1, $2, 'r1', true, $3, $3, '1.2.3', 42.5)""",
            pk,
            uuid.uuid4(),
            seen,
        )
        got = await reg.GetEdge(registry_pb2.GetEdgeRequest(name=str(edge)))
        assert got.connection_state == registry_pb2.EDGE_CONNECTION_STATE_ONLINE
        assert got.last_seen_time.ToDatetime(dt.UTC) == seen
        assert (got.agent_version, got.clock_offset_ms) == ("1.2.3", 42.5)

        listed = await reg.ListEdges(registry_pb2.ListEdgesRequest(parent="organizations/conn/sites/home"))
        assert [(e.name.rsplit("/", 1)[1], e.connection_state) for e in listed.edges] == [
            ("gw-1", registry_pb2.EDGE_CONNECTION_STATE_ONLINE),
            ("gw-2", registry_pb2.EDGE_CONNECTION_STATE_NEVER_CONNECTED),
        ]

        await db.execute("UPDATE app.edge_sessions SET online = false WHERE edge_pk = $1", pk)
        got = await reg.GetEdge(registry_pb2.GetEdgeRequest(name=str(edge)))
        assert got.connection_state == registry_pb2.EDGE_CONNECTION_STATE_OFFLINE
        assert got.agent_version == "1.2.3"
