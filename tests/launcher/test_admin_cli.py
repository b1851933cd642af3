"""`emma admin` as real subprocesses against DATABASE_URL; what they create works through the API."""

from __future__ import annotations

import re

import asyncpg
import grpc
from emma.identity.v1 import identity_pb2, identity_pb2_grpc

from services.identity import authenticate_edge_key
from services.names import EdgeName
from services.registry import ensure_edge
from tests.support.cli_process import run_emma
from tests.support.cloud import Host


async def test_create_org_user_and_edge_key(host: Host, db: asyncpg.Connection, migrated_url: str) -> None:
    env = {"DATABASE_URL": migrated_url, "EMMA_ADMIN_PASSWORD": ""}
    org = run_emma("admin", "create-org", "northwind", "--display-name", "Northwind Energy", env=env)
    assert org.returncode == 0, org.stderr
    assert "created organizations/northwind" in org.stdout
    again = run_emma("admin", "create-org", "northwind", env=env)
    assert again.returncode == 1 and again.stderr.strip().count("\n") == 0
    assert "exists already" in again.stderr

    # Password from the environment: never printed.
    chosen = "a-long-chosen-password"
    user = run_emma(
        "admin",
        "create-user",
        "Ops@Northwind.test",
        "--org",
        "northwind",
        "--role",
        "admin",
        env={**env, "EMMA_ADMIN_PASSWORD": chosen},
    )
    assert user.returncode == 0, user.stderr
    assert "as admin of organizations/northwind" in user.stdout and chosen not in user.stdout
    # Without one (and no terminal): generated and printed once.
    viewer = run_emma("admin", "create-user", "viewer@northwind.test", "--org", "northwind", env=env)
    assert viewer.returncode == 0, viewer.stderr
    generated = re.search(r"password: (\S+)", viewer.stdout)
    assert generated is not None
    stored = await db.fetchval("SELECT password_hash FROM identity.users WHERE email = 'viewer@northwind.test'")
    assert stored.startswith("$argon2id$") and generated.group(1) not in stored

    missing = run_emma("admin", "create-user", "x@y.test", "--org", "nowhere", env=env)
    assert missing.returncode == 1 and "organizations/nowhere does not exist" in missing.stderr

    async with host(["identity"]) as (server, _), grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        identity = identity_pb2_grpc.IdentityServiceStub(ch)
        for email, password, role in (
            ("ops@northwind.test", chosen, identity_pb2.ROLE_ADMIN),
            ("viewer@northwind.test", generated.group(1), identity_pb2.ROLE_VIEWER),
        ):
            login = await identity.Login(identity_pb2.LoginRequest(email=email, password=password))
            assert [m.role for m in login.user.memberships] == [role]

    edge = EdgeName("northwind", "hq", "gw-1")
    await ensure_edge(db, edge)
    key = run_emma("admin", "create-edge-key", str(edge), "--display-name", "rack 3", env=env)
    assert key.returncode == 0, key.stderr
    found = re.search(r"key: (emma_\S+)", key.stdout)
    assert found is not None
    assert (await authenticate_edge_key(db, found.group(1))).name == edge
    assert run_emma("admin", "create-edge-key", "organizations/northwind/sites/hq/edges/nope", env=env).returncode == 1
    bad = run_emma("admin", "create-edge-key", "not-an-edge", env=env)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1

    # Every task left an audit row attributed to the command line.
    rows = await db.fetch(
        """SELECT method, actor_kind FROM identity.audit_entries
           WHERE org_id = 'northwind' AND method LIKE 'emma admin %' ORDER BY id"""
    )
    assert [r["method"] for r in rows] == [
        "emma admin create-org",
        "emma admin create-user",
        "emma admin create-user",
        "emma admin create-edge-key",
    ]
    assert {r["actor_kind"] for r in rows} == {identity_pb2.ACTOR_KIND_SYSTEM}
