"""A cached session answers its calls with one Caller (services/identity/state.py Principal.caller),
and a change of the user or the session is seen by the next call as before."""

from __future__ import annotations

import asyncpg
import pytest

from services.errors import ApiError
from services.identity import accounts
from services.identity.context import ADMIN, VIEWER
from services.identity.state import AuthState
from tests.support.identity import auth_config, grant


async def test_one_caller_per_read_of_a_session_and_changes_seen_by_the_next_call(migrated_url: str) -> None:
    pool = await asyncpg.create_pool(migrated_url, min_size=1, max_size=2)
    state = AuthState(pool, auth_config(), migrated_url)
    try:
        await state.start()
        assert state.listening  # the cache is only trusted while revocations can reach it
        async with pool.acquire() as conn:
            me = await grant(conn, "cached-caller", "viewer")
        first = await state.authenticate_bearer(f"Bearer {me.token}")
        second = await state.authenticate_bearer(f"Bearer {me.token}")
        assert first is second  # the cached session's Caller, not a new one per call
        assert (first.kind, first.user_id, first.email, first.session_id) == (
            "user",
            me.user_id,
            me.email,
            me.session_id,
        )
        assert dict(first.roles) == {"cached-caller": VIEWER} and not first.platform_admin

        # The role changes: the replica that changes it forgets the user at once (as its NOTIFY does on
        # every replica), and the next call reads the session again, with a Caller of its own.
        async with pool.acquire() as conn:
            await accounts.set_membership(conn, "cached-caller", me.user_id, ADMIN)
        state.forget_user(me.user_id)
        promoted = await state.authenticate_bearer(f"Bearer {me.token}")
        assert promoted is not first
        assert dict(promoted.roles) == {"cached-caller": ADMIN}
        assert dict(first.roles) == {"cached-caller": VIEWER}  # an earlier call's Caller is left as it was

        # A revoked session is refused, not answered from the Caller made before.
        async with pool.acquire() as conn:
            await conn.execute("UPDATE identity.sessions SET revoke_time = now() WHERE session_id = $1", me.session_id)
        state.forget_session(me.session_id)
        with pytest.raises(ApiError) as refused:
            await state.authenticate_bearer(f"Bearer {me.token}")
        assert refused.value.code.name == "UNAUTHENTICATED"
    finally:
        await state.stop()
        await pool.close()
