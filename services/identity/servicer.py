"""IdentityService: a thin shell that parses each request, checks the caller's access and delegates to
the module of its resource (sessions, users, memberships, edge_keys)."""

from __future__ import annotations

from emma.identity.v1 import identity_pb2, identity_pb2_grpc
from google.protobuf import empty_pb2

from services.errors import invalid_field, not_found
from services.identity import edge_keys, memberships, service_accounts, sessions, users
from services.identity.context import ADMIN, call_state, caller, note_audit
from services.identity.passwords import password_problem
from services.identity.state import AuthState, auth_state_for
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
from services.platform.rpc import Context
from services.platform.runtime import Runtime

_SVC = "/emma.identity.v1.IdentityService/"


class IdentityServicer(identity_pb2_grpc.IdentityServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._pool = runtime.pool
        self.auth: AuthState = auth_state_for(runtime)
        self._config = self.auth.config

    # ------------------------------------------------------------------ sessions

    async def Login(self, request: identity_pb2.LoginRequest, context: Context) -> identity_pb2.LoginResponse:
        state = call_state()
        address = state.client_address if state else ""
        return await sessions.login(self._pool, self._config, self.auth.passwords, request, address)

    async def RefreshToken(
        self, request: identity_pb2.RefreshTokenRequest, context: Context
    ) -> identity_pb2.RefreshTokenResponse:
        return await sessions.refresh(self._pool, self._config, request.refresh_token)

    async def Logout(self, request: identity_pb2.LogoutRequest, context: Context) -> empty_pb2.Empty:
        me = caller(context)
        me.require_user()
        note_audit(f"users/{me.user_id}/sessions/{me.session_id}")
        async with self._pool.acquire() as conn:
            await sessions.end(conn, me.session_id, "logout")
        self.auth.forget_session(me.session_id)
        return empty_pb2.Empty()

    async def ListSessions(
        self, request: identity_pb2.ListSessionsRequest, context: Context
    ) -> identity_pb2.ListSessionsResponse:
        me = caller(context)
        page = Page.of("ListSessions", request)
        async with self._pool.acquire() as conn:
            row, roles = await users.visible_user(conn, me, request.parent, "parent")
            if row["user_id"] != me.user_id and not users.can_manage(me, row, roles):
                raise not_found(request.parent)
            return await sessions.list_sessions(conn, row["user_id"], page)

    async def RevokeSession(self, request: identity_pb2.RevokeSessionRequest, context: Context) -> identity_pb2.Session:
        me = caller(context)
        name = parse_session(request.name)
        async with self._pool.acquire() as conn:
            row, roles = await users.visible_user(conn, me, f"users/{name.user}")
            if row["user_id"] != me.user_id and not users.can_manage(me, row, roles):
                raise not_found(request.name)
            note_audit(f"users/{row['user_id']}/sessions/{name.session}")
            session = await sessions.revoke(conn, row["user_id"], name.session)
        self.auth.forget_session(name.session)
        if session is None:
            raise not_found(request.name)
        return session

    # ------------------------------------------------------------------ users

    async def GetUser(self, request: identity_pb2.GetUserRequest, context: Context) -> identity_pb2.User:
        me = caller(context)
        async with self._pool.acquire() as conn:
            row, roles = await users.visible_user(conn, me, request.name)
        return users.user_message(row, roles, me)

    async def ListUsers(
        self, request: identity_pb2.ListUsersRequest, context: Context
    ) -> identity_pb2.ListUsersResponse:
        me = caller(context)
        org = parse_organization(request.parent, "parent")
        me.require_org(org, ADMIN, resource=request.parent)
        page = Page.of("ListUsers", request)
        async with self._pool.acquire() as conn:
            return await users.list_users(conn, me, org, page)

    async def CreateUser(self, request: identity_pb2.CreateUserRequest, context: Context) -> identity_pb2.User:
        me = caller(context)
        org = parse_organization(request.parent, "parent")
        me.require_org(org, ADMIN, resource=request.parent)
        email = users.validate_new_user(request)
        password_hash = await self.auth.passwords.hash(request.user.password)

        async def change(conn: Conn) -> identity_pb2.User:
            return await users.create_user(
                conn, me, org, email, password_hash, request.user.display_name, int(request.role)
            )

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
        paths = users.update_paths(request)
        async with self._pool.acquire() as conn:
            row, roles = await users.visible_user(conn, me, request.user.name, "user.name")
            user_id = row["user_id"]
            note_audit(f"users/{user_id}")
            users.check_may_update(me, row, roles, paths)
            new_hash = None
            if "password" in paths:
                problem = password_problem(request.user.password)
                if problem:
                    raise invalid_field("user.password", problem)
                new_hash = await self.auth.passwords.hash(request.user.password)
            keep_session = me.session_id if user_id == me.user_id else ""
            row = await users.update_user(conn, user_id, paths, request.user, new_hash, keep_session)
        self.auth.forget_user(user_id)
        return users.user_message(row, roles, me)

    # ------------------------------------------------------------------ memberships

    async def SetMembership(
        self, request: identity_pb2.SetMembershipRequest, context: Context
    ) -> identity_pb2.Membership:
        me = caller(context)
        org = parse_organization(request.parent, "parent")
        me.require_org(org, ADMIN, resource=request.parent)
        user_id = parse_user(request.user, "user", allow_me=False)
        memberships.check_role(request.role)
        note_audit(f"organizations/{org}/memberships/{user_id}")
        async with self._pool.acquire() as conn:
            membership = await memberships.set_role(
                conn, self._config.jwt_signing_key, me, org, user_id, int(request.role), request.user
            )
        self.auth.forget_user(user_id)
        return membership

    async def AcceptInvitation(
        self, request: identity_pb2.AcceptInvitationRequest, context: Context
    ) -> identity_pb2.Membership:
        me = caller(context)
        me.require_user()
        keys = (self._config.jwt_signing_key, *self._config.jwt_verify_keys)
        async with self._pool.acquire() as conn:
            return await memberships.accept(conn, keys, me, request.invitation_token)

    async def DeleteMembership(
        self, request: identity_pb2.DeleteMembershipRequest, context: Context
    ) -> empty_pb2.Empty:
        me = caller(context)
        name = parse_membership(request.name)
        me.require_org(name.org, ADMIN, resource=request.name)
        async with self._pool.acquire() as conn:
            await memberships.remove(conn, name.org, name.user, request.name)
        self.auth.forget_user(name.user)
        return empty_pb2.Empty()

    # ------------------------------------------------------------------ edge API keys

    async def CreateEdgeApiKey(
        self, request: identity_pb2.CreateEdgeApiKeyRequest, context: Context
    ) -> identity_pb2.EdgeApiKey:
        me = caller(context)
        display_name = request.edge_api_key.display_name
        edge_keys.check_display_name(display_name)

        async def change(conn: Conn) -> identity_pb2.EdgeApiKey:
            # Inside the change: a retry of a stored request gets the stored answer first.
            edge = parse_edge(request.parent, "parent")
            me.require_org(edge.org, ADMIN, resource=request.parent)
            return await edge_keys.create_key(conn, edge, display_name)

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
        edge = parse_edge(request.parent, "parent")
        me.require_org(edge.org, ADMIN, resource=request.parent)
        async with self._pool.acquire() as conn:
            return await edge_keys.list_keys(conn, edge, page)

    async def RevokeEdgeApiKey(
        self, request: identity_pb2.RevokeEdgeApiKeyRequest, context: Context
    ) -> identity_pb2.EdgeApiKey:
        me = caller(context)
        name = parse_edge_api_key(request.name)
        me.require_org(name.edge.org, ADMIN, resource=str(name.edge))
        async with self._pool.acquire() as conn:
            revoked = await edge_keys.revoke_key(conn, name.edge, name.key_id, request.name)
        self.auth.revoke_edge_key(name.key_id)
        return revoked

    # ------------------------------------------------------------------ service accounts

    async def CreateServiceAccount(
        self, request: identity_pb2.CreateServiceAccountRequest, context: Context
    ) -> identity_pb2.ServiceAccount:
        me = caller(context)
        org = parse_organization(request.parent, "parent")
        me.require_org(org, ADMIN, resource=request.parent)
        display_name, role = service_accounts.check_new(request)
        password = service_accounts.new_password()
        password_hash = await self.auth.passwords.hash(password)

        async def change(conn: Conn) -> identity_pb2.ServiceAccount:
            created = await service_accounts.create(
                conn, me, org, request.service_account_id, display_name, role, password_hash
            )
            # In this answer only: run_once stores it with sensitive fields cleared, so a retry of
            # the request gets the account without the password.
            created.password = password
            return created

        async with self._pool.acquire() as conn:
            created = await run_once(
                conn,
                actor=me.actor,
                method=_SVC + "CreateServiceAccount",
                request=request,
                request_id=request.request_id,
                response_type=identity_pb2.ServiceAccount,
                change=change,
            )
        note_audit(created.name)
        return created

    async def GetServiceAccount(
        self, request: identity_pb2.GetServiceAccountRequest, context: Context
    ) -> identity_pb2.ServiceAccount:
        me = caller(context)
        org, account_id = service_accounts.parse_name(request.name)
        me.require_org(org, ADMIN, resource=request.name)
        async with self._pool.acquire() as conn:
            return await service_accounts.get(conn, org, account_id, request.name)

    async def ListServiceAccounts(
        self, request: identity_pb2.ListServiceAccountsRequest, context: Context
    ) -> identity_pb2.ListServiceAccountsResponse:
        me = caller(context)
        org = parse_organization(request.parent, "parent")
        me.require_org(org, ADMIN, resource=request.parent)
        page = Page.of("ListServiceAccounts", request)
        async with self._pool.acquire() as conn:
            return await service_accounts.list_accounts(conn, org, page)

    async def DeleteServiceAccount(
        self, request: identity_pb2.DeleteServiceAccountRequest, context: Context
    ) -> empty_pb2.Empty:
        me = caller(context)
        org, account_id = service_accounts.parse_name(request.name)
        me.require_org(org, ADMIN, resource=request.name)
        note_audit(request.name)

        deleted: list[str] = []

        async def change(conn: Conn) -> empty_pb2.Empty:
            deleted.append(await service_accounts.delete(conn, org, account_id, request.name))
            return empty_pb2.Empty()

        async with self._pool.acquire() as conn:
            answer = await run_once(
                conn,
                actor=me.actor,
                method=_SVC + "DeleteServiceAccount",
                request=request,
                request_id=request.request_id,
                response_type=empty_pb2.Empty,
                change=change,
            )
        for user_id in deleted:  # none when run_once answered a retry from its record
            self.auth.forget_user(user_id)
        return answer
