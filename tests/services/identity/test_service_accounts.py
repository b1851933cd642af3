"""Service accounts through the real IdentityService: created by an organization's admin with a password
shown once, logging in like a user but refused by every role-checked method, and stopped at once when
deleted (its login, its refresh token and its access token)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

import asyncpg
import grpc
import pytest
from emma.identity.v1 import identity_pb2, identity_pb2_grpc
from emma.registry.v1 import registry_pb2, registry_pb2_grpc
from grpc_status import rpc_status

from services.errors import error_info_of
from services.identity import SERVICE_ACCOUNT_RECOMMENDER, service_account_role
from tests.support.cloud import Host
from tests.support.identity import authed_channel, grant

RECOMMENDER = identity_pb2.SERVICE_ACCOUNT_ROLE_RECOMMENDER


async def _error(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    info = error_info_of(status)
    assert info is not None
    return caught.value.code(), info.reason, dict(info.metadata)


def _create(
    account_id: str, role: int = RECOMMENDER, org: str = "acme", display_name: str = "dispatch advisor", **fields: Any
) -> identity_pb2.CreateServiceAccountRequest:
    return identity_pb2.CreateServiceAccountRequest(
        parent=f"organizations/{org}",
        service_account_id=account_id,
        service_account=identity_pb2.ServiceAccount(display_name=display_name, role=role),  # type: ignore[arg-type]
        **fields,
    )


async def test_an_admin_creates_one_it_logs_in_is_refused_by_roles_and_deletion_stops_it(
    host: Host, db: asyncpg.Connection
) -> None:
    admin = await grant(db, "acme", "admin")
    operator = await grant(db, "acme", "operator")
    viewer = await grant(db, "acme", "viewer")
    async with (
        host(["identity", "registry"]) as (server, _),
        authed_channel(server.port, admin.token) as admin_ch,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as anonymous,
    ):
        identity = identity_pb2_grpc.IdentityServiceStub(admin_ch)
        public = identity_pb2_grpc.IdentityServiceStub(anonymous)

        created = await identity.CreateServiceAccount(_create("advisor", request_id="create-advisor-1"))
        assert created.name == "organizations/acme/serviceAccounts/advisor"
        assert created.login == "advisor@acme.service.emma" and created.role == RECOMMENDER
        assert created.creator == admin.name and created.display_name == "dispatch advisor"
        password = created.password
        assert len(password) >= 40
        user_id = created.user.removeprefix("users/")
        # Stored hashed, never in clear; the account has no membership anywhere.
        row = await db.fetchrow("SELECT password_hash FROM identity.users WHERE user_id = $1", user_id)
        assert row["password_hash"].startswith("$argon2id$") and password not in row["password_hash"]
        assert await db.fetchval("SELECT count(*) FROM identity.memberships WHERE user_id = $1", user_id) == 0
        grant_ = await service_account_role(db, user_id, "acme")
        assert grant_ is not None and (grant_.name, grant_.role) == (created.name, SERVICE_ACCOUNT_RECOMMENDER)
        assert await service_account_role(db, user_id, "other") is None
        assert await service_account_role(db, admin.user_id, "acme") is None

        # The password is in the first answer only: not on a retry of the request, not in Get or List.
        retried = await identity.CreateServiceAccount(_create("advisor", request_id="create-advisor-1"))
        assert retried.name == created.name and retried.password == ""
        got = await identity.GetServiceAccount(identity_pb2.GetServiceAccountRequest(name=created.name))
        assert got.password == "" and got.user == created.user
        listed = await identity.ListServiceAccounts(
            identity_pb2.ListServiceAccountsRequest(parent="organizations/acme")
        )
        assert [(a.name, a.password) for a in listed.service_accounts] == [(created.name, "")]

        # Only admins manage them.
        for who, code in ((operator, grpc.StatusCode.PERMISSION_DENIED), (viewer, grpc.StatusCode.PERMISSION_DENIED)):
            async with authed_channel(server.port, who.token) as ch:
                stub = identity_pb2_grpc.IdentityServiceStub(ch)
                got_code, reason, _ = await _error(stub.CreateServiceAccount(_create("sneaky")))
                assert (got_code, reason) == (code, "ROLE_INSUFFICIENT")
                got_code, _, _ = await _error(
                    stub.ListServiceAccounts(identity_pb2.ListServiceAccountsRequest(parent="organizations/acme"))
                )
                assert got_code == code

        # It logs in like a user, and every method that needs a role in the organization refuses it
        # as it refuses a stranger.
        login = await public.Login(identity_pb2.LoginRequest(email=created.login, password=password))
        assert login.user.name == created.user and list(login.user.memberships) == []
        async with authed_channel(server.port, login.access_token) as account_ch:
            registry = registry_pb2_grpc.RegistryServiceStub(account_ch)
            code, reason, meta = await _error(
                registry.ListSites(registry_pb2.ListSitesRequest(parent="organizations/acme"))
            )
            assert (code, reason, meta["resource"]) == (
                grpc.StatusCode.NOT_FOUND,
                "RESOURCE_NOT_FOUND",
                "organizations/acme",
            )
            mine = identity_pb2_grpc.IdentityServiceStub(account_ch)
            code, _, _ = await _error(
                mine.ListServiceAccounts(identity_pb2.ListServiceAccountsRequest(parent="organizations/acme"))
            )
            assert code == grpc.StatusCode.NOT_FOUND
            assert (await mine.GetUser(identity_pb2.GetUserRequest(name="users/me"))).name == created.user

            # An admin cannot make it a member: its role is its service-account role.
            code, reason, meta = await _error(
                identity.SetMembership(
                    identity_pb2.SetMembershipRequest(
                        parent="organizations/acme", user=created.user, role=identity_pb2.ROLE_VIEWER
                    )
                )
            )
            assert (code, reason, meta["field"]) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID", "user")

            # Deleted: its access token, its refresh token and its password stop working at once.
            t0 = time.monotonic()
            await identity.DeleteServiceAccount(identity_pb2.DeleteServiceAccountRequest(name=created.name))
            refused: grpc.StatusCode | None = None
            while refused is None:
                try:
                    await mine.GetUser(identity_pb2.GetUserRequest(name="users/me"))
                except grpc.aio.AioRpcError as exc:
                    refused = exc.code()
                    break
                assert time.monotonic() - t0 < 2.0, "the deleted account's token still works"
                await asyncio.sleep(0.01)
            assert refused == grpc.StatusCode.UNAUTHENTICATED
        code, reason, _ = await _error(
            public.RefreshToken(identity_pb2.RefreshTokenRequest(refresh_token=login.refresh_token))
        )
        assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
        code, reason, _ = await _error(public.Login(identity_pb2.LoginRequest(email=created.login, password=password)))
        assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "LOGIN_FAILED")
        assert await db.fetchval("SELECT count(*) FROM identity.sessions WHERE user_id = $1", user_id) == 0
        code, reason, _ = await _error(
            identity.DeleteServiceAccount(identity_pb2.DeleteServiceAccountRequest(name=created.name))
        )
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")
        # Rotation is delete and create: the id is free again, with a new password and a new user.
        again = await identity.CreateServiceAccount(_create("advisor"))
        assert again.password not in ("", password) and again.user != created.user

    # Creation, deletion and the account's login are audit rows of the organization, with the
    # password redacted.
    rows = await db.fetch(
        """SELECT actor, method, resource, request_json, result_code FROM identity.audit_entries
           WHERE org_id = 'acme' AND method LIKE '%ServiceAccount' AND result_code = 0 ORDER BY id"""
    )
    assert [(r["actor"], r["method"].rsplit("/", 1)[1], r["resource"]) for r in rows] == [
        (admin.name, "CreateServiceAccount", created.name),
        (admin.name, "CreateServiceAccount", created.name),
        (admin.name, "DeleteServiceAccount", created.name),
        (admin.name, "CreateServiceAccount", created.name),
    ]
    assert all(password not in r["request_json"] for r in rows)
    logins = await db.fetch(
        "SELECT actor FROM identity.audit_entries WHERE org_id = 'acme' AND method LIKE '%/Login' AND result_code = 0"
    )
    assert [r["actor"] for r in logins] == [created.user]


async def test_bad_input_is_refused_with_the_field_named(host: Host, db: asyncpg.Connection) -> None:
    admin = await grant(db, "bad", "admin")
    outsider = await grant(db, "elsewhere", "admin")
    async with host(["identity"]) as (server, _), authed_channel(server.port, admin.token) as ch:
        identity = identity_pb2_grpc.IdentityServiceStub(ch)
        for request, field in (
            (_create("Advisor", org="bad"), "service_account_id"),
            (_create("9lives", org="bad"), "service_account_id"),
            (_create("a" * 64, org="bad"), "service_account_id"),
            (_create("", org="bad"), "service_account_id"),
            (_create("advisor", role=0, org="bad"), "service_account.role"),
            (_create("advisor", org="bad", display_name="x" * 201), "service_account.display_name"),
        ):
            code, reason, meta = await _error(identity.CreateServiceAccount(request))
            assert (code, reason, meta["field"]) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID", field), field
        # An enum number the contract does not define is refused before the servicer.
        code, reason, _ = await _error(identity.CreateServiceAccount(_create("advisor", role=7, org="bad")))
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID")

        await identity.CreateServiceAccount(_create("advisor", org="bad"))
        code, reason, meta = await _error(identity.CreateServiceAccount(_create("advisor", org="bad")))
        assert (code, reason, meta["resource"]) == (
            grpc.StatusCode.ALREADY_EXISTS,
            "RESOURCE_EXISTS",
            "organizations/bad/serviceAccounts/advisor",
        )
        code, reason, meta = await _error(
            identity.DeleteServiceAccount(identity_pb2.DeleteServiceAccountRequest(name="organizations/bad/advisor"))
        )
        assert (code, reason, meta["field"]) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID", "name")
        # Nobody may take a service account's login as a user's e-mail address.
        code, reason, meta = await _error(
            identity.CreateUser(
                identity_pb2.CreateUserRequest(
                    parent="organizations/bad",
                    user=identity_pb2.User(email="helper@bad.service.emma", password="long enough password"),
                    role=identity_pb2.ROLE_VIEWER,
                )
            )
        )
        assert (code, reason, meta["field"]) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID", "user.email")

        # Another organization's admin sees nothing of these accounts.
        async with authed_channel(server.port, outsider.token) as other:
            stub = identity_pb2_grpc.IdentityServiceStub(other)
            name = "organizations/bad/serviceAccounts/advisor"
            for call in (
                stub.GetServiceAccount(identity_pb2.GetServiceAccountRequest(name=name)),
                stub.DeleteServiceAccount(identity_pb2.DeleteServiceAccountRequest(name=name)),
                stub.CreateServiceAccount(_create("mine", org="bad")),
            ):
                code, reason, _ = await _error(call)
                assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")

    # Deleting the organization deletes its accounts' users too: no password outlives its account.
    user_id = await db.fetchval("SELECT user_id FROM identity.service_accounts WHERE org_id = 'bad'")
    await db.execute("DELETE FROM app.organizations WHERE org_id = 'bad'")
    assert await db.fetchval("SELECT count(*) FROM identity.users WHERE user_id = $1", user_id) == 0
