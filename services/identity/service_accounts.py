"""Service accounts: logins for programs (a recommendation service), each with one narrow role in one
organization.

A service account is a user (it logs in, refreshes, and its sessions are revoked like anyone's) plus a
row in identity.service_accounts, and it is never a member of any organization: every method that
asks for a role in an organization (the policy's VIEWER/OPERATOR/ADMIN entries, require_org) refuses
it as it refuses a stranger, with RESOURCE_NOT_FOUND. The few methods that accept a service account
are USER in the policy and ask `service_account_role` themselves (AlarmService.CreateRecommendation),
so what an account may do is written at exactly those places. That needs no change to the tokens, the
interceptor or the session cache, and deleting the account deletes its user, which ends its sessions
through the revocation path every other user has (migration 0005's triggers NOTIFY every replica).

The password is generated (256 bits) and returned once; it is stored as an argon2 hash like any
user's. Rotation is delete and create: there is no second way to obtain the password.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
from emma.common.v1 import errors_pb2
from emma.identity.v1 import identity_pb2

from services.errors import ApiError, invalid_field, not_found
from services.identity import accounts
from services.identity.context import Caller
from services.names import ID_PATTERN
from services.pagination import Page
from services.platform.migrations import Conn
from services.platform.rpc import timestamp

RECOMMENDER = identity_pb2.SERVICE_ACCOUNT_ROLE_RECOMMENDER
ROLES = (RECOMMENDER,)
MAX_DISPLAY_NAME_CHARS = 200
# Logins are "{id}@{org}.service.emma". ".emma" is not a delegated top-level domain, so no person's
# address can look like one, and CreateUser refuses the suffix so nobody can take an account's login.
LOGIN_SUFFIX = ".service.emma"
_NAME = re.compile(r"^organizations/([a-z][a-z0-9-]{0,62})/serviceAccounts/([a-z][a-z0-9-]{0,62})\Z")


@dataclass(frozen=True)
class ServiceAccountGrant:
    """What a service account may do in its organization: its resource name and its role
    (emma.identity.v1.ServiceAccountRole)."""

    name: str
    role: int


def name_of(org: str, account_id: str) -> str:
    return f"organizations/{org}/serviceAccounts/{account_id}"


def login_of(org: str, account_id: str) -> str:
    return f"{account_id}@{org}{LOGIN_SUFFIX}"


def is_service_login(email: str) -> bool:
    return accounts.normalize_email(email).endswith(LOGIN_SUFFIX)


def parse_name(name: str, field: str = "name") -> tuple[str, str]:
    """organizations/{org}/serviceAccounts/{id} -> (org, id)."""
    m = _NAME.match(name)
    if not m:
        expected = "organizations/{organization}/serviceAccounts/{service_account}"
        raise invalid_field(field, f"{name!r} is not {expected}")
    return m.group(1), m.group(2)


def check_new(request: identity_pb2.CreateServiceAccountRequest) -> tuple[str, int]:
    """The display name and role of a valid CreateServiceAccount request (everything that needs no
    database); FIELD_INVALID naming the field otherwise."""
    if not ID_PATTERN.match(request.service_account_id):
        raise invalid_field("service_account_id", "1-63 lowercase letters, digits and hyphens, starting with a letter")
    account = request.service_account
    if len(account.display_name) > MAX_DISPLAY_NAME_CHARS:
        raise invalid_field("service_account.display_name", f"at most {MAX_DISPLAY_NAME_CHARS} characters")
    if account.role not in ROLES:
        raise invalid_field("service_account.role", "must be SERVICE_ACCOUNT_ROLE_RECOMMENDER")
    return account.display_name, int(account.role)


def new_password() -> str:
    """256 random bits, URL-safe (43 characters): no dictionary or guessing attack applies."""
    return secrets.token_urlsafe(32)


def _message(r: Any) -> identity_pb2.ServiceAccount:
    return identity_pb2.ServiceAccount(
        name=name_of(r["org_id"], r["account_id"]),
        display_name=r["display_name"],
        role=r["role"],
        user=f"users/{r['user_id']}",
        login=r["email"],
        creator=r["created_by"],
        create_time=timestamp(r["create_time"]),
    )


_SELECT = """SELECT a.*, u.email FROM identity.service_accounts a JOIN identity.users u USING (user_id)"""


def _exists(name: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.ALREADY_EXISTS,
        errors_pb2.ERROR_REASON_RESOURCE_EXISTS,
        f"{name} exists already",
        metadata={"resource": name},
    )


async def create(
    conn: Conn, me: Caller, org: str, account_id: str, display_name: str, role: int, password_hash: str
) -> identity_pb2.ServiceAccount:
    """Insert the account's user (no membership) and its row, in the caller's transaction."""
    name = name_of(org, account_id)
    if not await accounts.organization_exists(conn, org):
        raise not_found(f"organizations/{org}")
    try:
        # A savepoint: the unique violation must not abort the caller's transaction before we answer.
        async with conn.transaction():
            user_id = await accounts.insert_user(
                conn, email=login_of(org, account_id), password_hash=password_hash, display_name=display_name
            )
            await conn.execute(
                """INSERT INTO identity.service_accounts (user_id, org_id, account_id, role, display_name, created_by)
                   VALUES ($1, $2, $3, $4, $5, $6)""",
                user_id,
                org,
                account_id,
                role,
                display_name,
                me.actor,
            )
    except asyncpg.UniqueViolationError:  # the id (or its login) is taken
        raise _exists(name) from None
    row = await conn.fetchrow(_SELECT + " WHERE a.user_id = $1", user_id)
    return _message(row)


async def get(conn: Conn, org: str, account_id: str, name: str) -> identity_pb2.ServiceAccount:
    row = await conn.fetchrow(_SELECT + " WHERE a.org_id = $1 AND a.account_id = $2", org, account_id)
    if row is None:
        raise not_found(name)
    return _message(row)


async def list_accounts(conn: Conn, org: str, page: Page) -> identity_pb2.ListServiceAccountsResponse:
    rows = await conn.fetch(
        _SELECT + " WHERE a.org_id = $1 ORDER BY a.account_id OFFSET $2 LIMIT $3", org, page.offset, page.limit
    )
    return identity_pb2.ListServiceAccountsResponse(
        service_accounts=[_message(r) for r in page.rows(rows)], next_page_token=page.next_token(rows)
    )


async def delete(conn: Conn, org: str, account_id: str, name: str) -> str:
    """Delete the account and return its user id; the trigger of migration 0020 deletes its user, which
    ends its sessions and tells every replica (NOT_FOUND when there is no such account)."""
    deleted = await conn.fetchval(
        "DELETE FROM identity.service_accounts WHERE org_id = $1 AND account_id = $2 RETURNING user_id",
        org,
        account_id,
    )
    if deleted is None:
        raise not_found(name)
    return str(deleted)


async def org_of(conn: Conn, user_id: str) -> str | None:
    """The organization of the service account that is this user, None for a person."""
    org = await conn.fetchval("SELECT org_id FROM identity.service_accounts WHERE user_id = $1", user_id)
    return None if org is None else str(org)


async def service_account_role(conn: Conn, user_id: str, org: str) -> ServiceAccountGrant | None:
    """The grant of the service account that is this user, if it is one of `org`; None for a person
    or another organization's account. For the methods that accept a service account (their policy
    entry is USER): they allow what the role says and refuse the rest as for a stranger."""
    row = await conn.fetchrow(
        "SELECT account_id, role FROM identity.service_accounts WHERE user_id = $1 AND org_id = $2", user_id, org
    )
    return None if row is None else ServiceAccountGrant(name_of(org, row["account_id"]), int(row["role"]))
