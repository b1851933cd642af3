"""AIP-155 request ids for the registry's and identity's mutating methods.

The first response of a request with a request_id is stored in the same transaction as the change,
keyed by (actor, method, request_id): a retry gets the stored response without changing anything
again, the same request_id with different content fails with REQUEST_ID_REUSED, and two concurrent
retries serialize on the primary key. Stored responses have their secret fields cleared (a retried
CreateEdgeApiKey does not return the key again).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import grpc
from emma.common.v1 import errors_pb2
from google.protobuf.message import Message

from services.errors import ApiError, invalid_field
from services.platform.migrations import Conn
from services.platform.redact import strip_sensitive

M = TypeVar("M", bound=Message)

MAX_REQUEST_ID_CHARS = 200


def _fingerprint(request: Message) -> bytes:
    return hashlib.sha256(request.SerializeToString(deterministic=True)).digest()


async def _stored(conn: Conn, actor: str, method: str, request_id: str, digest: bytes, kind: type[M]) -> M | None:
    row = await conn.fetchrow(
        "SELECT request_hash, response FROM app.idempotency_keys WHERE actor = $1 AND method = $2 AND request_id = $3",
        actor,
        method,
        request_id,
    )
    if row is None:
        return None
    if bytes(row["request_hash"]) != digest:
        raise ApiError(
            grpc.StatusCode.ALREADY_EXISTS,
            errors_pb2.ERROR_REASON_REQUEST_ID_REUSED,
            f"request_id {request_id!r} was used before for a different request",
            metadata={"request_id": request_id},
        )
    return kind.FromString(bytes(row["response"]))


async def run_once(
    conn: Conn,
    *,
    actor: str,
    method: str,
    request: Message,
    request_id: str,
    response_type: type[M],
    change: Callable[[Conn], Awaitable[M]],
) -> M:
    """Run `change(conn)` in a transaction, at most once per request_id."""
    if not request_id:
        async with conn.transaction():
            return await change(conn)
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise invalid_field("request_id", f"at most {MAX_REQUEST_ID_CHARS} characters")
    digest = _fingerprint(request)
    previous = await _stored(conn, actor, method, request_id, digest, response_type)
    if previous is not None:
        return previous
    try:
        async with conn.transaction():
            response = await change(conn)
            await conn.execute(
                """INSERT INTO app.idempotency_keys (actor, method, request_id, request_hash, response)
                   VALUES ($1, $2, $3, $4, $5)""",
                actor,
                method,
                request_id,
                digest,
                strip_sensitive(response).SerializeToString(),
            )
            return response
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name != "idempotency_keys_pkey":
            raise
    # A concurrent call with the same request_id committed first.
    previous = await _stored(conn, actor, method, request_id, digest, response_type)
    assert previous is not None
    return previous


async def forget_responses_naming(conn: Conn, name: str) -> None:
    """Drop the stored responses that mention `name` (a resource being erased), so no retry replays
    its data."""
    await conn.execute("DELETE FROM app.idempotency_keys WHERE position(convert_to($1, 'UTF8') IN response) > 0", name)
