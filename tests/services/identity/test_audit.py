"""The audit log: every mutating call leaves a row (who, organization, method, redacted request, result,
trace id, client address); reads leave none; AuditService filters and pages; SQL cannot change rows."""

from __future__ import annotations

import json

import asyncpg
import grpc
import pytest
from emma.identity.v1 import identity_pb2, identity_pb2_grpc
from emma.registry.v1 import registry_pb2, registry_pb2_grpc

from tests.support.cloud import Host
from tests.support.identity import PASSWORD, authed_channel, grant

SECRET = "a-new-password-nobody-may-read"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


async def test_mutations_are_audited_redacted_filtered_and_immutable(host: Host, db: asyncpg.Connection) -> None:
    admin = await grant(db, "acme", "admin", email="boss@acme.test")
    viewer = await grant(db, "acme", "viewer")
    outsider = await grant(db, "other", "admin")
    site = registry_pb2.Site(
        display_name="Plant",
        location={"latitude_deg": 40.4, "longitude_deg": -3.7},
        time_zone="Europe/Madrid",
        country_code="ES",
    )
    traced = [("traceparent", f"00-{TRACE}-00f067aa0ba902b7-01")]
    async with host(["identity", "registry", "audit"]) as (server, _), authed_channel(server.port, admin.token) as ch:
        identity = identity_pb2_grpc.IdentityServiceStub(ch)
        registry = registry_pb2_grpc.RegistryServiceStub(ch)
        audit = identity_pb2_grpc.AuditServiceStub(ch)
        created = await identity.CreateUser(
            identity_pb2.CreateUserRequest(
                parent="organizations/acme",
                user=identity_pb2.User(email="new@acme.test", password=SECRET),
                role=identity_pb2.ROLE_OPERATOR,
            ),
            metadata=traced,
        )
        await registry.CreateSite(
            registry_pb2.CreateSiteRequest(parent="organizations/acme", site_id="plant", site=site)
        )
        with pytest.raises(grpc.aio.AioRpcError):
            bad = registry_pb2.Site()
            bad.CopyFrom(site)
            bad.time_zone = "Mars/Olympus"
            await registry.CreateSite(
                registry_pb2.CreateSiteRequest(parent="organizations/acme", site_id="bad", site=bad)
            )
        await registry.GetSite(registry_pb2.GetSiteRequest(name="organizations/acme/sites/plant"))  # a read
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as anon:
            await identity_pb2_grpc.IdentityServiceStub(anon).Login(
                identity_pb2.LoginRequest(email="boss@acme.test", password=PASSWORD)
            )

        page = await audit.ListAuditEntries(identity_pb2.ListAuditEntriesRequest(parent="organizations/acme"))
        entries = list(page.audit_entries)
        methods = [e.method.rsplit("/", 1)[1] for e in entries]
        assert methods == ["Login", "CreateSite", "CreateSite", "CreateUser"]  # newest first, no GetSite
        login, bad_site, good_site, user = entries
        assert user.actor == admin.name and user.actor_kind == identity_pb2.ACTOR_KIND_USER
        assert user.resource == created.name and user.result_code == 0
        assert user.trace_id == TRACE and user.client_address == "127.0.0.1"
        assert json.loads(user.request_json)["user"]["password"] == "[REDACTED]"
        assert good_site.resource == "organizations/acme/sites/plant"
        assert json.loads(good_site.request_json)["site"]["timeZone"] == "Europe/Madrid"
        assert bad_site.result_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "IANA" in bad_site.result_message
        assert login.actor == admin.name and json.loads(login.request_json)["password"] == "[REDACTED]"
        assert len(good_site.trace_id) == 32
        # The secret is nowhere in the audit table.
        dump = await db.fetchval("SELECT string_agg(request_json || result_message, '') FROM identity.audit_entries")
        assert SECRET not in dump and PASSWORD not in dump

        # Filters and pages.
        only = await audit.ListAuditEntries(
            identity_pb2.ListAuditEntriesRequest(parent="organizations/acme", method="CreateSite")
        )
        assert [e.name for e in only.audit_entries] == [bad_site.name, good_site.name]
        full_name = await audit.ListAuditEntries(
            identity_pb2.ListAuditEntriesRequest(
                parent="organizations/acme", method="/emma.identity.v1.IdentityService/CreateUser", actor=admin.name
            )
        )
        assert [e.name for e in full_name.audit_entries] == [user.name]
        seen, token = [], ""
        while True:
            p = await audit.ListAuditEntries(
                identity_pb2.ListAuditEntriesRequest(parent="organizations/acme", page_size=1, page_token=token)
            )
            seen += [e.name for e in p.audit_entries]
            token = p.next_page_token
            if not token:
                break
        assert seen == [e.name for e in entries]
        later = await audit.ListAuditEntries(
            identity_pb2.ListAuditEntriesRequest(parent="organizations/acme", start_time=good_site.entry_time)
        )
        assert user.name not in [e.name for e in later.audit_entries]
        assert (await audit.GetAuditEntry(identity_pb2.GetAuditEntryRequest(name=user.name))) == user

        for who, code in ((viewer, grpc.StatusCode.PERMISSION_DENIED), (outsider, grpc.StatusCode.NOT_FOUND)):
            async with authed_channel(server.port, who.token) as other:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await identity_pb2_grpc.AuditServiceStub(other).GetAuditEntry(
                        identity_pb2.GetAuditEntryRequest(name=user.name)
                    )
                assert caught.value.code() == code

    # No API changes entries (the contract has none), and SQL cannot either.
    entry_id = int(user.name.rsplit("/", 1)[1])
    for statement in (
        "UPDATE identity.audit_entries SET actor = 'someone else' WHERE id = $1",
        "UPDATE identity.audit_entries SET request_json = '{\"erased\":true}' WHERE id = $1",
        "DELETE FROM identity.audit_entries WHERE id = $1",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await db.execute(statement, entry_id)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("TRUNCATE identity.audit_entries")
    assert await db.fetchval("SELECT actor FROM identity.audit_entries WHERE id = $1", entry_id) == admin.name
