"""Consent and tenant privacy when adding people: SetMembership invites a user who is not a member
(nothing changes until they accept), and CreateUser does not tell an admin whether an e-mail address
belongs to another tenant's user."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import asyncpg
import grpc
import pytest
from emma.identity.v1 import identity_pb2, identity_pb2_grpc
from google.protobuf import field_mask_pb2
from grpc_status import rpc_status

from services.errors import error_info_of
from tests.support.cloud import Host
from tests.support.identity import PASSWORD, Credentials, authed_channel, grant


async def _error(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    info = error_info_of(status) if status else None
    return caught.value.code(), info.reason if info else ""


async def _orgs(db: asyncpg.Connection, user: Credentials) -> dict[str, int]:
    rows = await db.fetch("SELECT org_id, role FROM identity.memberships WHERE user_id = $1", user.user_id)
    return {r["org_id"]: r["role"] for r in rows}


async def _audit_row(db: asyncpg.Connection, method: str, actor: str) -> asyncpg.Record:
    """The newest audit row of `method` by `actor`; the call's audit row is written on a task of its
    own, so it may land just after the answer."""
    for _ in range(200):
        row = await db.fetchrow(
            """SELECT * FROM identity.audit_entries WHERE method LIKE '%/' || $1 AND actor = $2
               ORDER BY id DESC LIMIT 1""",
            method,
            actor,
        )
        if row is not None:
            return row
        await asyncio.sleep(0.01)
    raise AssertionError(f"no audit row of {method} by {actor}")


def _stub(ch: grpc.aio.Channel) -> identity_pb2_grpc.IdentityServiceStub:
    return identity_pb2_grpc.IdentityServiceStub(ch)


async def test_adding_an_existing_user_takes_their_consent(host: Host, db: asyncpg.Connection) -> None:
    admin = await grant(db, "inv-a", "admin")
    other_admin = await grant(db, "inv-a", "admin")
    # A user of another tenant, and one who belongs to no organization any more.
    bob = await grant(db, "inv-b", "viewer")
    loner = await grant(db, "inv-b", None)
    async with (
        host(["identity"]) as (server, _),
        authed_channel(server.port, admin.token) as admin_ch,
        authed_channel(server.port, bob.token) as bob_ch,
        authed_channel(server.port, loner.token) as loner_ch,
    ):

        def invite(user: Credentials, role: int = identity_pb2.ROLE_ADMIN) -> Any:
            return _stub(admin_ch).SetMembership(
                identity_pb2.SetMembershipRequest(parent="organizations/inv-a", user=user.name, role=role)
            )

        # The admin gets an invitation, not a member: bob is not in inv-a, so the admin can neither
        # see him nor (for the loner, who would be theirs alone) re-password him.
        invitation = await invite(bob)
        assert invitation.pending and invitation.invitation_token.startswith("emma_inv_")
        assert invitation.name == f"organizations/inv-a/memberships/{bob.user_id}"
        assert await _orgs(db, bob) == {"inv-b": 1}
        assert await _error(_stub(admin_ch).GetUser(identity_pb2.GetUserRequest(name=bob.name))) == (
            grpc.StatusCode.NOT_FOUND,
            "RESOURCE_NOT_FOUND",
        )
        loner_invitation = await invite(loner)
        assert loner_invitation.pending and await _orgs(db, loner) == {}
        takeover = _stub(admin_ch).UpdateUser(
            identity_pb2.UpdateUserRequest(
                user=identity_pb2.User(name=loner.name, password="the admin's choice of password"),
                update_mask=field_mask_pb2.FieldMask(paths=["password"]),
            )
        )
        assert await _error(takeover) == (grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")

        # Nobody else can accept bob's invitation, and a forged or foreign token is refused.
        assert await _error(
            _stub(loner_ch).AcceptInvitation(
                identity_pb2.AcceptInvitationRequest(invitation_token=invitation.invitation_token)
            )
        ) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID")
        for bad in ("", "emma_inv_x.y.z", bob.token, invitation.invitation_token[:-3] + "AAA"):
            assert await _error(
                _stub(bob_ch).AcceptInvitation(identity_pb2.AcceptInvitationRequest(invitation_token=bad))
            ) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID"), bad

        # Bob accepts: now he is a member, with the role offered; the token is spent.
        joined = await _stub(bob_ch).AcceptInvitation(
            identity_pb2.AcceptInvitationRequest(invitation_token=invitation.invitation_token)
        )
        assert (joined.name, joined.role, joined.pending) == (invitation.name, identity_pb2.ROLE_ADMIN, False)
        assert await _orgs(db, bob) == {"inv-b": 1, "inv-a": 3}
        # The joined organization's audit log has the acceptance, without the token.
        row = await _audit_row(db, "AcceptInvitation", bob.name)
        assert (row["org_id"], row["resource"], row["result_code"]) == ("inv-a", invitation.name, 0)
        assert invitation.invitation_token not in row["request_json"] and "[REDACTED]" in row["request_json"]
        seen = await _stub(admin_ch).GetUser(identity_pb2.GetUserRequest(name=bob.name))
        assert [m.name for m in seen.memberships] == [invitation.name]  # inv-b stays hidden
        await _stub(admin_ch).DeleteMembership(identity_pb2.DeleteMembershipRequest(name=invitation.name))
        replay = _stub(bob_ch).AcceptInvitation(
            identity_pb2.AcceptInvitationRequest(invitation_token=invitation.invitation_token)
        )
        assert await _error(replay) == (grpc.StatusCode.FAILED_PRECONDITION, "STATE_CONFLICT")
        assert await _orgs(db, bob) == {"inv-b": 1}

        # A member's role changes at once, without an invitation.
        changed = await _stub(admin_ch).SetMembership(
            identity_pb2.SetMembershipRequest(
                parent="organizations/inv-a", user=other_admin.name, role=identity_pb2.ROLE_OPERATOR
            )
        )
        assert not changed.pending and not changed.invitation_token
        assert await _orgs(db, other_admin) == {"inv-a": 2}

        # An invitation dies with its admin's admin role.
        later = await invite(loner, identity_pb2.ROLE_VIEWER)
        await db.execute(
            "UPDATE identity.memberships SET role = 1 WHERE org_id = 'inv-a' AND user_id = $1", admin.user_id
        )
        await db.execute(
            "UPDATE identity.memberships SET role = 3 WHERE org_id = 'inv-a' AND user_id = $1", other_admin.user_id
        )
        stale = _stub(loner_ch).AcceptInvitation(
            identity_pb2.AcceptInvitationRequest(invitation_token=later.invitation_token)
        )
        assert await _error(stale) == (grpc.StatusCode.FAILED_PRECONDITION, "STATE_CONFLICT")
        assert await _orgs(db, loner) == {}


async def test_create_user_does_not_tell_whether_an_address_exists_in_another_tenant(
    host: Host, db: asyncpg.Connection
) -> None:
    admin = await grant(db, "cu-a", "admin")
    await grant(db, "cu-a", "viewer", email="colleague@cu-a.test")
    stranger = await grant(db, "cu-b", "operator", email="stranger@cu-b.test")
    async with host(["identity"]) as (server, _), authed_channel(server.port, admin.token) as ch:
        identity = _stub(ch)

        def create(email: str, request_id: str = "") -> Any:
            return identity.CreateUser(
                identity_pb2.CreateUserRequest(
                    parent="organizations/cu-a",
                    user=identity_pb2.User(email=email, display_name="New", password="a fresh password 123"),
                    role=identity_pb2.ROLE_VIEWER,
                    request_id=request_id,
                )
            )

        fresh = await create("newbie@cu-a.test")
        other = await create("Stranger@cu-b.test")
        # The same answer, field by field, but for the generated ids and times.
        for made, email in ((fresh, "newbie@cu-a.test"), (other, "stranger@cu-b.test")):
            user_id = made.name.removeprefix("users/")
            assert (made.email, made.display_name, made.disabled) == (email, "New", False)
            assert [(m.name, m.user, m.role) for m in made.memberships] == [
                (f"organizations/cu-a/memberships/{user_id}", made.name, identity_pb2.ROLE_VIEWER)
            ]
            assert made.HasField("create_time") and made.HasField("update_time") and not made.password
        # ... and nothing happened to the stranger: not their id, same password, no new membership.
        assert other.name != stranger.name
        assert await _orgs(db, stranger) == {"cu-b": 2}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as anon:
            login = await _stub(anon).Login(identity_pb2.LoginRequest(email="stranger@cu-b.test", password=PASSWORD))
            assert login.user.name == stranger.name
        # A retry with the same request_id gets the same answer.
        first = await create("stranger@cu-b.test", request_id="cu-retry-1")
        assert (await create("stranger@cu-b.test", request_id="cu-retry-1")).name == first.name

        # An address of the admin's own organization: the conflict is no news to them.
        assert await _error(create("colleague@cu-a.test")) == (grpc.StatusCode.ALREADY_EXISTS, "RESOURCE_EXISTS")
