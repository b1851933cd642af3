"""IdentityService: login and tokens, users and memberships, sessions, edge API keys."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import asyncpg
import grpc
from emma.common.v1 import errors_pb2
from emma.identity.v1 import identity_pb2, identity_pb2_grpc
from google.protobuf import empty_pb2

from services.errors import ApiError, invalid_field, not_found
from services.identity import accounts, ratelimit
from services.identity.context import ADMIN, Caller, call_state, caller, note_audit
from services.identity.edge_directory import edge_directory
from services.identity.edge_keys import issue_edge_key, revoke_edge_key
from services.identity.passwords import password_problem
from services.identity.state import AuthState, auth_state_for, session_revoked
from services.identity.tokens import new_refresh_token, parse_refresh_token, sign_access_token, token_invalid
from services.names import (
    parse_edge,
    parse_edge_api_key,
    parse_membership,
    parse_organization,
    parse_session,
    parse_user,
)
from services.pagination import Page
from services.platform.idempotency import run_once
from services.platform.migrations import Conn
from services.platform.rpc import Context, timestamp
from services.platform.runtime import Runtime

_SVC = "/emma.identity.v1.IdentityService/"


def _login_failed() -> ApiError:
    return ApiError(
        grpc.StatusCode.UNAUTHENTICATED,
        errors_pb2.ERROR_REASON_LOGIN_FAILED,
        "the e-mail address or the password is wrong",
    )


def _session_message(row: Any) -> identity_pb2.Session:
    s = identity_pb2.Session(
        name=f"users/{row['user_id']}/sessions/{row['session_id']}",
        create_time=timestamp(row["create_time"]),
        expire_time=timestamp(row["expire_time"]),
        client_address=row["client_address"],
    )
    if row["revoke_time"] is not None:
        s.revoke_time.CopyFrom(timestamp(row["revoke_time"]))
    return s


def _key_message(row: Any, edge: str) -> identity_pb2.EdgeApiKey:
    k = identity_pb2.EdgeApiKey(
        name=f"{edge}/apiKeys/{row['key_id']}",
        display_name=row["display_name"],
        key_prefix=row["key_prefix"],
        create_time=timestamp(row["create_time"]),
    )
    if row["revoke_time"] is not None:
        k.revoke_time.CopyFrom(timestamp(row["revoke_time"]))
    if row["last_use_time"] is not None:
        k.last_use_time.CopyFrom(timestamp(row["last_use_time"]))
    return k


async def _memberships(conn: Conn, user_id: str) -> dict[str, int]:
    rows = await conn.fetch("SELECT org_id, role FROM identity.memberships WHERE user_id = $1", user_id)
    return {r["org_id"]: int(r["role"]) for r in rows}


def _can_see(me: Caller, user_id: str, their_orgs: dict[str, int]) -> bool:
    """Self, a platform admin, or an admin of an organization the user belongs to."""
    return me.user_id == user_id or me.platform_admin or any(me.role_in(o) >= ADMIN for o in their_orgs)


def _can_manage(me: Caller, user_id: str, their_orgs: dict[str, int]) -> bool:
    """A platform admin, or an admin of every organization the user belongs to (so an admin of one
    tenant cannot lock out a member of another)."""
    if me.platform_admin:
        return True
    return bool(their_orgs) and all(me.role_in(o) >= ADMIN for o in their_orgs)


class IdentityServicer(identity_pb2_grpc.IdentityServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._pool = runtime.pool
        self.auth: AuthState = auth_state_for(runtime)
        self._config = self.auth.config

    # ------------------------------------------------------------------ helpers

    def _user_message(self, row: Any, roles: dict[str, int], me: Caller | None) -> identity_pb2.User:
        if me is not None and me.user_id != row["user_id"] and not me.platform_admin:
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

    async def _visible_user(self, conn: Conn, me: Caller, name: str, field: str = "name") -> tuple[Any, dict[str, int]]:
        user = parse_user(name, field)
        user_id = me.user_id if user == "me" else user
        row = await conn.fetchrow("SELECT * FROM identity.users WHERE user_id = $1", user_id)
        roles = await _memberships(conn, user_id) if row is not None else {}
        if row is None or not _can_see(me, user_id, roles):
            raise not_found(name)
        return row, roles

    async def _issue(self, conn: Conn, user_id: str, session_id: str, expire: dt.datetime) -> tuple[str, dt.datetime]:
        access_expire = min(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self._config.access_token_ttl_s), expire)
        return sign_access_token(self._config.jwt_signing_key, user_id, session_id, access_expire), access_expire

    # ------------------------------------------------------------------ tokens

    async def Login(self, request: identity_pb2.LoginRequest, context: Context) -> identity_pb2.LoginResponse:
        email = accounts.normalize_email(request.email)
        state = call_state()
        address = state.client_address if state else ""
        cfg = self._config
        limits = {ratelimit.user_key(email): cfg.login_max_failures_per_user}
        if address:
            limits[ratelimit.address_key(address)] = cfg.login_max_failures_per_address
        async with self._pool.acquire() as conn:
            wait = await ratelimit.retry_after_s(conn, limits, cfg.login_window_s)
            if wait is not None:
                raise ApiError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    errors_pb2.ERROR_REASON_LOGIN_RATE_LIMITED,
                    f"too many failed logins; retry in {wait:.0f} s",
                    metadata={"retry_after_ms": str(int(wait * 1000))},
                )
            row = await accounts.user_by_email(conn, email) if email and len(email) <= 320 else None
        # Always one argon2 verification, against a dummy hash for unknown users: same answer, same time.
        ok, rehash = await self.auth.passwords.verify(row["password_hash"] if row else None, request.password)
        if row is not None:
            note_audit(f"users/{row['user_id']}", actor=Caller(kind="user", user_id=row["user_id"]))
        async with self._pool.acquire() as conn:
            if row is not None:
                roles = await _memberships(conn, row["user_id"])
                note_audit(actor=Caller(kind="user", user_id=row["user_id"], roles=roles))
            if not ok or row is None or row["disabled"]:
                await ratelimit.record_failure(conn, list(limits), cfg.login_window_s)
                raise _login_failed()
            await ratelimit.clear(conn, ratelimit.user_key(email))
            if rehash:
                await conn.execute(
                    "UPDATE identity.users SET password_hash = $2 WHERE user_id = $1",
                    row["user_id"],
                    await self.auth.passwords.hash(request.password),
                )
            session_id = uuid.uuid4().hex
            refresh, digest = new_refresh_token(session_id)
            expire = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=cfg.refresh_token_ttl_s)
            session = await conn.fetchrow(
                """INSERT INTO identity.sessions (session_id, user_id, refresh_sha256, expire_time, client_address)
                   VALUES ($1, $2, $3, $4, $5) RETURNING *""",
                session_id,
                row["user_id"],
                digest,
                expire,
                address,
            )
            access, access_expire = await self._issue(conn, row["user_id"], session_id, expire)
        note_audit(f"users/{row['user_id']}/sessions/{session_id}")
        return identity_pb2.LoginResponse(
            access_token=access,
            access_token_expire_time=timestamp(access_expire),
            refresh_token=refresh,
            refresh_token_expire_time=timestamp(expire),
            session=_session_message(session),
            user=self._user_message(row, roles, None),
        )

    async def RefreshToken(
        self, request: identity_pb2.RefreshTokenRequest, context: Context
    ) -> identity_pb2.RefreshTokenResponse:
        parsed = parse_refresh_token(request.refresh_token)
        if parsed is None:
            raise token_invalid("the refresh token is not valid")
        session_id, digest = parsed
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                """SELECT s.*, u.disabled FROM identity.sessions s JOIN identity.users u USING (user_id)
                   WHERE s.session_id = $1""",
                session_id,
            )
            if row is None:
                raise token_invalid("the refresh token is not valid")
            note_audit(
                f"users/{row['user_id']}/sessions/{session_id}",
                actor=Caller(kind="user", user_id=row["user_id"], roles=await _memberships(conn, row["user_id"])),
            )
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
                    # A refresh token used twice: someone else has a copy. End the session for both.
                    await conn.execute(
                        """UPDATE identity.sessions SET revoke_time = now(), revoke_reason = 'refresh token reused'
                           WHERE session_id = $1 AND revoke_time IS NULL""",
                        session_id,
                    )
                    raise session_revoked("this refresh token was used before; the session was revoked")
                raise token_invalid("the refresh token is not valid")
            expire = rotated["expire_time"]
            access, access_expire = await self._issue(conn, row["user_id"], session_id, expire)
        return identity_pb2.RefreshTokenResponse(
            access_token=access,
            access_token_expire_time=timestamp(access_expire),
            refresh_token=new_token,
            refresh_token_expire_time=timestamp(expire),
        )

    async def Logout(self, request: identity_pb2.LogoutRequest, context: Context) -> empty_pb2.Empty:
        me = caller(context)
        me.require_user()
        note_audit(f"users/{me.user_id}/sessions/{me.session_id}")
        async with self._pool.acquire() as conn:
            await conn.execute(
                """UPDATE identity.sessions SET revoke_time = now(), revoke_reason = 'logout'
                   WHERE session_id = $1 AND revoke_time IS NULL""",
                me.session_id,
            )
        return empty_pb2.Empty()

    # ------------------------------------------------------------------ users

    async def GetUser(self, request: identity_pb2.GetUserRequest, context: Context) -> identity_pb2.User:
        me = caller(context)
        async with self._pool.acquire() as conn:
            row, roles = await self._visible_user(conn, me, request.name)
        return self._user_message(row, roles, me)

    async def ListUsers(
        self, request: identity_pb2.ListUsersRequest, context: Context
    ) -> identity_pb2.ListUsersResponse:
        me = caller(context)
        org = parse_organization(request.parent, "parent")
        me.require_org(org, ADMIN, resource=request.parent)
        page = Page.of("ListUsers", request)
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT u.* FROM identity.users u JOIN identity.memberships m ON m.user_id = u.user_id
                   WHERE m.org_id = $1 ORDER BY u.email OFFSET $2 LIMIT $3""",
                org,
                page.offset,
                page.limit,
            )
            users = [self._user_message(r, await _memberships(conn, r["user_id"]), me) for r in page.rows(rows)]
        token = page.next_token(rows)
        return identity_pb2.ListUsersResponse(users=users, next_page_token=token)

    async def CreateUser(self, request: identity_pb2.CreateUserRequest, context: Context) -> identity_pb2.User:
        me = caller(context)
        org = parse_organization(request.parent, "parent")
        me.require_org(org, ADMIN, resource=request.parent)
        email = accounts.normalize_email(request.user.email)
        if not accounts.EMAIL.match(email):
            raise invalid_field("user.email", "must be an e-mail address")
        problem = password_problem(request.user.password)
        if problem:
            raise invalid_field("user.password", problem)
        if request.role not in (identity_pb2.ROLE_VIEWER, identity_pb2.ROLE_OPERATOR, identity_pb2.ROLE_ADMIN):
            raise invalid_field("role", "must be ROLE_VIEWER, ROLE_OPERATOR or ROLE_ADMIN")
        password_hash = await self.auth.passwords.hash(request.user.password)

        async def change(conn: Conn) -> identity_pb2.User:
            try:
                user_id = await accounts.insert_user(
                    conn, email=email, password_hash=password_hash, display_name=request.user.display_name
                )
            except asyncpg.UniqueViolationError:
                raise ApiError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    errors_pb2.ERROR_REASON_RESOURCE_EXISTS,
                    f"a user with the e-mail address {email} exists already",
                ) from None
            await accounts.set_membership(conn, org, user_id, int(request.role))
            row = await conn.fetchrow("SELECT * FROM identity.users WHERE user_id = $1", user_id)
            return self._user_message(row, {org: int(request.role)}, me)

        async with self._pool.acquire() as conn:
            user = await run_once(
                conn,
                actor=me.actor,
                method=_SVC + "CreateUser",
                request=request,
                request_id=request.request_id,
                response_type=identity_pb2.User,
                change=change,
            )
        note_audit(user.name)
        return user

    async def UpdateUser(self, request: identity_pb2.UpdateUserRequest, context: Context) -> identity_pb2.User:
        me = caller(context)
        paths = list(request.update_mask.paths) or ["*"]
        if "*" in paths:
            paths = ["display_name", "password", "disabled"]
        for p in paths:
            if p not in ("display_name", "password", "disabled"):
                raise invalid_field("update_mask", f"{p!r} cannot be updated (display_name, password, disabled)")
        async with self._pool.acquire() as conn:
            row, roles = await self._visible_user(conn, me, request.user.name, "user.name")
            user_id = row["user_id"]
            note_audit(f"users/{user_id}")
            is_self = user_id == me.user_id
            manage = _can_manage(me, user_id, roles)
            if not manage and (not is_self or "disabled" in paths):
                raise ApiError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    errors_pb2.ERROR_REASON_ROLE_INSUFFICIENT,
                    "only an admin of every organization of the user may change this",
                )
            new_hash = None
            if "password" in paths:
                problem = password_problem(request.user.password)
                if problem:
                    raise invalid_field("user.password", problem)
                new_hash = await self.auth.passwords.hash(request.user.password)
            async with conn.transaction():
                if "display_name" in paths:
                    await conn.execute(
                        "UPDATE identity.users SET display_name = $2, update_time = now() WHERE user_id = $1",
                        user_id,
                        request.user.display_name,
                    )
                if new_hash is not None:
                    await conn.execute(
                        "UPDATE identity.users SET password_hash = $2, update_time = now() WHERE user_id = $1",
                        user_id,
                        new_hash,
                    )
                    # A new password ends every other session of the user.
                    await conn.execute(
                        """UPDATE identity.sessions SET revoke_time = now(), revoke_reason = 'password changed'
                           WHERE user_id = $1 AND revoke_time IS NULL AND session_id <> $2""",
                        user_id,
                        me.session_id if is_self else "",
                    )
                if "disabled" in paths:
                    await conn.execute(
                        "UPDATE identity.users SET disabled = $2, update_time = now() WHERE user_id = $1",
                        user_id,
                        request.user.disabled,
                    )
                    if request.user.disabled:
                        await conn.execute(
                            """UPDATE identity.sessions SET revoke_time = now(), revoke_reason = 'user disabled'
                               WHERE user_id = $1 AND revoke_time IS NULL""",
                            user_id,
                        )
            row = await conn.fetchrow("SELECT * FROM identity.users WHERE user_id = $1", user_id)
        return self._user_message(row, roles, me)

    async def _admin_count_after(self, conn: Conn, org: str, user_id: str, new_role: int | None) -> int:
        return int(
            await conn.fetchval(
                """SELECT count(*) FROM identity.memberships
                   WHERE org_id = $1 AND role = 3 AND user_id <> $2""",
                org,
                user_id,
            )
        ) + (1 if new_role == ADMIN else 0)

    async def SetMembership(
        self, request: identity_pb2.SetMembershipRequest, context: Context
    ) -> identity_pb2.Membership:
        me = caller(context)
        org = parse_organization(request.parent, "parent")
        me.require_org(org, ADMIN, resource=request.parent)
        user_id = parse_user(request.user, "user", allow_me=False)
        if request.role not in (identity_pb2.ROLE_VIEWER, identity_pb2.ROLE_OPERATOR, identity_pb2.ROLE_ADMIN):
            raise invalid_field("role", "must be ROLE_VIEWER, ROLE_OPERATOR or ROLE_ADMIN")
        name = f"organizations/{org}/memberships/{user_id}"
        note_audit(name)
        async with self._pool.acquire() as conn, conn.transaction():
            if await conn.fetchval("SELECT 1 FROM identity.users WHERE user_id = $1", user_id) is None:
                raise not_found(request.user)
            await conn.execute("SELECT 1 FROM app.organizations WHERE org_id = $1 FOR UPDATE", org)
            if await self._admin_count_after(conn, org, user_id, int(request.role)) == 0:
                raise _last_admin(org)
            await accounts.set_membership(conn, org, user_id, int(request.role))
        return identity_pb2.Membership(name=name, user=f"users/{user_id}", role=request.role)

    async def DeleteMembership(
        self, request: identity_pb2.DeleteMembershipRequest, context: Context
    ) -> empty_pb2.Empty:
        me = caller(context)
        membership = parse_membership(request.name)
        org, user_id = membership.org, membership.user
        me.require_org(org, ADMIN, resource=request.name)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT 1 FROM app.organizations WHERE org_id = $1 FOR UPDATE", org)
            exists = await conn.fetchval(
                "SELECT 1 FROM identity.memberships WHERE org_id = $1 AND user_id = $2", org, user_id
            )
            if exists is None:
                raise not_found(request.name)
            if await self._admin_count_after(conn, org, user_id, None) == 0:
                raise _last_admin(org)
            await conn.execute("DELETE FROM identity.memberships WHERE org_id = $1 AND user_id = $2", org, user_id)
        return empty_pb2.Empty()

    # ------------------------------------------------------------------ sessions

    async def ListSessions(
        self, request: identity_pb2.ListSessionsRequest, context: Context
    ) -> identity_pb2.ListSessionsResponse:
        me = caller(context)
        page = Page.of("ListSessions", request)
        async with self._pool.acquire() as conn:
            row, roles = await self._visible_user(conn, me, request.parent, "parent")
            if row["user_id"] != me.user_id and not _can_manage(me, row["user_id"], roles):
                raise not_found(request.parent)
            rows = await conn.fetch(
                """SELECT * FROM identity.sessions WHERE user_id = $1
                   ORDER BY create_time DESC, session_id OFFSET $2 LIMIT $3""",
                row["user_id"],
                page.offset,
                page.limit,
            )
        token = page.next_token(rows)
        return identity_pb2.ListSessionsResponse(
            sessions=[_session_message(r) for r in page.rows(rows)], next_page_token=token
        )

    async def RevokeSession(self, request: identity_pb2.RevokeSessionRequest, context: Context) -> identity_pb2.Session:
        me = caller(context)
        session_name = parse_session(request.name)
        async with self._pool.acquire() as conn:
            row, roles = await self._visible_user(conn, me, f"users/{session_name.user}")
            if row["user_id"] != me.user_id and not _can_manage(me, row["user_id"], roles):
                raise not_found(request.name)
            note_audit(f"users/{row['user_id']}/sessions/{session_name.session}")
            await conn.execute(
                """UPDATE identity.sessions SET revoke_time = now(), revoke_reason = 'revoked'
                   WHERE session_id = $1 AND user_id = $2 AND revoke_time IS NULL""",
                session_name.session,
                row["user_id"],
            )
            session = await conn.fetchrow(
                "SELECT * FROM identity.sessions WHERE session_id = $1 AND user_id = $2",
                session_name.session,
                row["user_id"],
            )
        if session is None:
            raise not_found(request.name)
        return _session_message(session)

    # ------------------------------------------------------------------ edge API keys

    async def _edge_pk(self, conn: Conn, me: Caller, name: str, field: str = "parent") -> int:
        edge = parse_edge(name, field)
        me.require_org(edge.org, ADMIN, resource=name)
        pk = await edge_directory().edge_pk(conn, edge)
        if pk is None:
            raise not_found(name)
        return pk

    async def CreateEdgeApiKey(
        self, request: identity_pb2.CreateEdgeApiKeyRequest, context: Context
    ) -> identity_pb2.EdgeApiKey:
        me = caller(context)
        display_name = request.edge_api_key.display_name
        if len(display_name) > 200:
            raise invalid_field("edge_api_key.display_name", "at most 200 characters")

        async def change(conn: Conn) -> identity_pb2.EdgeApiKey:
            pk = await self._edge_pk(conn, me, request.parent)
            key_id, key = await issue_edge_key(conn, pk, display_name)
            row = await conn.fetchrow("SELECT * FROM identity.edge_api_keys WHERE key_id = $1", key_id)
            message = _key_message(row, request.parent)
            message.key = key
            return message

        async with self._pool.acquire() as conn:
            created = await run_once(
                conn,
                actor=me.actor,
                method=_SVC + "CreateEdgeApiKey",
                request=request,
                request_id=request.request_id,
                response_type=identity_pb2.EdgeApiKey,
                change=change,
            )
        note_audit(created.name)
        return created

    async def ListEdgeApiKeys(
        self, request: identity_pb2.ListEdgeApiKeysRequest, context: Context
    ) -> identity_pb2.ListEdgeApiKeysResponse:
        me = caller(context)
        page = Page.of("ListEdgeApiKeys", request)
        async with self._pool.acquire() as conn:
            pk = await self._edge_pk(conn, me, request.parent)
            rows = await conn.fetch(
                """SELECT * FROM identity.edge_api_keys WHERE edge_pk = $1
                   ORDER BY create_time DESC, key_id OFFSET $2 LIMIT $3""",
                pk,
                page.offset,
                page.limit,
            )
        token = page.next_token(rows)
        return identity_pb2.ListEdgeApiKeysResponse(
            edge_api_keys=[_key_message(r, request.parent) for r in page.rows(rows)], next_page_token=token
        )

    async def RevokeEdgeApiKey(
        self, request: identity_pb2.RevokeEdgeApiKeyRequest, context: Context
    ) -> identity_pb2.EdgeApiKey:
        me = caller(context)
        key_name = parse_edge_api_key(request.name)
        edge_name, key_id = str(key_name.edge), key_name.key_id
        async with self._pool.acquire() as conn:
            pk = await self._edge_pk(conn, me, edge_name, "name")
            row = await conn.fetchrow(
                "SELECT * FROM identity.edge_api_keys WHERE key_id = $1 AND edge_pk = $2", key_id, pk
            )
            if row is None:
                raise not_found(request.name)
            # The UPDATE's trigger NOTIFYs every replica; the one holding the edge's stream closes it.
            await revoke_edge_key(conn, key_id)
            row = await conn.fetchrow("SELECT * FROM identity.edge_api_keys WHERE key_id = $1", key_id)
        return _key_message(row, edge_name)


def _last_admin(org: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        errors_pb2.ERROR_REASON_STATE_CONFLICT,
        f"organizations/{org} would have no admin left; make someone else admin first",
        metadata={"organization": f"organizations/{org}"},
    )
