"""Memberships (a user's role in an organization): validation, reads, invitations, and changes that
keep an admin.

Nobody becomes a member of an organization without consenting. SetMembership changes the role of a
member; for anyone else it only issues an invitation (a signed token, tokens.py) that the user
accepts themself with AcceptInvitation. Without that, an admin who learned a user's id could pull the
user into their organization and so read their e-mail address and name, and, for a user left in no
other organization, become admin of every organization of theirs and re-password the account.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import grpc
from emma.common.v1 import errors_pb2
from emma.identity.v1 import identity_pb2

from services.errors import ApiError, invalid_field, not_found
from services.identity import accounts, service_accounts
from services.identity.context import ADMIN, Caller, note_audit
from services.identity.tokens import Invitation, invitation_void, sign_invitation, verify_invitation
from services.platform.migrations import Conn
from services.platform.rpc import timestamp

INVITATION_TTL_S = 3 * 86400.0

ROLES = (identity_pb2.ROLE_VIEWER, identity_pb2.ROLE_OPERATOR, identity_pb2.ROLE_ADMIN)


def check_role(role: int, field: str = "role") -> None:
    if role not in ROLES:
        raise invalid_field(field, "must be ROLE_VIEWER, ROLE_OPERATOR or ROLE_ADMIN")


async def memberships_of(conn: Conn, user_id: str) -> dict[str, int]:
    """organization id -> role of the user."""
    rows = await conn.fetch("SELECT org_id, role FROM identity.memberships WHERE user_id = $1", user_id)
    return {r["org_id"]: int(r["role"]) for r in rows}


def last_admin(org: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        errors_pb2.ERROR_REASON_STATE_CONFLICT,
        f"organizations/{org} would have no admin left; make someone else admin first",
        metadata={"organization": f"organizations/{org}"},
    )


async def _admins_after(conn: Conn, org: str, user_id: str, new_role: int | None) -> int:
    """The organization's admins once the user has `new_role` (None: no membership)."""
    others = await conn.fetchval(
        """SELECT count(*) FROM identity.memberships
           WHERE org_id = $1 AND role = 3 AND user_id <> $2""",
        org,
        user_id,
    )
    return int(others) + (1 if new_role == ADMIN else 0)


async def _lock_organization(conn: Conn, org: str) -> None:
    # Serializes membership changes of one organization, so two cannot each remove "the other" admin.
    await conn.execute("SELECT 1 FROM app.organizations WHERE org_id = $1 FOR UPDATE", org)


async def set_role(
    conn: Conn, signing_key: bytes, me: Caller, org: str, user_id: str, role: int, user_resource: str
) -> identity_pb2.Membership:
    """Give a member of the organization `role`, or invite a user who is not a member (nothing
    changes until they accept). NOT_FOUND for an unknown user (named `user_resource`),
    FAILED_PRECONDITION when the change would leave no admin."""
    name = f"organizations/{org}/memberships/{user_id}"
    async with conn.transaction():
        user = await conn.fetchrow("SELECT update_time FROM identity.users WHERE user_id = $1", user_id)
        if user is None:
            raise not_found(user_resource)
        account_org = await service_accounts.org_of(conn, user_id)
        if account_org is not None:
            # Its role is its service-account role; a membership would give it every right of the
            # role in the organization. Another tenant's account is refused like an unknown user.
            if account_org != org:
                raise not_found(user_resource)
            raise invalid_field("user", "a service account is never a member; its role is its service-account role")
        await _lock_organization(conn, org)
        member = await conn.fetchval(
            "SELECT 1 FROM identity.memberships WHERE org_id = $1 AND user_id = $2", org, user_id
        )
        if member is None:
            expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=INVITATION_TTL_S)
            invitation = Invitation(user_id, org, role, me.user_id, user["update_time"].isoformat(), expires)
            return identity_pb2.Membership(
                name=name,
                user=f"users/{user_id}",
                role=role,  # type: ignore[arg-type]
                pending=True,
                invitation_token=sign_invitation(signing_key, invitation),
                invitation_expire_time=timestamp(expires),
            )
        if await _admins_after(conn, org, user_id, role) == 0:
            raise last_admin(org)
        await accounts.set_membership(conn, org, user_id, role)
    return identity_pb2.Membership(name=name, user=f"users/{user_id}", role=role)  # type: ignore[arg-type]


async def accept(conn: Conn, verify_keys: tuple[bytes, ...], me: Caller, token: str) -> identity_pb2.Membership:
    """Make the caller a member as the invitation says, once; STATE_CONFLICT when it is spent, the
    account changed since, or its admin is no longer admin there."""
    invitation = verify_invitation(verify_keys, token)
    if invitation.user_id != me.user_id:
        raise invalid_field("invitation_token", "this invitation is for another user")
    check_role(invitation.role, "invitation_token")
    name = f"organizations/{invitation.org}/memberships/{me.user_id}"
    # The audit row belongs in the organization joined, which the caller is a member of afterwards.
    note_audit(name, actor=dataclasses.replace(me, roles={**me.roles, invitation.org: invitation.role}))
    async with conn.transaction():
        if await accounts.organization(conn, invitation.org, for_update=True) is None:
            raise not_found(f"organizations/{invitation.org}")
        version = await conn.fetchval(
            "SELECT update_time FROM identity.users WHERE user_id = $1 FOR UPDATE", me.user_id
        )
        inviter_role = await conn.fetchval(
            "SELECT role FROM identity.memberships WHERE org_id = $1 AND user_id = $2",
            invitation.org,
            invitation.inviter,
        )
        if version is None or version.isoformat() != invitation.version or inviter_role != ADMIN:
            raise invitation_void()
        await accounts.set_membership(conn, invitation.org, me.user_id, invitation.role)
        # Spends this token (and any other issued before): its version no longer matches.
        await conn.execute("UPDATE identity.users SET update_time = clock_timestamp() WHERE user_id = $1", me.user_id)
    return identity_pb2.Membership(name=name, user=f"users/{me.user_id}", role=invitation.role)  # type: ignore[arg-type]


async def remove(conn: Conn, org: str, user_id: str, name: str) -> None:
    """Delete the membership `name`; NOT_FOUND when there is none, FAILED_PRECONDITION for the last admin."""
    async with conn.transaction():
        await _lock_organization(conn, org)
        exists = await conn.fetchval(
            "SELECT 1 FROM identity.memberships WHERE org_id = $1 AND user_id = $2", org, user_id
        )
        if exists is None:
            raise not_found(name)
        if await _admins_after(conn, org, user_id, None) == 0:
            raise last_admin(org)
        await conn.execute("DELETE FROM identity.memberships WHERE org_id = $1 AND user_id = $2", org, user_id)
