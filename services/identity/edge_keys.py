"""Edge API keys: issue (shown once), verify (constant time), revoke, and the keys as IdentityService
shows them.

Format: "emma_<key_id>_<secret>". key_id finds the row; the secret's SHA-256 is compared in constant
time. A secret of 256 random bits makes a slow hash unnecessary (see migration 0002).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from emma.common.v1 import errors_pb2
from emma.identity.v1 import identity_pb2

from services.errors import ApiError, invalid_field, not_found
from services.identity.edge_directory import edge_directory
from services.names import EdgeName
from services.pagination import Page
from services.platform.migrations import Conn
from services.platform.rpc import timestamp

PREFIX = "emma_"
MAX_DISPLAY_NAME_CHARS = 200


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


async def edge_key_revoked(conn: Conn, key_id: str) -> bool:
    """Whether a key was revoked since it authenticated a stream: EdgeLink's heartbeat asks, a second line
    behind the revocation NOTIFY, which a replica may miss while its LISTEN reconnects."""
    revoked = await conn.fetchval(
        "SELECT revoke_time IS NOT NULL FROM identity.edge_api_keys WHERE key_id = $1", key_id
    )
    return bool(revoked)


async def edges_of_keys(conn: Conn, key_ids: Sequence[str]) -> dict[str, EdgeName]:
    """The edge each key belongs to (revoked keys too); a key that is gone, or whose edge is, is left out."""
    rows = await conn.fetch(
        "SELECT key_id, edge_pk FROM identity.edge_api_keys WHERE key_id = ANY($1::text[])", list(key_ids)
    )
    names = await edge_directory().edge_names(conn, sorted({int(r["edge_pk"]) for r in rows}))
    return {r["key_id"]: names[int(r["edge_pk"])] for r in rows if int(r["edge_pk"]) in names}


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
    outcome = (await authenticate_edge_keys(conn, [api_key]))[0]
    if isinstance(outcome, ApiError):
        raise outcome
    return outcome


async def authenticate_edge_keys(conn: Conn, api_keys: Sequence[str]) -> list[EdgeIdentity | ApiError]:
    """Per key, in order: the edge it belongs to, or the UNAUTHENTICATED error (EDGE_KEY_INVALID /
    EDGE_KEY_REVOKED) for that key alone.

    Three statements whatever the number of keys (EdgeLink checks the keys of every Hello waiting at
    once: 1,000 edges reconnecting made three round trips each): the key rows, the edges' names, and
    the last use of the keys that passed. That last update is committed without waiting for the disk:
    it is for people (when was this key last used), and a database crash that loses it loses a
    moment of that, never a key or a revocation.
    """
    parsed = [parse_api_key(key) for key in api_keys]
    key_ids = sorted({p[0] for p in parsed if p is not None})
    rows = (
        {
            r["key_id"]: r
            for r in await conn.fetch(
                """SELECT key_id, edge_pk, secret_sha256, revoke_time FROM identity.edge_api_keys
                   WHERE key_id = ANY($1::text[])""",
                key_ids,
            )
        }
        if key_ids
        else {}
    )
    names = await edge_directory().edge_names(conn, sorted({int(r["edge_pk"]) for r in rows.values()}))
    outcomes: list[EdgeIdentity | ApiError] = []
    for p in parsed:
        if p is None:
            outcomes.append(_invalid("the API key is malformed"))
            continue
        key_id, secret = p
        row = rows.get(key_id)
        digest = hashlib.sha256(secret.encode()).digest()
        # Compare even when the key id is unknown, so timing does not tell which key ids exist.
        expected = bytes(row["secret_sha256"]) if row else b"\0" * 32
        if not hmac.compare_digest(digest, expected) or row is None:
            outcomes.append(_invalid("the API key is not valid"))
            continue
        name = names.get(int(row["edge_pk"]))
        if name is None:  # the edge is being erased (its keys go with it)
            outcomes.append(_invalid("the API key is not valid"))
        elif row["revoke_time"] is not None:
            outcomes.append(
                ApiError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    errors_pb2.ERROR_REASON_EDGE_KEY_REVOKED,
                    "the API key was revoked",
                )
            )
        else:
            outcomes.append(EdgeIdentity(edge_pk=int(row["edge_pk"]), name=name, key_id=key_id))
    used = sorted({o.key_id for o in outcomes if isinstance(o, EdgeIdentity)})
    if used:
        # Rows locked in key order: statements of handshakes running side by side that share keys (an
        # edge reconnecting twice at once) wait for each other rather than deadlock.
        await conn.execute(
            """UPDATE identity.edge_api_keys k SET last_use_time = now()
               FROM (SELECT key_id FROM identity.edge_api_keys WHERE key_id = ANY($1::text[])
                     ORDER BY key_id FOR UPDATE) o
               WHERE k.key_id = o.key_id AND set_config('synchronous_commit', 'off', true) IS NOT NULL""",
            used,
        )
    return outcomes


# ---------------------------------------------------------------------- the keys as resources


def key_message(row: Any, edge: EdgeName) -> identity_pb2.EdgeApiKey:
    k = identity_pb2.EdgeApiKey(
        name=f"{edge}/apiKeys/{row['key_id']}",
        display_name=row["display_name"],
        key_prefix=row["key_prefix"],
        create_time=timestamp(row["create_time"]),
    )
    if row["revoke_time"] is not None:
        k.revoke_time.CopyFrom(timestamp(row["revoke_time"]))
    if row["last_use_time"] is not None:
        k.last_use_time.CopyFrom(timestamp(row["last_use_time"]))
    return k


def check_display_name(display_name: str) -> None:
    if len(display_name) > MAX_DISPLAY_NAME_CHARS:
        raise invalid_field("edge_api_key.display_name", f"at most {MAX_DISPLAY_NAME_CHARS} characters")


async def edge_pk_of(conn: Conn, edge: EdgeName) -> int:
    """The pk of the named edge; NOT_FOUND when there is none."""
    pk = await edge_directory().edge_pk(conn, edge)
    if pk is None:
        raise not_found(str(edge))
    return pk


async def create_key(conn: Conn, edge: EdgeName, display_name: str) -> identity_pb2.EdgeApiKey:
    """A new key of the edge, with its secret (the only time it is shown)."""
    edge_pk = await edge_pk_of(conn, edge)
    key_id, key = await issue_edge_key(conn, edge_pk, display_name)
    row = await conn.fetchrow("SELECT * FROM identity.edge_api_keys WHERE key_id = $1", key_id)
    message = key_message(row, edge)
    message.key = key
    return message


async def list_keys(conn: Conn, edge: EdgeName, page: Page) -> identity_pb2.ListEdgeApiKeysResponse:
    edge_pk = await edge_pk_of(conn, edge)
    rows = await conn.fetch(
        """SELECT * FROM identity.edge_api_keys WHERE edge_pk = $1
           ORDER BY create_time DESC, key_id OFFSET $2 LIMIT $3""",
        edge_pk,
        page.offset,
        page.limit,
    )
    return identity_pb2.ListEdgeApiKeysResponse(
        edge_api_keys=[key_message(r, edge) for r in page.rows(rows)], next_page_token=page.next_token(rows)
    )


async def revoke_key(conn: Conn, edge: EdgeName, key_id: str, name: str) -> identity_pb2.EdgeApiKey:
    """Revoke the edge's key `name`; NOT_FOUND when the edge has no such key."""
    edge_pk = await edge_pk_of(conn, edge)
    row = await conn.fetchrow(
        "SELECT * FROM identity.edge_api_keys WHERE key_id = $1 AND edge_pk = $2", key_id, edge_pk
    )
    if row is None:
        raise not_found(name)
    # The UPDATE's trigger NOTIFYs every replica; the one holding the edge's stream closes it.
    await revoke_edge_key(conn, key_id)
    row = await conn.fetchrow("SELECT * FROM identity.edge_api_keys WHERE key_id = $1", key_id)
    return key_message(row, edge)
