"""Failed-login limits, counted in PostgreSQL.

One row per failure and key in identity.login_failures; a key is limited while it has at least
`limit` failures in the sliding window. Because the rows live in the database, every replica
enforces the same budget. Three keys per attempt:

- the account from one client address (small budget): refuses a guesser without touching the
  owner, who logs in from elsewhere;
- the client address (whatever the accounts): refuses one address spraying many accounts;
- the account from all addresses (larger budget): once spent, only addresses the account has
  logged in from before may still try, so an attack spread over many addresses is slowed to that
  budget while the owner, at their usual address, is not locked out.

A success clears the account-and-address count only: an attacker with one valid account cannot
reset the budget of the address they spray from, nor the account's overall budget.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time

from services.platform.migrations import Conn

_last_sweep = 0.0
MAX_EMAIL = 320  # accounts.EMAIL: 64 characters, "@", 255


def _bounded(email: str) -> str:
    """The e-mail address as a key part of bounded length: no account has a longer address, and a
    megabyte-long one must not become a megabyte-long row per failure."""
    return email if len(email) <= MAX_EMAIL else "sha256:" + hashlib.sha256(email.encode()).hexdigest()


def user_key(email: str) -> str:
    """The account from all addresses."""
    return f"user:{_bounded(email)}"


def user_address_key(email: str, address: str) -> str:
    """The account from one client address."""
    return f"user:{_bounded(email)}|addr:{address}"


def address_key(address: str) -> str:
    return f"addr:{address}"


async def retry_after_s(conn: Conn, limits: dict[str, int], window_s: float) -> float | None:
    """Seconds until every key is below its limit again, or None when none is limited now."""
    rows = await conn.fetch(
        """SELECT key, count(*) AS n, array_agg(failure_time ORDER BY failure_time DESC) AS times
           FROM identity.login_failures
           WHERE key = ANY($1::text[]) AND failure_time > clock_timestamp() - make_interval(secs => $2)
           GROUP BY key""",
        list(limits),
        window_s,
    )
    now = dt.datetime.now(dt.UTC)
    wait = 0.0
    for r in rows:
        limit = limits[r["key"]]
        if r["n"] >= limit:
            # The key is free again once its limit-th newest failure leaves the window.
            oldest_that_counts = r["times"][limit - 1]
            wait = max(wait, (oldest_that_counts + dt.timedelta(seconds=window_s) - now).total_seconds())
    return max(wait, 0.001) if wait > 0 else None


async def record_failure(conn: Conn, keys: list[str], window_s: float) -> None:
    global _last_sweep
    await conn.execute(
        "INSERT INTO identity.login_failures (key) SELECT unnest($1::text[])",
        keys,
    )
    if time.monotonic() - _last_sweep > 60:
        _last_sweep = time.monotonic()
        await conn.execute(
            "DELETE FROM identity.login_failures WHERE failure_time < clock_timestamp() - make_interval(secs => $1)",
            window_s,
        )


async def clear(conn: Conn, key: str) -> None:
    await conn.execute("DELETE FROM identity.login_failures WHERE key = $1", key)
