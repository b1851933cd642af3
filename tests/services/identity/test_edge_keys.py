"""Edge API keys through IdentityService: shown once, stored hashed, listed without the secret, and a
revoked key's open stream is closed at once, on whichever replica holds it."""

from __future__ import annotations

import asyncio
import hashlib
import time

import asyncpg
import grpc
import pytest
from emma.identity.v1 import identity_pb2, identity_pb2_grpc
from grpc_status import rpc_status

from services.errors import error_info_of
from tests.support.cloud import Host, new_edge
from tests.support.edge_client import EdgeStream, hello
from tests.support.identity import authed_channel, grant


async def test_create_list_revoke_and_the_revoked_stream_is_closed(host: Host, db: asyncpg.Connection) -> None:
    edge, pk, _ = await new_edge(db, "keyed")
    admin = await grant(db, "acme", "admin")
    viewer = await grant(db, "acme", "viewer")
    outsider = await grant(db, "other", "admin")
    # Heartbeats every minute: closing the stream must not wait for the heartbeat's revocation check.
    async with (
        host(["identity"]) as (a, _),
        host(["edge"], heartbeat_interval_s=60) as (b, _),
        authed_channel(a.port, admin.token) as ch,
    ):
        identity = identity_pb2_grpc.IdentityServiceStub(ch)
        created = await identity.CreateEdgeApiKey(
            identity_pb2.CreateEdgeApiKeyRequest(
                parent=str(edge), edge_api_key=identity_pb2.EdgeApiKey(display_name="basement pc")
            )
        )
        key = created.key
        key_id = created.name.rsplit("/", 1)[1]
        assert created.name == f"{edge}/apiKeys/{key_id}" and key.startswith(f"emma_{key_id}_")
        assert key.startswith(created.key_prefix) and len(created.key_prefix) < len(key) - 20
        # Stored hashed: the database holds the SHA-256 of the secret part, never the key.
        row = await db.fetchrow("SELECT * FROM identity.edge_api_keys WHERE key_id = $1", key_id)
        assert row["secret_sha256"] == hashlib.sha256(key.split("_", 2)[2].encode()).digest()
        assert key not in str(dict(row))

        listed = await identity.ListEdgeApiKeys(identity_pb2.ListEdgeApiKeysRequest(parent=str(edge)))
        mine = [k for k in listed.edge_api_keys if k.name == created.name]
        assert len(mine) == 1 and mine[0].key == "" and mine[0].display_name == "basement pc"
        for who, code in ((viewer, grpc.StatusCode.PERMISSION_DENIED), (outsider, grpc.StatusCode.NOT_FOUND)):
            async with authed_channel(a.port, who.token) as other:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await identity_pb2_grpc.IdentityServiceStub(other).ListEdgeApiKeys(
                        identity_pb2.ListEdgeApiKeysRequest(parent=str(edge))
                    )
                assert caught.value.code() == code

        stream = EdgeStream(b.port)
        await stream.send(hello(str(edge), key))
        assert (await stream.recv()).WhichOneof("message") == "welcome"
        t0 = time.monotonic()
        revoked = await identity.RevokeEdgeApiKey(identity_pb2.RevokeEdgeApiKeyRequest(name=created.name))
        assert revoked.HasField("revoke_time") and revoked.key == ""
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            while True:
                await stream.recv(timeout=5)
        took = time.monotonic() - t0
        status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
        assert status is not None
        info = error_info_of(status)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert info is not None and info.reason == "EDGE_KEY_REVOKED"
        assert took < 1.0, took
        await stream.close()

        # The stream is on record, attributed to the edge, with its key redacted.
        async def connect_rows() -> list[asyncpg.Record]:
            return await db.fetch(
                """SELECT * FROM identity.audit_entries WHERE method = '/emma.edge.v1.EdgeLinkService/Connect'
                   AND actor = $1""",
                str(edge),
            )

        deadline = time.monotonic() + 5
        while not (rows := await connect_rows()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(rows) == 1 and rows[0]["org_id"] == "acme"
        assert rows[0]["actor_kind"] == identity_pb2.ACTOR_KIND_EDGE
        assert rows[0]["result_code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
        assert key not in rows[0]["request_json"] and '"apiKey":"[REDACTED]"' in rows[0]["request_json"]

        # And the key cannot open a new stream.
        again = EdgeStream(b.port)
        await again.send(hello(str(edge), key))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await again.recv()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        await again.close()

        # Keys of another organization's edge are not found, not forbidden.
        other_edge = str(edge).replace("organizations/acme", "organizations/other")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await identity.CreateEdgeApiKey(identity_pb2.CreateEdgeApiKeyRequest(parent=other_edge))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        del pk
