"""Memberships (a user's role in an organization): validation, reads, and changes that keep an admin."""

from __future__ import annotations

import grpc
from emma.common.v1 import errors_pb2
from emma.identity.v1 import identity_pb2

from services.errors import ApiError, invalid_field, not_found
from services.identity import accounts
from services.identity.context import ADMIN
from services.platform.migrations import Conn

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


async def set_role(conn: Conn, org: str, user_id: str, role: int, user_resource: str) -> None:
    """Give the user `role` in the organization; NOT_FOUND for an unknown user (named
    `user_resource`), FAILED_PRECONDITION when that would leave no admin."""
    async with conn.transaction():
        if await conn.fetchval("SELECT 1 FROM identity.users WHERE user_id = $1", user_id) is None:
            raise not_found(user_resource)
        await _lock_organization(conn, org)
        if await _admins_after(conn, org, user_id, role) == 0:
            raise last_admin(org)
        await accounts.set_membership(conn, org, user_id, role)


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
