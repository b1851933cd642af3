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


def _invalid(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.UNAUTHENTICATED, errors_pb2.ERROR_REASON_EDGE_KEY_INVALID, message)


async def authenticate_edge_key(conn: Conn, api_key: str) -> EdgeIdentity:
    """The edge this key belongs to, or UNAUTHENTICATED with EDGE_KEY_INVALID / EDGE_KEY_REVOKED."""
    if not api_key.startswith(PREFIX) or api_key.count("_") < 2:
        raise _invalid("the API key is malformed")
    key_id, secret = api_key[len(PREFIX) :].split("_", 1)
    row = await conn.fetchrow(
        """SELECT k.edge_pk, k.secret_sha256, k.revoke_time, e.org_id, e.site_id, e.edge_id
           FROM identity.edge_api_keys k
           JOIN app.edges e ON e.pk = k.edge_pk
           WHERE k.key_id = $1""",
        key_id,
    )
    digest = hashlib.sha256(secret.encode()).digest()
    # Compare even when the key id is unknown, so timing does not tell which key ids exist.
    expected = bytes(row["secret_sha256"]) if row else b"\0" * 32
    if not hmac.compare_digest(digest, expected) or row is None:
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
        name=EdgeName(row["org_id"], row["site_id"], row["edge_id"]),
        key_id=key_id,
    )
