"""Memberships and user listings through the API: roles change, an organization keeps an admin."""

from __future__ import annotations

import asyncpg
import grpc
import pytest
from emma.identity.v1 import identity_pb2, identity_pb2_grpc

from tests.support.cloud import Host
from tests.support.identity import authed_channel, grant


async def test_set_and_delete_membership_and_list_users(host: Host, db: asyncpg.Connection) -> None:
    admin = await grant(db, "tenant-m", "admin", email="boss@tenant-m.test")
    viewer = await grant(db, "tenant-m", "viewer", email="alice@tenant-m.test")
    outsider = await grant(db, "tenant-o", "admin", email="zed@tenant-o.test")
    async with host(["identity"]) as (server, _), authed_channel(server.port, admin.token) as ch:
        identity = identity_pb2_grpc.IdentityServiceStub(ch)

        listed = await identity.ListUsers(identity_pb2.ListUsersRequest(parent="organizations/tenant-m"))
        assert [u.email for u in listed.users] == ["alice@tenant-m.test", "boss@tenant-m.test"]

        made = await identity.SetMembership(
            identity_pb2.SetMembershipRequest(
                parent="organizations/tenant-m", user=viewer.name, role=identity_pb2.ROLE_OPERATOR
            )
        )
        assert (made.name, made.user, made.role) == (
            f"organizations/tenant-m/memberships/{viewer.user_id}",
            viewer.name,
            identity_pb2.ROLE_OPERATOR,
        )
        # The outsider is invited as viewer and accepts (test_invitations.py: consent); as seen by
        # this admin, only tenant-m's membership shows.
        invitation = await identity.SetMembership(
            identity_pb2.SetMembershipRequest(
                parent="organizations/tenant-m", user=outsider.name, role=identity_pb2.ROLE_VIEWER
            )
        )
        assert invitation.pending
        async with authed_channel(server.port, outsider.token) as outsider_ch:
            await identity_pb2_grpc.IdentityServiceStub(outsider_ch).AcceptInvitation(
                identity_pb2.AcceptInvitationRequest(invitation_token=invitation.invitation_token)
            )
        seen = await identity.GetUser(identity_pb2.GetUserRequest(name=outsider.name))
        assert [m.name for m in seen.memberships] == [f"organizations/tenant-m/memberships/{outsider.user_id}"]

        for request, code in [
            (identity_pb2.SetMembershipRequest(parent="organizations/tenant-m", user="users/me", role=1), "INVALID"),
            (identity_pb2.SetMembershipRequest(parent="organizations/tenant-m", user=viewer.name, role=9), "INVALID"),
            (identity_pb2.SetMembershipRequest(parent="organizations/tenant-m", user="users/nobody", role=1), "NF"),
            # Demoting the only admin would leave none.
            (identity_pb2.SetMembershipRequest(parent="organizations/tenant-m", user=admin.name, role=1), "FP"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await identity.SetMembership(request)
            expected = {
                "INVALID": grpc.StatusCode.INVALID_ARGUMENT,
                "NF": grpc.StatusCode.NOT_FOUND,
                "FP": grpc.StatusCode.FAILED_PRECONDITION,
            }[code]
            assert caught.value.code() == expected, request

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await identity.DeleteMembership(
                identity_pb2.DeleteMembershipRequest(name=f"organizations/tenant-m/memberships/{admin.user_id}")
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "would have no admin left" in (caught.value.details() or "")

        await identity.DeleteMembership(
            identity_pb2.DeleteMembershipRequest(name=f"organizations/tenant-m/memberships/{viewer.user_id}")
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await identity.DeleteMembership(
                identity_pb2.DeleteMembershipRequest(name=f"organizations/tenant-m/memberships/{viewer.user_id}")
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        listed = await identity.ListUsers(identity_pb2.ListUsersRequest(parent="organizations/tenant-m"))
        assert [u.email for u in listed.users] == ["boss@tenant-m.test", "zed@tenant-o.test"]

        # Another tenant's organization: no such thing, as far as this admin can tell.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await identity.ListUsers(identity_pb2.ListUsersRequest(parent="organizations/tenant-o"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
