"""Users as IdentityService shows them: who may see and manage whom, mapping, and their changes."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import asyncpg
import grpc
from emma.common.v1 import errors_pb2
from emma.identity.v1 import identity_pb2

from services.errors import ApiError, invalid_field, not_found
from services.identity import accounts, service_accounts
from services.identity.context import ADMIN, Caller
from services.identity.memberships import check_role, memberships_of
from services.identity.passwords import password_problem
from services.names import parse_user
from services.pagination import Page
from services.platform.migrations import Conn
from services.platform.rpc import timestamp

UPDATABLE = ("display_name", "password", "disabled")

log = logging.getLogger("emma.auth")


def can_see(me: Caller, user_id: str, their_orgs: dict[str, int]) -> bool:
    """Self, or an admin of an organization the user belongs to.

    The platform-admin flag gives no sight of users: a platform admin sees an organization's people
    only through a membership of that organization, like anyone else (docs/security.md).
    """
    return me.user_id == user_id or any(me.role_in(o) >= ADMIN for o in their_orgs)


def can_manage(me: Caller, row: Any, their_orgs: dict[str, int]) -> bool:
    """Whether `me` may change another user (password, disabled flag, sessions): an admin of every
    organization the user belongs to, so that an admin of one tenant cannot take over the user's
    access to another. A platform admin's account is changed by no one but its owner (and `emma
    admin`): an organization admin who could re-password it would gain the platform's powers.
    The caller's own platform-admin flag counts for nothing here."""
    if row["platform_admin"]:
        return False
    return bool(their_orgs) and all(me.role_in(o) >= ADMIN for o in their_orgs)


def user_message(row: Any, roles: dict[str, int], me: Caller | None) -> identity_pb2.User:
    """`me` (the caller) sees only the memberships in organizations they administer, unless it is
    themselves; None: all of them."""
    if me is not None and me.user_id != row["user_id"]:
        roles = {o: r for o, r in roles.items() if me.role_in(o) >= ADMIN}  # no other tenants' names
    return identity_pb2.User(
        name=f"users/{row['user_id']}",
        email=row["email"],
        display_name=row["display_name"],
        disabled=row["disabled"],
        memberships=[
            identity_pb2.Membership(
                name=f"organizations/{org}/memberships/{row['user_id']}",
                user=f"users/{row['user_id']}",
                role=role,  # type: ignore[arg-type]
            )
            for org, role in sorted(roles.items())
        ],
        create_time=timestamp(row["create_time"]),
        update_time=timestamp(row["update_time"]),
    )


async def user_row(conn: Conn, user_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM identity.users WHERE user_id = $1", user_id)


async def visible_user(conn: Conn, me: Caller, name: str, field: str = "name") -> tuple[Any, dict[str, int]]:
    """The named user (users/me: the caller) and their roles; NOT_FOUND unless `me` may see them."""
    user = parse_user(name, field)
    user_id = me.user_id if user == "me" else user
    row = await user_row(conn, user_id)
    roles = await memberships_of(conn, user_id) if row is not None else {}
    if row is None or not can_see(me, user_id, roles):
        raise not_found(name)
    return row, roles


async def list_users(conn: Conn, me: Caller, org: str, page: Page) -> identity_pb2.ListUsersResponse:
    rows = await conn.fetch(
        """SELECT u.* FROM identity.users u JOIN identity.memberships m ON m.user_id = u.user_id
           WHERE m.org_id = $1 ORDER BY u.email OFFSET $2 LIMIT $3""",
        org,
        page.offset,
        page.limit,
    )
    users = [user_message(r, await memberships_of(conn, r["user_id"]), me) for r in page.rows(rows)]
    return identity_pb2.ListUsersResponse(users=users, next_page_token=page.next_token(rows))


def validate_new_user(request: identity_pb2.CreateUserRequest) -> str:
    """The normalized e-mail address of a valid CreateUser request."""
    email = accounts.normalize_email(request.user.email)
    if not accounts.EMAIL.match(email):
        raise invalid_field("user.email", "must be an e-mail address")
    if service_accounts.is_service_login(email):
        # Reserved: a user holding "{id}@{org}.service.emma" would block or pose as that account.
        suffix = service_accounts.LOGIN_SUFFIX
        raise invalid_field("user.email", f"addresses ending in {suffix} are service accounts' logins")
    problem = password_problem(request.user.password)
    if problem:
        raise invalid_field("user.password", problem)
    check_role(request.role)
    return email


async def create_user(
    conn: Conn, me: Caller, org: str, email: str, password_hash: str, display_name: str, role: int
) -> identity_pb2.User:
    """Insert the user with a membership of `org` (in the caller's transaction).

    An e-mail address that belongs to a user the caller administers answers ALREADY_EXISTS, which
    tells the caller nothing new. One of a user the caller cannot see (another tenant's) gets the
    answer a creation gets, and nothing changes: neither an error nor a different answer may tell an
    admin which addresses exist in other tenants, and the existing account must keep its password
    and join no organization without consenting (invite them with SetMembership instead).
    """
    existing = await accounts.user_by_email(conn, email)
    if existing is not None:
        if can_see(me, existing["user_id"], await memberships_of(conn, existing["user_id"])):
            raise _user_exists(email)
        log.info(
            "CreateUser named the e-mail address of a user in another organization: answered as if "
            "created, nothing changed",
            extra={"actor": me.actor, "organization": f"organizations/{org}", "existing": existing["user_id"]},
        )
        now = timestamp(dt.datetime.now(dt.UTC))
        lookalike = accounts.new_user_id()  # no trace of the existing account, not even its id
        return identity_pb2.User(
            name=f"users/{lookalike}",
            email=email,
            display_name=display_name,
            memberships=[
                identity_pb2.Membership(
                    name=f"organizations/{org}/memberships/{lookalike}",
                    user=f"users/{lookalike}",
                    role=role,  # type: ignore[arg-type]
                )
            ],
            create_time=now,
            update_time=now,
        )
    try:
        user_id = await accounts.insert_user(conn, email=email, password_hash=password_hash, display_name=display_name)
    except asyncpg.UniqueViolationError:  # created concurrently since the look-up above
        raise _user_exists(email) from None
    await accounts.set_membership(conn, org, user_id, role)
    return user_message(await user_row(conn, user_id), {org: role}, me)


def _user_exists(email: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.ALREADY_EXISTS,
        errors_pb2.ERROR_REASON_RESOURCE_EXISTS,
        f"a user with the e-mail address {email} exists already",
    )


def update_paths(request: identity_pb2.UpdateUserRequest) -> list[str]:
    """The fields an UpdateUser request changes (an empty mask or "*": all of them)."""
    paths = list(request.update_mask.paths) or ["*"]
    if "*" in paths:
        paths = list(UPDATABLE)
    for p in paths:
        if p not in UPDATABLE:
            raise invalid_field("update_mask", f"{p!r} cannot be updated (display_name, password, disabled)")
    return paths


def check_may_update(me: Caller, row: Any, roles: dict[str, int], paths: list[str]) -> None:
    """Users change their own name and password; the rest needs can_manage."""
    if not can_manage(me, row, roles) and (row["user_id"] != me.user_id or "disabled" in paths):
        raise ApiError(
            grpc.StatusCode.PERMISSION_DENIED,
            errors_pb2.ERROR_REASON_ROLE_INSUFFICIENT,
            "only an admin of every organization of the user may change this",
        )


async def update_user(
    conn: Conn,
    user_id: str,
    paths: list[str],
    user: identity_pb2.User,
    new_hash: str | None,
    keep_session: str,
) -> asyncpg.Record | None:
    """Apply the update in one transaction; the user's row after it.

    A new password ends every other session of the user (all but `keep_session`); disabling a user
    ends all of them.
    """
    async with conn.transaction():
        if "display_name" in paths:
            await conn.execute(
                "UPDATE identity.users SET display_name = $2, update_time = now() WHERE user_id = $1",
                user_id,
                user.display_name,
            )
        if new_hash is not None:
            await conn.execute(
                "UPDATE identity.users SET password_hash = $2, update_time = now() WHERE user_id = $1",
                user_id,
                new_hash,
            )
            await conn.execute(
                """UPDATE identity.sessions SET revoke_time = now(), revoke_reason = 'password changed'
                   WHERE user_id = $1 AND revoke_time IS NULL AND session_id <> $2""",
                user_id,
                keep_session,
            )
        if "disabled" in paths:
            await conn.execute(
                "UPDATE identity.users SET disabled = $2, update_time = now() WHERE user_id = $1",
                user_id,
                user.disabled,
            )
            if user.disabled:
                await conn.execute(
                    """UPDATE identity.sessions SET revoke_time = now(), revoke_reason = 'user disabled'
                       WHERE user_id = $1 AND revoke_time IS NULL""",
                    user_id,
                )
    return await user_row(conn, user_id)
