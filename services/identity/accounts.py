"""Organizations, users and memberships in the database: shared by the API, `emma admin` and `emma up`."""

from __future__ import annotations

import re
import uuid

import asyncpg

from services.identity.passwords import Passwords
from services.platform.migrations import Conn

EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")
ROLES = {"viewer": 1, "operator": 2, "admin": 3}
ADMIN = ROLES["admin"]


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


async def organization_exists(conn: Conn, org_id: str) -> bool:
    return await conn.fetchval("SELECT 1 FROM app.organizations WHERE org_id = $1", org_id) is not None


async def organization(conn: Conn, org_id: str, *, for_update: bool = False) -> asyncpg.Record | None:
    """The organization's row (org_id, display_name, create_time, update_time); `for_update` locks it
    until the caller's transaction ends."""
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(f"SELECT * FROM app.organizations WHERE org_id = $1{lock}", org_id)


async def organizations(conn: Conn, org_ids: list[str], offset: int, limit: int) -> list[asyncpg.Record]:
    """Rows of these organizations in id order, a page of them."""
    return list(
        await conn.fetch(
            "SELECT * FROM app.organizations WHERE org_id = ANY($1::text[]) ORDER BY org_id OFFSET $2 LIMIT $3",
            org_ids,
            offset,
            limit,
        )
    )


async def create_organization(conn: Conn, org_id: str, display_name: str, admin_user_id: str) -> asyncpg.Record | None:
    """Create the organization with `admin_user_id` as its admin; its row, or None when it exists already."""
    row = await conn.fetchrow(
        """INSERT INTO app.organizations (org_id, display_name) VALUES ($1, $2)
           ON CONFLICT DO NOTHING RETURNING *""",
        org_id,
        display_name,
    )
    if row is not None:
        await set_membership(conn, org_id, admin_user_id, ADMIN)
    return row


async def rename_organization(conn: Conn, org_id: str, display_name: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "UPDATE app.organizations SET display_name = $2, update_time = now() WHERE org_id = $1 RETURNING *",
        org_id,
        display_name,
    )


async def delete_organization(conn: Conn, org_id: str) -> None:
    """Delete the organization (its memberships go with it)."""
    await conn.execute("DELETE FROM app.organizations WHERE org_id = $1", org_id)


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
