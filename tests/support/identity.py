"""Credentials for tests: users with a role in an organization, their access tokens, and channels
that send "authorization: Bearer <token>" on every call.

    creds = await grant(db, "acme", "operator")            # a new user, session and access token
    async with authed_channel(port, creds.token) as ch:    # every call carries the token
        ...
    await stub.GetSite(request, metadata=creds.metadata)   # or per call

The user, membership and session rows are real, and the token is signed with the deployment's key
(EMMA_JWT_SIGNING_KEY, set for the test session in tests/conftest.py), so the real interceptor
authenticates them exactly as a token from IdentityService.Login.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from services.identity import accounts
from services.identity.config import AuthConfig
from services.identity.passwords import Passwords
from services.identity.tokens import new_refresh_token, sign_access_token
from services.platform.migrations import Conn

ROLE = {"viewer": 1, "operator": 2, "admin": 3}
PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class Credentials:
    user_id: str
    email: str
    session_id: str
    token: str
    refresh_token: str

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")]

    @property
    def name(self) -> str:
        return f"users/{self.user_id}"


def auth_config() -> AuthConfig:
    return AuthConfig.from_env(Path(os.environ.get("EMMA_STATE_DIR", ".emma")).absolute())


_passwords: Passwords | None = None


def passwords() -> Passwords:
    global _passwords
    if _passwords is None:
        c = auth_config()
        _passwords = Passwords(c.argon2_time_cost, c.argon2_memory_kib, c.argon2_parallelism)
    return _passwords


async def grant(
    conn: Conn,
    org: str = "acme",
    role: str | None = "admin",
    *,
    email: str | None = None,
    platform_admin: bool = False,
    password: str = PASSWORD,
) -> Credentials:
    """A user with `role` in `org` (created if missing; role None: no membership) and a live session."""
    await accounts.create_org(conn, org, org)
    email = email or f"{role or 'nobody'}-{uuid.uuid4().hex[:8]}@{org}.test"
    user_id = await accounts.insert_user(
        conn, email=email, password_hash=passwords().hash_sync(password), platform_admin=platform_admin
    )
    if role is not None:
        await accounts.set_membership(conn, org, user_id, ROLE[role])
    return await new_session(conn, user_id, email)


async def new_session(conn: Conn, user_id: str, email: str = "") -> Credentials:
    session_id = uuid.uuid4().hex
    refresh, digest = new_refresh_token(session_id)
    expire = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    await conn.execute(
        """INSERT INTO identity.sessions (session_id, user_id, refresh_sha256, expire_time)
           VALUES ($1, $2, $3, $4)""",
        session_id,
        user_id,
        digest,
        expire,
    )
    token = sign_access_token(
        auth_config().jwt_signing_key, user_id, session_id, dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    )
    return Credentials(user_id, email, session_id, token, refresh)


class _Bearer:
    def __init__(self, token: str) -> None:
        self._token = token

    def _details(self, details: Any) -> Any:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), ("authorization", f"Bearer {self._token}"))
        return details._replace(metadata=metadata)


# grpc.aio files each interceptor under the first call kind it implements only: one class per kind.
class _BearerUU(_Bearer, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _BearerUS(_Bearer, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _BearerSU(_Bearer, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


class _BearerSS(_Bearer, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def authed_channel(port: int | str, token: str) -> grpc.aio.Channel:
    """An insecure loopback channel that sends the bearer token on every call."""
    target = port if isinstance(port, str) else f"127.0.0.1:{port}"
    interceptors = [_BearerUU(token), _BearerUS(token), _BearerSU(token), _BearerSS(token)]
    return grpc.aio.insecure_channel(target, interceptors=interceptors)


@contextlib.asynccontextmanager
async def notifications_held(db: asyncpg.Connection) -> AsyncIterator[None]:
    """The one replica's LISTEN backend stopped (SIGSTOP; the embedded PostgreSQL runs on this machine), so
    no emma_auth NOTIFY reaches its cache meanwhile: what the replica does for its own next call shows."""
    pids = [
        r["pid"]
        for r in await db.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%emma_auth%'"
        )
    ]
    assert len(pids) == 1, f"expected the one replica's LISTEN backend, found {pids}"
    os.kill(pids[0], signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pids[0], signal.SIGCONT)
