"""Sessions: login (rate-limited), refresh-token rotation, logout and revocation, and their mapping."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import asyncpg
import grpc
from emma.common.v1 import errors_pb2
from emma.identity.v1 import identity_pb2

from services.errors import ApiError
from services.identity import accounts, ratelimit, service_accounts
from services.identity.config import AuthConfig
from services.identity.context import Caller, note_audit
from services.identity.memberships import memberships_of
from services.identity.passwords import Passwords
from services.identity.state import session_revoked
from services.identity.tokens import new_refresh_token, parse_refresh_token, sign_access_token, token_invalid
from services.identity.users import user_message
from services.pagination import Page
from services.platform.migrations import Conn
from services.platform.rpc import timestamp


def session_message(row: Any) -> identity_pb2.Session:
    s = identity_pb2.Session(
        name=f"users/{row['user_id']}/sessions/{row['session_id']}",
        create_time=timestamp(row["create_time"]),
        expire_time=timestamp(row["expire_time"]),
        client_address=row["client_address"],
    )
    if row["revoke_time"] is not None:
        s.revoke_time.CopyFrom(timestamp(row["revoke_time"]))
    return s


def _login_failed() -> ApiError:
    return ApiError(
        grpc.StatusCode.UNAUTHENTICATED,
        errors_pb2.ERROR_REASON_LOGIN_FAILED,
        "the e-mail address or the password is wrong",
    )


def _access_token(config: AuthConfig, user_id: str, session_id: str, expire: dt.datetime) -> tuple[str, dt.datetime]:
    """A signed access token that ends no later than its session: (token, its expiry)."""
    access_expire = min(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=config.access_token_ttl_s), expire)
    return sign_access_token(config.jwt_signing_key, user_id, session_id, access_expire), access_expire


async def login(
    pool: asyncpg.Pool,
    config: AuthConfig,
    passwords: Passwords,
    request: identity_pb2.LoginRequest,
    address: str,
) -> identity_pb2.LoginResponse:
    """A new session for the user with this e-mail address and password.

    Failures count per account and client address, per client address, and per account; past a
    limit the answer is RESOURCE_EXHAUSTED before any password is looked at (ratelimit.py: which
    budget refuses whom). The audit row names the user even when the login fails.
    """
    email = accounts.normalize_email(request.email)
    account = ratelimit.user_key(email)
    limits = {ratelimit.user_address_key(email, address): config.login_max_failures_per_user}
    if address:
        limits[ratelimit.address_key(address)] = config.login_max_failures_per_address
    async with pool.acquire() as conn:
        wait = await ratelimit.retry_after_s(conn, limits, config.login_window_s)
        if wait is None:
            # The account's overall budget binds only addresses it has not logged in from.
            wait = await ratelimit.retry_after_s(
                conn, {account: config.login_max_failures_per_account}, config.login_window_s
            )
            if wait is not None and await _known_address(conn, email, address, config.login_known_address_s):
                wait = None
        if wait is not None:
            raise ApiError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                errors_pb2.ERROR_REASON_LOGIN_RATE_LIMITED,
                f"too many failed logins; retry in {wait:.0f} s",
                metadata={"retry_after_ms": str(int(wait * 1000))},
            )
        row = await accounts.user_by_email(conn, email) if email and len(email) <= 320 else None
    # Always one argon2 verification, against a dummy hash for unknown users: same answer, same time.
    ok, rehash = await passwords.verify(row["password_hash"] if row else None, request.password)
    if row is not None:
        note_audit(f"users/{row['user_id']}", actor=Caller(kind="user", user_id=row["user_id"]))
    async with pool.acquire() as conn:
        if row is not None:
            roles = await memberships_of(conn, row["user_id"])
            note_audit(actor=Caller(kind="user", user_id=row["user_id"], roles=roles))
            await _note_service_account(conn, row["user_id"], roles)
        if not ok or row is None or row["disabled"]:
            await ratelimit.record_failure(conn, [*limits, account], config.login_window_s)
            raise _login_failed()
        await ratelimit.clear(conn, ratelimit.user_address_key(email, address))
        if rehash:
            await conn.execute(
                "UPDATE identity.users SET password_hash = $2 WHERE user_id = $1",
                row["user_id"],
                await passwords.hash(request.password),
            )
        session_id = uuid.uuid4().hex
        refresh, digest = new_refresh_token(session_id)
        expire = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=config.refresh_token_ttl_s)
        session = await conn.fetchrow(
            """INSERT INTO identity.sessions (session_id, user_id, refresh_sha256, expire_time, client_address)
               VALUES ($1, $2, $3, $4, $5) RETURNING *""",
            session_id,
            row["user_id"],
            digest,
            expire,
            address,
        )
        access, access_expire = _access_token(config, row["user_id"], session_id, expire)
    note_audit(f"users/{row['user_id']}/sessions/{session_id}")
    return identity_pb2.LoginResponse(
        access_token=access,
        access_token_expire_time=timestamp(access_expire),
        refresh_token=refresh,
        refresh_token_expire_time=timestamp(expire),
        session=session_message(session),
        user=user_message(row, roles, None),
    )


async def _note_service_account(conn: Conn, user_id: str, roles: dict[str, int]) -> None:
    """A service account's logins and refreshes are audited in its organization (it is a member of
    none, so they would otherwise be platform-level rows its admins cannot read)."""
    if roles:
        return
    org = await service_accounts.org_of(conn, user_id)
    if org is not None:
        note_audit(orgs=[org])


async def _known_address(conn: Conn, email: str, address: str, within_s: float) -> bool:
    """Whether the account logged in successfully from `address` within the last `within_s`."""
    if not address:
        return False
    found = await conn.fetchval(
        """SELECT 1 FROM identity.sessions s JOIN identity.users u USING (user_id)
           WHERE lower(u.email) = $1 AND s.client_address = $2
             AND s.create_time > now() - make_interval(secs => $3)
           LIMIT 1""",
        email,
        address,
        within_s,
    )
    return found is not None


async def refresh(pool: asyncpg.Pool, config: AuthConfig, refresh_token: str) -> identity_pb2.RefreshTokenResponse:
    """Rotate the session's refresh token and issue a new access token.

    A refresh token used a second time means someone else has a copy: the session ends for both.
    """
    parsed = parse_refresh_token(refresh_token)
    if parsed is None:
        raise token_invalid("the refresh token is not valid")
    session_id, digest = parsed
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            """SELECT s.*, u.disabled FROM identity.sessions s JOIN identity.users u USING (user_id)
               WHERE s.session_id = $1""",
            session_id,
        )
        if row is None:
            raise token_invalid("the refresh token is not valid")
        roles = await memberships_of(conn, row["user_id"])
        note_audit(
            f"users/{row['user_id']}/sessions/{session_id}",
            actor=Caller(kind="user", user_id=row["user_id"], roles=roles),
        )
        await _note_service_account(conn, row["user_id"], roles)
        if row["revoke_time"] is not None or row["disabled"]:
            raise session_revoked()
        if row["expire_time"] <= dt.datetime.now(dt.UTC):
            raise ApiError(
                grpc.StatusCode.UNAUTHENTICATED,
                errors_pb2.ERROR_REASON_TOKEN_EXPIRED,
                "the refresh token has expired; log in again",
            )
        new_token, new_digest = new_refresh_token(session_id)
        rotated = await conn.fetchrow(
            """UPDATE identity.sessions SET prev_refresh_sha256 = refresh_sha256, refresh_sha256 = $3,
                      last_refresh_time = now()
               WHERE session_id = $1 AND refresh_sha256 = $2 AND revoke_time IS NULL RETURNING expire_time""",
            session_id,
            digest,
            new_digest,
        )
        if rotated is None:
            if row["prev_refresh_sha256"] is not None and bytes(row["prev_refresh_sha256"]) == digest:
                await end(conn, session_id, "refresh token reused")
                raise session_revoked("this refresh token was used before; the session was revoked")
            raise token_invalid("the refresh token is not valid")
        expire = rotated["expire_time"]
        access, access_expire = _access_token(config, row["user_id"], session_id, expire)
    return identity_pb2.RefreshTokenResponse(
        access_token=access,
        access_token_expire_time=timestamp(access_expire),
        refresh_token=new_token,
        refresh_token_expire_time=timestamp(expire),
    )


async def end(conn: Conn, session_id: str, reason: str) -> None:
    """Revoke the session (if it is still open); the trigger tells every replica."""
    await conn.execute(
        """UPDATE identity.sessions SET revoke_time = now(), revoke_reason = $2
           WHERE session_id = $1 AND revoke_time IS NULL""",
        session_id,
        reason,
    )


async def list_sessions(conn: Conn, user_id: str, page: Page) -> identity_pb2.ListSessionsResponse:
    rows = await conn.fetch(
        """SELECT * FROM identity.sessions WHERE user_id = $1
           ORDER BY create_time DESC, session_id OFFSET $2 LIMIT $3""",
        user_id,
        page.offset,
        page.limit,
    )
    return identity_pb2.ListSessionsResponse(
        sessions=[session_message(r) for r in page.rows(rows)], next_page_token=page.next_token(rows)
    )


async def revoke(conn: Conn, user_id: str, session_id: str) -> identity_pb2.Session | None:
    """Revoke one of the user's sessions; the session after it, None when the user has no such session."""
    await conn.execute(
        """UPDATE identity.sessions SET revoke_time = now(), revoke_reason = 'revoked'
           WHERE session_id = $1 AND user_id = $2 AND revoke_time IS NULL""",
        session_id,
        user_id,
    )
    row = await conn.fetchrow(
        "SELECT * FROM identity.sessions WHERE session_id = $1 AND user_id = $2", session_id, user_id
    )
    return None if row is None else session_message(row)
