"""Every RPC of the contract, for every kind of caller, is allowed or refused exactly as the policy says.

The real auth interceptor (real JWTs, real sessions and memberships in PostgreSQL) sits in front of
probe servicers that answer every method with an empty response, so the outcome is the
interceptor's decision alone: OK, UNAUTHENTICATED, PERMISSION_DENIED ROLE_INSUFFICIENT, or NOT_FOUND
RESOURCE_NOT_FOUND for an organization the caller is not a member of. The servicers' own scoping is
tested against the real services in test_tenancy.py; the identity RPCs that act on a user, whose
answer depends on the target user's organizations, are tested against the real IdentityService at
the end of this file (USER_MATRIX).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
from emma.identity.v1 import identity_pb2, identity_pb2_grpc
from google.protobuf import field_mask_pb2
from grpc_status import rpc_status

from services import catalog
from services.errors import error_info_of
from services.identity import policy
from services.identity.interceptor import AuthInterceptor
from services.identity.state import AuthState
from services.platform.config import ServerConfig
from services.platform.server import HostedServer, create_server, start_server
from tests.support.cloud import Host
from tests.support.contract_descriptors import methods
from tests.support.identity import Credentials, auth_config, authed_channel, grant, new_session

OK = "OK"
UNAUTHENTICATED = "UNAUTHENTICATED"
DENIED = "ROLE_INSUFFICIENT"
HIDDEN = "RESOURCE_NOT_FOUND"

CALLERS = ["anonymous", "viewer", "operator", "admin", "other_org_admin", "platform_admin"]
RANK = {"viewer": 1, "operator": 2, "admin": 3}


def expected(access: policy.Access, who: str) -> str:
    if access in (policy.PUBLIC, policy.EDGE):
        return OK
    if who == "anonymous":
        return UNAUTHENTICATED
    if access == policy.USER:
        return OK
    if access == policy.PLATFORM_ADMIN:
        return OK if who == "platform_admin" else DENIED
    if who in ("other_org_admin", "platform_admin"):  # not members of organizations/alpha
        return HIDDEN
    return OK if RANK[who] >= int(access) else DENIED


def probe_servicer(spec: catalog.ServiceSpec) -> Any:
    """Answers every method of the service with an empty response."""

    def make(method: Any) -> Any:
        from google.protobuf import message_factory

        response_type = message_factory.GetMessageClass(method.output_type)
        if method.server_streaming:

            async def stream(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
                if method.client_streaming:
                    async for _ in request:
                        break
                yield response_type()

            return stream

        async def unary(self: Any, request: Any, context: Any) -> Any:
            return response_type()

        return unary

    return type("Probe", (), {m.name: make(m) for m in spec.descriptor.methods})()


def request_for(m: Any, info: policy.MethodInfo) -> Any:
    """The method's request with its http path field naming a resource of organizations/alpha."""
    from google.protobuf import message_factory

    request = message_factory.GetMessageClass(m.input_type)()
    if info.resource_field and info.resource_pattern:
        stars = iter(["alpha", *["x"] * 10])
        value = re.sub(r"\*", lambda _: next(stars), info.resource_pattern)
        *path, last = info.resource_field.split(".")
        target = request
        for part in path:
            target = getattr(target, part)
        setattr(target, last, value)
    return request


@pytest.fixture(scope="module")
async def probe_server(migrated_url: str) -> AsyncIterator[tuple[HostedServer, dict[str, Credentials]]]:
    pool = await asyncpg.create_pool(migrated_url, min_size=1, max_size=4)
    assert pool is not None
    async with pool.acquire() as conn:
        creds = {
            "viewer": await grant(conn, "alpha", "viewer"),
            "operator": await grant(conn, "alpha", "operator"),
            "admin": await grant(conn, "alpha", "admin"),
            "other_org_admin": await grant(conn, "beta", "admin"),
            "platform_admin": await grant(conn, "gamma", "viewer", platform_admin=True),
        }
    state = AuthState(pool, auth_config(), migrated_url)
    await state.start()
    cfg = ServerConfig(port=0)
    server = create_server(cfg, [AuthInterceptor(state)])
    specs = catalog.resolve(["all"])
    for spec in specs:
        spec.add_to_server(probe_servicer(spec), server)
    hosted = await start_server(server, cfg, [s.full_name for s in specs])
    try:
        yield hosted, creds
    finally:
        await hosted.drain(0)
        await state.stop()
        await pool.close()


async def _call(port: int, m: Any, request: Any, metadata: list[tuple[str, str]]) -> str:
    name = policy.full_method_name(m)
    ser, des = type(request).SerializeToString, None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            if m.client_streaming and m.server_streaming:
                call = ch.stream_stream(name, request_serializer=ser, response_deserializer=des)(
                    iter([request]), metadata=metadata, timeout=10
                )
                async for _ in call:
                    pass
            elif m.server_streaming:
                stream = ch.unary_stream(name, request_serializer=ser, response_deserializer=des)(
                    request, metadata=metadata, timeout=10
                )
                async for _ in stream:
                    pass
            elif m.client_streaming:
                await ch.stream_unary(name, request_serializer=ser, response_deserializer=des)(
                    iter([request]), metadata=metadata, timeout=10
                )
            else:
                await ch.unary_unary(name, request_serializer=ser, response_deserializer=des)(
                    request, metadata=metadata, timeout=10
                )
        except grpc.aio.AioRpcError as exc:
            status = rpc_status.from_call(exc)  # type: ignore[arg-type]
            info = error_info_of(status) if status else None
            reason = info.reason if info else ""
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                return UNAUTHENTICATED
            if (exc.code(), reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_INSUFFICIENT"):
                return DENIED
            if (exc.code(), reason) == (grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND"):
                return HIDDEN
            return f"{exc.code().name} {reason}: {exc.details()}"
    return OK


def test_every_rpc_of_the_contract_has_exactly_one_policy_entry() -> None:
    contract = {policy.full_method_name(m) for m in methods()}
    missing = sorted(contract - set(policy.POLICY))
    assert not missing, f"add these RPCs to the POLICY of the domain that serves them: {missing}"
    platform = {k for k in policy.POLICY if k.startswith("/grpc.")}
    assert set(policy.POLICY) - platform == contract, "POLICY names RPCs that are not in the contract"
    for name in contract:
        info = policy.method_info(name)
        assert info is not None
        if info.access.is_org_role:
            assert info.resource_pattern and info.resource_pattern.startswith("organizations/"), name


async def test_access_is_exactly_as_the_policy_says_for_every_rpc_and_caller(
    probe_server: tuple[HostedServer, dict[str, Credentials]],
) -> None:
    hosted, creds = probe_server
    mismatches = []
    checked = 0
    outcomes = set()
    for m in methods():
        name = policy.full_method_name(m)
        info = policy.method_info(name)
        assert info is not None, name
        request = request_for(m, info)
        for who in CALLERS:
            metadata = creds[who].metadata if who in creds else []
            got = await _call(hosted.port, m, request, metadata)
            want = expected(info.access, who)
            outcomes.add(want)
            checked += 1
            if got != want:
                mismatches.append(f"{name} as {who}: expected {want}, got {got}")
    assert not mismatches, "\n".join(mismatches)
    assert checked == len(list(methods())) * len(CALLERS)
    assert outcomes == {OK, UNAUTHENTICATED, DENIED, HIDDEN}


async def test_a_method_without_a_policy_entry_is_refused(
    probe_server: tuple[HostedServer, dict[str, Credentials]], monkeypatch: pytest.MonkeyPatch
) -> None:
    hosted, creds = probe_server
    m = next(m for m in methods() if m.name == "GetSite")
    info = policy.method_info(policy.full_method_name(m))
    assert info is not None
    request = request_for(m, info)
    monkeypatch.delitem(policy.POLICY, policy.full_method_name(m))
    policy.method_info.cache_clear()
    try:
        assert await _call(hosted.port, m, request, creds["admin"].metadata) == DENIED
    finally:
        monkeypatch.undo()
        policy.method_info.cache_clear()
    assert await _call(hosted.port, m, request, creds["admin"].metadata) == OK


async def test_bad_tokens_are_refused(probe_server: tuple[HostedServer, dict[str, Credentials]]) -> None:
    hosted, creds = probe_server
    m = next(m for m in methods() if m.name == "GetSite")
    info = policy.method_info(policy.full_method_name(m))
    assert info is not None
    request = request_for(m, info)
    token = creds["admin"].token
    header, payload, signature = token.split(".")
    forged = f"{header}.{payload}.{signature[:-4]}AAAA"
    import jwt as pyjwt

    claims = pyjwt.decode(token, options={"verify_signature": False})
    none_alg = pyjwt.encode(claims, key=None, algorithm="none") if hasattr(pyjwt, "encode") else ""
    other_key = pyjwt.encode(claims, "another-key-of-at-least-32-bytes-000000", algorithm="HS256")
    for bad in (forged, none_alg, other_key, "not-a-jwt", ""):
        got = await _call(hosted.port, m, request, [("authorization", f"Bearer {bad}")])
        assert got == UNAUTHENTICATED, bad
    assert await _call(hosted.port, m, request, [("authorization", token)]) == UNAUTHENTICATED  # no "Bearer"


# ---------------------------------------------------------------------------------------------
# The identity RPCs that act on users/{user}, against the real IdentityService: what each caller may
# do to users of one organization, of two organizations, and to a platform admin. The platform-admin
# flag gives no power over users (only the PLATFORM_ADMIN RPCs: creating and deleting
# organizations); an admin changes a user only as admin of every organization of that user.

USER_OPS = ["get", "rename", "repassword", "disable", "list_sessions", "revoke_session"]
USER_ACTORS = ["self", "alpha_admin", "beta_admin", "both_admin", "platform_admin", "peer"]

# target -> operation -> outcome per actor, in USER_ACTORS order.
_O, _H, _D = OK, HIDDEN, DENIED
USER_MATRIX: dict[str, dict[str, list[str]]] = {
    # a viewer of alpha only
    "single": {
        "get": [_O, _O, _H, _O, _H, _H],
        "rename": [_O, _O, _H, _O, _H, _H],
        "repassword": [_O, _O, _H, _O, _H, _H],
        "disable": [_D, _O, _H, _O, _H, _H],
        "list_sessions": [_O, _O, _H, _O, _H, _H],
        "revoke_session": [_O, _O, _H, _O, _H, _H],
    },
    # a viewer of alpha and an operator of beta: only an admin of both manages them
    "multi": {
        "get": [_O, _O, _O, _O, _H, _H],
        "rename": [_O, _D, _D, _O, _H, _H],
        "repassword": [_O, _D, _D, _O, _H, _H],
        "disable": [_D, _D, _D, _O, _H, _H],
        "list_sessions": [_O, _H, _H, _O, _H, _H],
        "revoke_session": [_O, _H, _H, _O, _H, _H],
    },
    # a platform admin who is a viewer of alpha: their account is theirs alone
    "platform_target": {
        "get": [_O, _O, _H, _O, _H, _H],
        "rename": [_O, _D, _H, _D, _H, _H],
        "repassword": [_O, _D, _H, _D, _H, _H],
        "disable": [_D, _D, _H, _D, _H, _H],
        "list_sessions": [_O, _H, _H, _H, _H, _H],
        "revoke_session": [_O, _H, _H, _H, _H, _H],
    },
}


async def _outcome(call: Any) -> str:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        status = rpc_status.from_call(exc)  # type: ignore[arg-type]
        info = error_info_of(status) if status else None
        reason = info.reason if info else ""
        if (exc.code(), reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_INSUFFICIENT"):
            return DENIED
        if (exc.code(), reason) == (grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND"):
            return HIDDEN
        return f"{exc.code().name} {reason}: {exc.details()}"
    return OK


def test_only_organization_creation_and_deletion_need_the_platform_admin_flag() -> None:
    """The platform admin's powers, stated once: these RPCs and no others."""
    powers = sorted(name for name, access in policy.POLICY.items() if access == policy.PLATFORM_ADMIN)
    assert powers == [
        "/emma.registry.v1.RegistryService/CreateOrganization",
        "/emma.registry.v1.RegistryService/DeleteOrganization",
    ]


async def test_who_may_read_and_change_which_user(host: Host, db: asyncpg.Connection) -> None:
    actors = {
        "alpha_admin": await grant(db, "rb-alpha", "admin"),
        "beta_admin": await grant(db, "rb-beta", "admin"),
        "both_admin": await grant(db, "rb-alpha", "admin"),
        "platform_admin": await grant(db, "rb-gamma", "admin", platform_admin=True),
        "peer": await grant(db, "rb-alpha", "viewer"),
    }
    await db.execute(
        "INSERT INTO identity.memberships (org_id, user_id, role) VALUES ('rb-beta', $1, 3)",
        actors["both_admin"].user_id,
    )
    targets = {
        "single": await grant(db, "rb-alpha", "viewer"),
        "multi": await grant(db, "rb-alpha", "viewer"),
        "platform_target": await grant(db, "rb-alpha", "viewer", platform_admin=True),
    }
    await db.execute(
        "INSERT INTO identity.memberships (org_id, user_id, role) VALUES ('rb-beta', $1, 2)",
        targets["multi"].user_id,
    )

    def operation(stub: Any, op: str, target: Credentials, session: str) -> Any:
        def update(paths: list[str], **fields: Any) -> Any:
            return stub.UpdateUser(
                identity_pb2.UpdateUserRequest(
                    user=identity_pb2.User(name=target.name, **fields),
                    update_mask=field_mask_pb2.FieldMask(paths=paths),
                )
            )

        return {
            "get": lambda: stub.GetUser(identity_pb2.GetUserRequest(name=target.name)),
            "rename": lambda: update(["display_name"], display_name="Renamed"),
            "repassword": lambda: update(["password"], password="a new password of some length"),
            "disable": lambda: update(["disabled"], disabled=False),
            "list_sessions": lambda: stub.ListSessions(identity_pb2.ListSessionsRequest(parent=target.name)),
            "revoke_session": lambda: stub.RevokeSession(
                identity_pb2.RevokeSessionRequest(name=f"{target.name}/sessions/{session}")
            ),
        }[op]()

    mismatches = []
    async with host(["identity"]) as (server, _):
        for target_name, ops in USER_MATRIX.items():
            target = targets[target_name]
            for op in USER_OPS:
                for who, want in zip(USER_ACTORS, ops[op], strict=True):
                    # Fresh sessions: a new password or a revocation ends earlier ones.
                    creds = await new_session(db, (target if who == "self" else actors[who]).user_id)
                    victim_session = (await new_session(db, target.user_id)).session_id
                    async with authed_channel(server.port, creds.token) as ch:
                        stub = identity_pb2_grpc.IdentityServiceStub(ch)
                        got = await _outcome(operation(stub, op, target, victim_session))
                    if got != want:
                        mismatches.append(f"{op} of {target_name} by {who}: expected {want}, got {got}")
        assert not mismatches, "\n".join(mismatches)

        # What each admin sees of the two-organization user: memberships of organizations they
        # administer only; a platform admin's own view of themselves is complete.
        async def seen(who: str, target: Credentials) -> list[str]:
            async with authed_channel(server.port, (await new_session(db, actors[who].user_id)).token) as ch:
                user = await identity_pb2_grpc.IdentityServiceStub(ch).GetUser(
                    identity_pb2.GetUserRequest(name=target.name)
                )
            return [m.name.split("/")[1] for m in user.memberships]

        assert await seen("alpha_admin", targets["multi"]) == ["rb-alpha"]
        assert await seen("beta_admin", targets["multi"]) == ["rb-beta"]
        assert await seen("both_admin", targets["multi"]) == ["rb-alpha", "rb-beta"]
        platform_self = await new_session(db, actors["platform_admin"].user_id)
        async with authed_channel(server.port, platform_self.token) as ch:
            me = await identity_pb2_grpc.IdentityServiceStub(ch).GetUser(identity_pb2.GetUserRequest(name="users/me"))
        assert [m.name.split("/")[1] for m in me.memberships] == ["rb-gamma"]

        # The platform admin cannot list, create or add users of an organization it is not in.
        async with authed_channel(server.port, platform_self.token) as ch:
            stub = identity_pb2_grpc.IdentityServiceStub(ch)
            for call in (
                stub.ListUsers(identity_pb2.ListUsersRequest(parent="organizations/rb-alpha")),
                stub.CreateUser(
                    identity_pb2.CreateUserRequest(
                        parent="organizations/rb-alpha",
                        user=identity_pb2.User(email="spy@rb.test", password="long enough password"),
                        role=identity_pb2.ROLE_ADMIN,
                    )
                ),
                stub.SetMembership(
                    identity_pb2.SetMembershipRequest(
                        parent="organizations/rb-alpha", user=platform_self.name, role=identity_pb2.ROLE_ADMIN
                    )
                ),
            ):
                assert await _outcome(call) == HIDDEN

        # What an admin may do to a user they share with another organization: remove them from
        # their own (not from the other).
        membership = f"organizations/rb-alpha/memberships/{targets['multi'].user_id}"
        for who, want in (("beta_admin", HIDDEN), ("platform_admin", HIDDEN), ("alpha_admin", OK)):
            async with authed_channel(server.port, (await new_session(db, actors[who].user_id)).token) as ch:
                removal = identity_pb2_grpc.IdentityServiceStub(ch).DeleteMembership(
                    identity_pb2.DeleteMembershipRequest(name=membership)
                )
                assert await _outcome(removal) == want, who
        rows = await db.fetch("SELECT org_id FROM identity.memberships WHERE user_id = $1", targets["multi"].user_id)
        assert [r["org_id"] for r in rows] == ["rb-beta"]
