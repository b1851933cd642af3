"""Organizations, users and memberships in the database: shared by the API, `emma admin` and `emma up`."""

from __future__ import annotations

import re
import uuid

import asyncpg

from services.identity.passwords import Passwords
from services.platform.migrations import Conn

EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")
ROLES = {"viewer": 1, "operator": 2, "admin": 3}


def normalize_email(email: str) -> str:
    return email.strip().lower()


def new_user_id() -> str:
    return uuid.uuid4().hex


async def create_org(conn: Conn, org_id: str, display_name: str) -> bool:
    """Create the organization; False when it exists already."""
    status = await conn.execute(
        "INSERT INTO app.organizations (org_id, display_name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        org_id,
        display_name or org_id,
    )
    return status.endswith(" 1")


async def user_by_email(conn: Conn, email: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM identity.users WHERE lower(email) = $1", normalize_email(email))


async def insert_user(
    conn: Conn,
    *,
    email: str,
    password_hash: str,
    display_name: str = "",
    platform_admin: bool = False,
) -> str:
    """Insert a user; raises asyncpg.UniqueViolationError when the e-mail is taken."""
    user_id = new_user_id()
    await conn.execute(
        """INSERT INTO identity.users (user_id, email, display_name, password_hash, platform_admin)
           VALUES ($1, $2, $3, $4, $5)""",
        user_id,
        normalize_email(email),
        display_name,
        password_hash,
        platform_admin,
    )
    return user_id


async def set_membership(conn: Conn, org_id: str, user_id: str, role: int) -> None:
    await conn.execute(
        """INSERT INTO identity.memberships (org_id, user_id, role) VALUES ($1, $2, $3)
           ON CONFLICT (org_id, user_id) DO UPDATE SET role = EXCLUDED.role, update_time = now()""",
        org_id,
        user_id,
        role,
    )


async def ensure_user(
    conn: Conn,
    passwords: Passwords,
    *,
    email: str,
    password: str,
    org_id: str,
    role: int,
    display_name: str = "",
    platform_admin: bool = False,
) -> tuple[str, bool]:
    """Create the user with a membership (or give an existing one the membership): (user id, created)."""
    async with conn.transaction():
        existing = await user_by_email(conn, email)
        if existing is not None:
            await set_membership(conn, org_id, existing["user_id"], role)
            if platform_admin and not existing["platform_admin"]:
                await conn.execute(
                    "UPDATE identity.users SET platform_admin = true WHERE user_id = $1", existing["user_id"]
                )
            return str(existing["user_id"]), False
        user_id = await insert_user(
            conn,
            email=email,
            password_hash=passwords.hash_sync(password),
            display_name=display_name,
            platform_admin=platform_admin,
        )
        await set_membership(conn, org_id, user_id, role)
        return user_id, True
