"""Edge API keys: issue (shown once), verify (constant time), revoke.

Format: "emma_<key_id>_<secret>". key_id finds the row; the secret's SHA-256 is compared in constant
time. A secret of 256 random bits makes a slow hash unnecessary (see migration 0002).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

import grpc
from emma.common.v1 import errors_pb2

from services.errors import ApiError
from services.identity.edge_directory import edge_directory
from services.names import EdgeName
from services.platform.migrations import Conn

PREFIX = "emma_"


@dataclass(frozen=True)
class EdgeIdentity:
    """Who is on the other end of an authenticated stream."""

    edge_pk: int
    name: EdgeName
    key_id: str


async def issue_edge_key(conn: Conn, edge_pk: int, display_name: str = "") -> tuple[str, str]:
    """Create a key for the edge; returns (key_id, the full secret key). The secret is not stored."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    key = f"{PREFIX}{key_id}_{secret}"
    await conn.execute(
        """INSERT INTO identity.edge_api_keys (key_id, edge_pk, display_name, key_prefix, secret_sha256)
           VALUES ($1, $2, $3, $4, $5)""",
        key_id,
        edge_pk,
        display_name,
        key[: len(PREFIX) + 16],
        hashlib.sha256(secret.encode()).digest(),
    )
    return key_id, key


async def revoke_edge_key(conn: Conn, key_id: str) -> bool:
    status = await conn.execute(
        "UPDATE identity.edge_api_keys SET revoke_time = now() WHERE key_id = $1 AND revoke_time IS NULL",
        key_id,
    )
    return status.endswith(" 1")


async def revoke_edge_keys_of(conn: Conn, edge_pk: int) -> None:
    """Revoke every key of the edge (before a new one replaces them)."""
    await conn.execute(
        "UPDATE identity.edge_api_keys SET revoke_time = now() WHERE edge_pk = $1 AND revoke_time IS NULL", edge_pk
    )


async def edge_of_key(conn: Conn, key_id: str) -> EdgeName | None:
    """The edge a key belongs to (revoked keys too), or None when the key or its edge is gone."""
    edge_pk = await conn.fetchval("SELECT edge_pk FROM identity.edge_api_keys WHERE key_id = $1", key_id)
    return None if edge_pk is None else await edge_directory().edge_name(conn, int(edge_pk))


def parse_api_key(api_key: str) -> tuple[str, str] | None:
    """ "emma_<key_id>_<secret>" -> (key_id, secret); None when the key does not have that form."""
    if not api_key.startswith(PREFIX) or api_key.count("_") < 2:
        return None
    key_id, secret = api_key[len(PREFIX) :].split("_", 1)
    return key_id, secret


def _invalid(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.UNAUTHENTICATED, errors_pb2.ERROR_REASON_EDGE_KEY_INVALID, message)


async def authenticate_edge_key(conn: Conn, api_key: str) -> EdgeIdentity:
    """The edge this key belongs to, or UNAUTHENTICATED with EDGE_KEY_INVALID / EDGE_KEY_REVOKED."""
    parsed = parse_api_key(api_key)
    if parsed is None:
        raise _invalid("the API key is malformed")
    key_id, secret = parsed
    row = await conn.fetchrow(
        "SELECT edge_pk, secret_sha256, revoke_time FROM identity.edge_api_keys WHERE key_id = $1",
        key_id,
    )
    digest = hashlib.sha256(secret.encode()).digest()
    # Compare even when the key id is unknown, so timing does not tell which key ids exist.
    expected = bytes(row["secret_sha256"]) if row else b"\0" * 32
    if not hmac.compare_digest(digest, expected) or row is None:
        raise _invalid("the API key is not valid")
    name = await edge_directory().edge_name(conn, row["edge_pk"])
    if name is None:  # the edge is being erased (its keys go with it)
        raise _invalid("the API key is not valid")
    if row["revoke_time"] is not None:
        raise ApiError(
            grpc.StatusCode.UNAUTHENTICATED,
            errors_pb2.ERROR_REASON_EDGE_KEY_REVOKED,
            "the API key was revoked",
        )
    await conn.execute("UPDATE identity.edge_api_keys SET last_use_time = now() WHERE key_id = $1", key_id)
    return EdgeIdentity(
        edge_pk=row["edge_pk"],
        name=name,
        key_id=key_id,
    )
