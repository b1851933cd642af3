"""Login, refresh, logout and revocation against the real services, two replicas on one database."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import grpc
import jwt
import pytest
from emma.identity.v1 import identity_pb2, identity_pb2_grpc
from emma.registry.v1 import registry_pb2, registry_pb2_grpc
from google.protobuf import field_mask_pb2
from grpc_status import rpc_status

from services.errors import error_info_of
from tests.support.cloud import Host
from tests.support.identity import PASSWORD, authed_channel, grant


async def _error(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str, str, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    info = error_info_of(status)
    assert info is not None
    return caught.value.code(), info.reason, caught.value.details() or "", dict(info.metadata)


def _bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


async def _until(check: Callable[[], Awaitable[bool]], timeout: float) -> float:
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def test_login_refresh_rotation_replay_and_logout(host: Host, db: asyncpg.Connection) -> None:
    user = await grant(db, "acme", "viewer", email="ada@acme.test")
    async with (
        host(["identity", "registry"]) as (server, _),
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch,
    ):
        identity = identity_pb2_grpc.IdentityServiceStub(ch)
        registry = registry_pb2_grpc.RegistryServiceStub(ch)
        login = await identity.Login(identity_pb2.LoginRequest(email="ADA@acme.test ", password=PASSWORD))
        assert login.user.name == user.name and login.user.email == "ada@acme.test"
        assert [(m.name, m.role) for m in login.user.memberships] == [
            (f"organizations/acme/memberships/{user.user_id}", identity_pb2.ROLE_VIEWER)
        ]
        claims = jwt.decode(login.access_token, options={"verify_signature": False})
        assert claims["sub"] == user.user_id and claims["aud"] == "emma-api"
        lifetime = login.access_token_expire_time.seconds - claims["iat"]
        assert 890 <= lifetime <= 900  # 15 minutes
        assert login.refresh_token_expire_time.seconds - claims["iat"] >= 7 * 86400 - 10
        me = await identity.GetUser(identity_pb2.GetUserRequest(name="users/me"), metadata=_bearer(login.access_token))
        assert me.email == "ada@acme.test" and not me.password

        # Refresh rotates: the new pair works, the old refresh token is dead, and using it again
        # (a stolen copy) revokes the whole session.
        first = await identity.RefreshToken(identity_pb2.RefreshTokenRequest(refresh_token=login.refresh_token))
        assert first.refresh_token != login.refresh_token
        await registry.ListOrganizations(registry_pb2.ListOrganizationsRequest(), metadata=_bearer(first.access_token))
        code, reason, _, _ = await _error(
            identity.RefreshToken(identity_pb2.RefreshTokenRequest(refresh_token=login.refresh_token))
        )
        assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "SESSION_REVOKED")
        for refresh in (first.refresh_token,):
            assert (await _error(identity.RefreshToken(identity_pb2.RefreshTokenRequest(refresh_token=refresh))))[
                1
            ] == "SESSION_REVOKED"
        code, reason, _, _ = await _error(
            registry.ListOrganizations(registry_pb2.ListOrganizationsRequest(), metadata=_bearer(first.access_token))
        )
        assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "SESSION_REVOKED")
        for bad in ("emma_rt_nosuchsession_" + "x" * 43, "garbage", ""):
            assert (await _error(identity.RefreshToken(identity_pb2.RefreshTokenRequest(refresh_token=bad))))[1] == (
                "TOKEN_INVALID"
            )

        # Logout ends the caller's session only.
        a = await identity.Login(identity_pb2.LoginRequest(email="ada@acme.test", password=PASSWORD))
        b = await identity.Login(identity_pb2.LoginRequest(email="ada@acme.test", password=PASSWORD))
        await identity.Logout(identity_pb2.LogoutRequest(), metadata=_bearer(a.access_token))
        assert (
            await _error(
                identity.GetUser(identity_pb2.GetUserRequest(name="users/me"), metadata=_bearer(a.access_token))
            )
        )[1] == "SESSION_REVOKED"
        await identity.GetUser(identity_pb2.GetUserRequest(name="users/me"), metadata=_bearer(b.access_token))
        sessions = await identity.ListSessions(
            identity_pb2.ListSessionsRequest(parent="users/me"), metadata=_bearer(b.access_token)
        )
        by_name = {s.name: s for s in sessions.sessions}
        assert by_name[a.session.name].HasField("revoke_time")
        assert not by_name[b.session.name].HasField("revoke_time")
        assert by_name[b.session.name].client_address == "127.0.0.1"
        # No credentials at all, and a token of no session.
        assert (await _error(identity.GetUser(identity_pb2.GetUserRequest(name="users/me"))))[
            1
        ] == "CREDENTIALS_MISSING"


async def test_revocation_reaches_another_replica_within_a_second(host: Host, db: asyncpg.Connection) -> None:
    admin = await grant(db, "acme", "admin")
    ops = await grant(db, "acme", "operator", email="ops@acme.test")
    async with (
        host(["identity", "registry"]) as (a, _),
        host(["identity", "registry"]) as (b, _),
        authed_channel(a.port, admin.token) as admin_a,
        grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as plain_a,
        grpc.aio.insecure_channel(f"127.0.0.1:{b.port}") as plain_b,
    ):
        identity_a = identity_pb2_grpc.IdentityServiceStub(plain_a)
        registry_b = registry_pb2_grpc.RegistryServiceStub(plain_b)

        async def works_on_b(token: str) -> bool:
            try:
                await registry_b.GetOrganization(
                    registry_pb2.GetOrganizationRequest(name="organizations/acme"), metadata=_bearer(token)
                )
                return True
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                    raise
                return False

        async def revoked_on_b(token: str) -> bool:
            return not await works_on_b(token)

        # 1. A session revoked on replica A stops working on replica B (where it is cached).
        login = await identity_a.Login(identity_pb2.LoginRequest(email="ops@acme.test", password=PASSWORD))
        assert await works_on_b(login.access_token)
        assert await works_on_b(login.access_token)  # now served from B's cache
        await identity_pb2_grpc.IdentityServiceStub(admin_a).RevokeSession(
            identity_pb2.RevokeSessionRequest(name=login.session.name)
        )
        took = await _until(lambda: revoked_on_b(login.access_token), 1.0)
        assert took < 1.0

        # 2. Logout on A.
        login = await identity_a.Login(identity_pb2.LoginRequest(email="ops@acme.test", password=PASSWORD))
        assert await works_on_b(login.access_token)
        await identity_a.Logout(identity_pb2.LogoutRequest(), metadata=_bearer(login.access_token))
        assert await _until(lambda: revoked_on_b(login.access_token), 1.0) < 1.0

        # 3. Disabling the user revokes all their sessions everywhere, and they cannot log in again.
        s1 = await identity_a.Login(identity_pb2.LoginRequest(email="ops@acme.test", password=PASSWORD))
        s2 = await identity_a.Login(identity_pb2.LoginRequest(email="ops@acme.test", password=PASSWORD))
        assert await works_on_b(s1.access_token) and await works_on_b(s2.access_token)
        await identity_pb2_grpc.IdentityServiceStub(admin_a).UpdateUser(
            identity_pb2.UpdateUserRequest(
                user=identity_pb2.User(name=ops.name, disabled=True),
                update_mask=field_mask_pb2.FieldMask(paths=["disabled"]),
            )
        )
        assert await _until(lambda: revoked_on_b(s1.access_token), 1.0) < 1.0
        assert await _until(lambda: revoked_on_b(s2.access_token), 1.0) < 1.0
        code, reason, _, _ = await _error(
            identity_a.Login(identity_pb2.LoginRequest(email="ops@acme.test", password=PASSWORD))
        )
        assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "LOGIN_FAILED")

        # 4. A role change made by plain SQL (as `emma admin` or an operator would) applies at once too.
        viewer = await grant(db, "acme", "viewer")
        registry_a = registry_pb2_grpc.RegistryServiceStub(plain_a)
        site = registry_pb2.Site(
            display_name="x", location={"latitude_deg": 1, "longitude_deg": 1}, time_zone="UTC", country_code="ES"
        )

        async def can_create_on_b(site_id: str) -> bool:
            try:
                await registry_pb2_grpc.RegistryServiceStub(plain_b).CreateSite(
                    registry_pb2.CreateSiteRequest(parent="organizations/acme", site_id=site_id, site=site),
                    metadata=_bearer(viewer.token),
                )
                return True
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.PERMISSION_DENIED:
                    raise
                return False

        assert not await can_create_on_b("s1")
        await db.execute("UPDATE identity.memberships SET role = 3 WHERE user_id = $1", viewer.user_id)
        assert await _until(lambda: can_create_on_b("s2"), 1.0) < 1.0
        del registry_a


async def test_failed_logins_are_limited_per_user_and_address_and_never_tell_who_exists(
    host: Host, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    await db.execute("DELETE FROM identity.login_failures")
    await grant(db, "acme", "viewer", email="grace@acme.test")
    monkeypatch.setenv("EMMA_LOGIN_MAX_FAILURES_PER_ADDRESS", "12")
    async with host(["identity"]) as (server, _), grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        identity = identity_pb2_grpc.IdentityServiceStub(ch)

        async def attempt(email: str, password: str) -> tuple[tuple[grpc.StatusCode, str, str, dict[str, str]], float]:
            t0 = time.perf_counter()
            result = await _error(identity.Login(identity_pb2.LoginRequest(email=email, password=password)))
            return result, time.perf_counter() - t0

        known, unknown = [], []
        for i in range(5):
            (k, tk), (u, tu) = await attempt("grace@acme.test", f"wrong-{i}"), await attempt("ghost@acme.test", f"x{i}")
            # Same code, reason, message and metadata whether or not the user exists.
            assert k == u == (grpc.StatusCode.UNAUTHENTICATED, "LOGIN_FAILED", k[2], {})
            known.append(tk)
            unknown.append(tu)
        # Both paths run one argon2 verification (unknown users against a dummy hash).
        assert statistics.median(unknown) > 0.5 * statistics.median(known)

        # The sixth attempt is refused before the password is checked, even the right one, for both.
        for email, password in (("grace@acme.test", PASSWORD), ("ghost@acme.test", "whatever")):
            (code, reason, _, metadata), _ = await attempt(email, password)
            assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "LOGIN_RATE_LIMITED")
            assert 0 < int(metadata["retry_after_ms"]) <= 900_000

        # Per address: 10 failures so far from 127.0.0.1; two more on fresh names exhaust the 12.
        for name in ("a", "b"):
            (_, reason, _, _), _ = await attempt(f"{name}@acme.test", "nope")
            assert reason == "LOGIN_FAILED"
        (code, reason, _, _), _ = await attempt("c@acme.test", "nope")
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "LOGIN_RATE_LIMITED")
        # The limit lives in PostgreSQL: another replica applies it too.
        async with host(["identity"]) as (other, _), grpc.aio.insecure_channel(f"127.0.0.1:{other.port}") as ch2:
            code2, reason2, _, _ = await _error(
                identity_pb2_grpc.IdentityServiceStub(ch2).Login(
                    identity_pb2.LoginRequest(email="d@acme.test", password="nope")
                )
            )
            assert (code2, reason2) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "LOGIN_RATE_LIMITED")
        # Once the window has passed (here: the rows are aged), grace can log in again.
        await db.execute("UPDATE identity.login_failures SET failure_time = failure_time - interval '1 hour'")
        ok = await identity.Login(identity_pb2.LoginRequest(email="grace@acme.test", password=PASSWORD))
        assert ok.access_token


async def test_open_streams_end_when_the_session_is_revoked_or_access_is_lost(
    host: Host, db: asyncpg.Connection
) -> None:
    from emma.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc

    from tests.support.cloud import new_edge

    edge, _, _ = await new_edge(db, "streamed")
    first = await grant(db, "acme", "viewer")
    second = await grant(db, "acme", "viewer")
    async with host(["telemetry"], live_poll_interval_s=0.1) as (server, _):
        streams = []
        for creds in (first, second):
            ch = authed_channel(server.port, creds.token)
            live = telemetry_pb2_grpc.TelemetryServiceStub(ch).StreamLiveValues(
                telemetry_pb2.StreamLiveValuesRequest(site=str(edge.site_name))
            )
            await asyncio.wait_for(live.read(), 5)
            streams.append((ch, live))
        # A change of the user that keeps access (a promotion) does not disturb the stream.
        await db.execute("UPDATE identity.memberships SET role = 2 WHERE user_id = $1", first.user_id)
        await asyncio.sleep(0.3)
        assert not streams[0][1].done()

        async def ended(live: Any) -> tuple[grpc.StatusCode, str]:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                while True:
                    await asyncio.wait_for(live.read(), 1.0)
            status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
            info = error_info_of(status) if status else None
            return caught.value.code(), info.reason if info else ""

        await db.execute("UPDATE identity.sessions SET revoke_time = now() WHERE session_id = $1", first.session_id)
        assert await ended(streams[0][1]) == (grpc.StatusCode.UNAUTHENTICATED, "SESSION_REVOKED")
        await db.execute("DELETE FROM identity.memberships WHERE user_id = $1", second.user_id)
        assert await ended(streams[1][1]) == (grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")
        for ch, _ in streams:
            await ch.close()


async def test_an_attacker_cannot_lock_the_owner_out_of_their_account(
    host: Host, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Failures count per account and address; the account's overall budget binds only addresses
    it has not logged in from, so wrong passwords from elsewhere never lock the owner (here an
    admin) out of their usual address."""
    await db.execute("DELETE FROM identity.login_failures")
    await grant(db, "acme", "admin", email="owner@acme.test")
    monkeypatch.setenv("EMMA_TRUST_FORWARDED_FOR", "true")
    monkeypatch.setenv("EMMA_LOGIN_MAX_FAILURES_PER_ACCOUNT", "8")
    home, attacker = "198.51.100.7", "203.0.113.66"
    async with host(["identity"]) as (server, _), grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        identity = identity_pb2_grpc.IdentityServiceStub(ch)

        def login(password: str, address: str) -> Any:
            return identity.Login(
                identity_pb2.LoginRequest(email="owner@acme.test", password=password),
                metadata=[("x-forwarded-for", address)],
            )

        first = await login(PASSWORD, home)  # the owner's usual address
        assert first.session.client_address == home

        for i in range(5):
            code, reason, _, _ = await _error(login(f"guess-{i}", attacker))
            assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "LOGIN_FAILED")
        # The attacker's address is refused for this account, even with the right password ...
        code, reason, _, _ = await _error(login(PASSWORD, attacker))
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "LOGIN_RATE_LIMITED")
        # ... while the owner logs in from home as usual.
        assert (await login(PASSWORD, home)).access_token

        # Spread over more addresses, the guesses spend the account's overall budget (8): past it,
        # every address the account has not logged in from is refused, so a distributed guesser is
        # held to that budget per window ...
        for i in range(3):
            code, reason, _, _ = await _error(login("another-guess", f"203.0.113.{i + 1}"))
            assert reason == "LOGIN_FAILED"
        code, reason, _, metadata = await _error(login(PASSWORD, "203.0.113.99"))
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "LOGIN_RATE_LIMITED")
        assert 0 < int(metadata["retry_after_ms"]) <= 900_000
        # ... and the owner still gets in from home, and still may mistype there.
        code, reason, _, _ = await _error(login("typo", home))
        assert reason == "LOGIN_FAILED"
        assert (await login(PASSWORD, home)).access_token


async def test_a_huge_login_name_is_counted_under_a_key_of_bounded_size(host: Host, db: asyncpg.Connection) -> None:
    await db.execute("DELETE FROM identity.login_failures")
    huge = "x" * 200_000 + "@acme.test"
    async with host(["identity"]) as (server, _), grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        code, reason, _, _ = await _error(
            identity_pb2_grpc.IdentityServiceStub(ch).Login(identity_pb2.LoginRequest(email=huge, password="nope"))
        )
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "LOGIN_FAILED")
    lengths = [r["n"] for r in await db.fetch("SELECT length(key) AS n FROM identity.login_failures")]
    assert len(lengths) == 3 and max(lengths) < 500, lengths
