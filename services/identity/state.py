"""Per-replica authentication state: who a session belongs to, cached, and revocation by NOTIFY.

Every replica LISTENs on the channel emma_auth. Triggers (migration 0005) NOTIFY on commit when a
session is revoked, a user is disabled or changes role, or an edge key is revoked or deleted, so a
revocation made on any replica, by `emma admin` or by plain SQL reaches every replica within
milliseconds. The cache is only trusted while the LISTEN connection is up; while it is down every
call reads the database. Entries also expire after EMMA_AUTH_CACHE_TTL_S, and the keys of open edge
streams are re-checked at the same period, as a safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
from emma.common.v1 import errors_pb2

from core.tasks import stop_task
from services.errors import ApiError
from services.identity.config import AuthConfig
from services.identity.context import Caller
from services.identity.passwords import Passwords
from services.identity.tokens import verify_access_token
from services.platform.db import log_failed_pass

log = logging.getLogger("emma.auth")

CHANNEL = "emma_auth"
MAX_CACHED_SESSIONS = 50_000
LIVENESS_PERIOD_S = 5.0


@dataclass
class Principal:
    """A session and its user as last read from the database."""

    session_id: str
    user_id: str
    email: str
    disabled: bool
    platform_admin: bool
    roles: dict[str, int]
    expire_time: dt.datetime
    revoked: bool
    loaded_at: float = field(default_factory=time.monotonic)

    @functools.cached_property
    def caller(self) -> Caller:
        """The Caller of this session's calls, made once per read of the session: a cached session
        answers every call (forty a round in the market benchmark) with the same frozen Caller
        instead of a new one and a copy of the roles each."""
        return Caller(
            kind="user",
            user_id=self.user_id,
            email=self.email,
            session_id=self.session_id,
            platform_admin=self.platform_admin,
            roles=dict(self.roles),
        )


def session_revoked(message: str = "the session was revoked; log in again") -> ApiError:
    return ApiError(grpc.StatusCode.UNAUTHENTICATED, errors_pb2.ERROR_REASON_SESSION_REVOKED, message)


_PRINCIPAL = """
SELECT s.session_id, s.user_id, s.expire_time, s.revoke_time IS NOT NULL AS revoked,
       u.email, u.disabled, u.platform_admin,
       array(SELECT m.org_id FROM identity.memberships m WHERE m.user_id = s.user_id ORDER BY m.org_id) AS orgs,
       array(SELECT m.role FROM identity.memberships m WHERE m.user_id = s.user_id ORDER BY m.org_id) AS roles
FROM identity.sessions s JOIN identity.users u ON u.user_id = s.user_id
WHERE s.session_id = $1
"""


class AuthState:
    def __init__(self, pool: asyncpg.Pool, config: AuthConfig, dsn: str = "") -> None:
        self.pool = pool
        self.dsn = dsn
        self.config = config
        self.passwords = Passwords(config.argon2_time_cost, config.argon2_memory_kib, config.argon2_parallelism)
        self._sessions: OrderedDict[str, Principal] = OrderedDict()
        self._edge_streams: dict[str, set[asyncio.Event]] = {}
        self._user_streams: dict[asyncio.Event, tuple[str, str]] = {}
        self._generation = 0
        self._listening = False
        self._task: asyncio.Task[None] | None = None
        self._listening_event = asyncio.Event()
        self.notifications = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._listen_loop(), name="auth-listener")
            # Serve only once revocations can reach us (or after a short wait: then the cache is off).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._listening_event.wait()

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
        self._listening = False

    @property
    def listening(self) -> bool:
        return self._listening

    async def _listen_loop(self) -> None:
        backoff = 0.2
        while True:
            try:
                async with self._connection() as conn:
                    lost = asyncio.Event()
                    conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                    await conn.add_listener(CHANNEL, self._on_notify)
                    self._invalidate_all()
                    self._listening = True
                    self._listening_event.set()
                    backoff = 0.2
                    await self._recheck_edge_streams(conn)
                    try:
                        last_sweep = time.monotonic()
                        while not lost.is_set():
                            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns when what it
                            # awaits finished just as stop() cancelled this task and drops the cancellation;
                            # the task then reconnected and stop() waited for it forever.
                            with contextlib.suppress(TimeoutError):
                                async with asyncio.timeout(LIVENESS_PERIOD_S):
                                    await lost.wait()
                            if lost.is_set():
                                break
                            async with asyncio.timeout(LIVENESS_PERIOD_S):
                                await conn.fetchval("SELECT 1")
                            if time.monotonic() - last_sweep >= max(self.config.auth_cache_ttl_s, 1.0):
                                await self._recheck_edge_streams(conn)
                                self._poke_streams(lambda _sid, _uid: True)
                                last_sweep = time.monotonic()
                    finally:
                        self._listening = False
                        self._invalidate_all()
                        with contextlib.suppress(Exception):
                            await conn.remove_listener(CHANNEL, self._on_notify)
            except asyncio.CancelledError:
                raise
            except Exception:
                log_failed_pass(log, "auth listener lost its connection; reading sessions from the database")
            self._listening = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """A connection of its own when the DSN is known, else one held from the pool."""
        if not self.dsn:
            async with self.pool.acquire() as conn:
                yield conn
            return
        own = await asyncpg.connect(self.dsn, timeout=10)
        try:
            yield own
        finally:
            with contextlib.suppress(Exception):
                await own.close(timeout=2)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.notifications += 1
        try:
            message = json.loads(payload)
            kind, ident = str(message["t"]), str(message["id"])
        except (ValueError, KeyError, TypeError):
            log.warning("malformed auth notification %r", payload)
            self._invalidate_all()
            return
        if kind == "session":
            self.forget_session(ident)
            return
        if kind == "user":
            self.forget_user(ident)
        elif kind == "edge_key":
            self.revoke_edge_key(ident)
        else:
            self._invalidate_all()

    def forget_session(self, session_id: str) -> None:
        """Drop a session that ended: its next call reads it again, its open streams re-check. Called
        for every replica by the session's NOTIFY, and at once by the replica that ended it, so the
        caller's own next call cannot beat that replica's NOTIFY to its cache."""
        self._generation += 1
        self._sessions.pop(session_id, None)
        self._poke_streams(lambda sid, _uid: sid == session_id)

    def forget_user(self, user_id: str) -> None:
        """Drop a changed user's sessions (disabled, deleted, roles or password changed): their next calls
        read them again, their open streams re-check. Like forget_session: run by the user's NOTIFY on
        every replica, and at once by the replica that made the change."""
        self._generation += 1
        for sid in [s for s, p in self._sessions.items() if p.user_id == user_id]:
            self._sessions.pop(sid, None)
        self._poke_streams(lambda _sid, uid: uid == user_id)

    def _invalidate_all(self) -> None:
        self._generation += 1
        self._sessions.clear()
        self._poke_streams(lambda _sid, _uid: True)

    # ------------------------------------------------------------------ users' open streams

    def watch_session(self, session_id: str, user_id: str, event: asyncio.Event) -> None:
        """Set `event` whenever the session or its user may have changed: the stream re-checks."""
        self._user_streams[event] = (session_id, user_id)

    def unwatch_session(self, event: asyncio.Event) -> None:
        self._user_streams.pop(event, None)

    def _poke_streams(self, match: Callable[[str, str], bool]) -> None:
        for event, (sid, uid) in list(self._user_streams.items()):
            if match(sid, uid):
                event.set()

    # ------------------------------------------------------------------ users

    async def _load(self, session_id: str) -> Principal | None:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(_PRINCIPAL, session_id)
        if row is None:
            return None
        return Principal(
            session_id=row["session_id"],
            user_id=row["user_id"],
            email=row["email"],
            disabled=row["disabled"],
            platform_admin=row["platform_admin"],
            roles=dict(zip(row["orgs"], (int(r) for r in row["roles"]), strict=True)),
            expire_time=row["expire_time"],
            revoked=row["revoked"],
        )

    async def principal(self, session_id: str) -> Principal | None:
        cached = self._sessions.get(session_id)
        if cached is not None and self._listening:
            if time.monotonic() - cached.loaded_at < self.config.auth_cache_ttl_s:
                self._sessions.move_to_end(session_id)
                return cached
            self._sessions.pop(session_id, None)
        generation = self._generation
        loaded = await self._load(session_id)
        # Cache only what no notification may have overtaken while we read it.
        if loaded is not None and self._listening and generation == self._generation:
            self._sessions[session_id] = loaded
            while len(self._sessions) > MAX_CACHED_SESSIONS:
                self._sessions.popitem(last=False)
        return loaded

    async def authenticate_bearer(self, authorization: str | None) -> Caller:
        """The user behind an "authorization: Bearer <jwt>" value; UNAUTHENTICATED otherwise."""
        from services.identity.context import credentials_missing
        from services.identity.tokens import token_invalid

        if not authorization:
            raise credentials_missing()
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise token_invalid('the authorization metadata must be "Bearer <access token>"')
        keys = (self.config.jwt_signing_key, *self.config.jwt_verify_keys)
        claims = verify_access_token(keys, token.strip())
        p = await self.principal(claims.session_id)
        if p is None or p.user_id != claims.user_id:
            raise session_revoked("the session of this token does not exist; log in again")
        if p.revoked or p.disabled:
            raise session_revoked()
        if p.expire_time <= dt.datetime.now(dt.UTC):
            raise session_revoked("the session has ended; log in again")
        return p.caller

    # ------------------------------------------------------------------ edge streams

    def watch_edge_key(self, key_id: str, event: asyncio.Event) -> None:
        """Set `event` when the key is revoked or deleted (on any replica)."""
        self._edge_streams.setdefault(key_id, set()).add(event)

    def unwatch_edge_key(self, key_id: str, event: asyncio.Event) -> None:
        events = self._edge_streams.get(key_id)
        if events is not None:
            events.discard(event)
            if not events:
                del self._edge_streams[key_id]

    def revoke_edge_key(self, key_id: str) -> None:
        """Tell the streams of a revoked or deleted key to re-check (they end): by the key's NOTIFY on
        every replica, and at once by the replica that revoked it."""
        for event in self._edge_streams.get(key_id, ()):
            event.set()

    async def _recheck_edge_streams(self, conn: Any) -> None:
        """Close streams whose key was revoked while a notification could have been missed."""
        keys = list(self._edge_streams)
        if not keys:
            return
        valid = {
            r["key_id"]
            for r in await conn.fetch(
                "SELECT key_id FROM identity.edge_api_keys WHERE key_id = ANY($1::text[]) AND revoke_time IS NULL",
                keys,
            )
        }
        for key_id in keys:
            if key_id not in valid:
                self.revoke_edge_key(key_id)


def auth_state_for(runtime: Any) -> AuthState:
    """The one AuthState of a Runtime (shared by the interceptor and the identity servicers)."""
    state = getattr(runtime, "_emma_auth_state", None)
    if state is None:
        config = AuthConfig.from_env(runtime.config.state.state_dir, runtime.config.env or os.environ)
        state = AuthState(runtime.pool, config, getattr(runtime, "dsn", "") or "")
        runtime._emma_auth_state = state
    assert isinstance(state, AuthState)
    return state
