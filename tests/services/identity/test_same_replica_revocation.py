"""The replica that makes an access-reducing change applies it to its own next call at once.

Other replicas learn of such changes from the emma_auth NOTIFY; the replica that made the change must
not wait for its own copy, or a client's next call (often on the same connection, so the same replica)
can still pass on the cached grant. To show that without relying on timing, the test stops the replica's
LISTEN backend (SIGSTOP; the embedded PostgreSQL runs on this machine) while it makes the changes, so
no NOTIFY can reach the cache before the calls that check it.
"""

from __future__ import annotations

import asyncpg
import grpc
from emma.identity.v1 import identity_pb2, identity_pb2_grpc
from google.protobuf import field_mask_pb2

from tests.support.cloud import Host
from tests.support.identity import authed_channel, grant, notifications_held


async def _code(call: object) -> grpc.StatusCode | None:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return None


async def test_demotion_removal_disabling_and_deletion_apply_to_the_next_call_on_the_same_replica(
    host: Host, db: asyncpg.Connection
) -> None:
    boss = await grant(db, "tenant-r", "admin")
    demoted = await grant(db, "tenant-r", "admin")
    removed = await grant(db, "tenant-r", "admin")
    disabled = await grant(db, "tenant-r", "admin")
    org = "organizations/tenant-r"
    async with host(["identity"]) as (server, _), authed_channel(server.port, boss.token) as boss_ch:
        admin = identity_pb2_grpc.IdentityServiceStub(boss_ch)
        account = await admin.CreateServiceAccount(
            identity_pb2.CreateServiceAccountRequest(
                parent=org,
                service_account_id="advisor",
                service_account=identity_pb2.ServiceAccount(
                    display_name="advisor", role=identity_pb2.SERVICE_ACCOUNT_ROLE_RECOMMENDER
                ),
            )
        )
        login = await admin.Login(identity_pb2.LoginRequest(email=account.login, password=account.password))
        tokens = {"demoted": demoted.token, "removed": removed.token, "disabled": disabled.token}
        tokens["account"] = login.access_token
        channels = {who: authed_channel(server.port, token) for who, token in tokens.items()}
        try:
            stubs = {who: identity_pb2_grpc.IdentityServiceStub(ch) for who, ch in channels.items()}

            def list_users(who: str) -> object:
                return stubs[who].ListUsers(identity_pb2.ListUsersRequest(parent=org))

            for who in stubs:  # each grant is now in the replica's cache (an account may not list users)
                expected = grpc.StatusCode.NOT_FOUND if who == "account" else None
                assert await _code(list_users(who)) == expected, who
            async with notifications_held(db):
                await admin.SetMembership(
                    identity_pb2.SetMembershipRequest(parent=org, user=demoted.name, role=identity_pb2.ROLE_VIEWER)
                )
                await admin.DeleteMembership(
                    identity_pb2.DeleteMembershipRequest(name=f"{org}/memberships/{removed.user_id}")
                )
                await admin.UpdateUser(
                    identity_pb2.UpdateUserRequest(
                        user=identity_pb2.User(name=disabled.name, disabled=True),
                        update_mask=field_mask_pb2.FieldMask(paths=["disabled"]),
                    )
                )
                await admin.DeleteServiceAccount(identity_pb2.DeleteServiceAccountRequest(name=account.name))
                assert await _code(list_users("demoted")) == grpc.StatusCode.PERMISSION_DENIED
                assert await _code(list_users("removed")) in (
                    grpc.StatusCode.PERMISSION_DENIED,
                    grpc.StatusCode.NOT_FOUND,
                )
                assert await _code(list_users("disabled")) == grpc.StatusCode.UNAUTHENTICATED
                assert await _code(list_users("account")) == grpc.StatusCode.UNAUTHENTICATED
        finally:
            for ch in channels.values():
                await ch.close()
