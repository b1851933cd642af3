"""Every RPC of the contract, for every kind of caller, is allowed or refused exactly as the policy says.

The real auth interceptor (real JWTs, real sessions and memberships in PostgreSQL) sits in front of
probe servicers that answer every method with an empty response, so the outcome is the
interceptor's decision alone: OK, UNAUTHENTICATED, PERMISSION_DENIED ROLE_INSUFFICIENT, or NOT_FOUND
RESOURCE_NOT_FOUND for an organization the caller is not a member of. The servicers' own scoping is
tested against the real services in test_tenancy.py.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_status import rpc_status

from services import catalog
from services.errors import error_info_of
from services.identity import policy
from services.identity.interceptor import AuthInterceptor
from services.identity.state import AuthState
from services.platform.config import ServerConfig
from services.platform.server import HostedServer, create_server, start_server
from tests.support.contract_descriptors import methods
from tests.support.identity import Credentials, auth_config, grant

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
