"""Ends of streams taken together (services/edgelink/closings.py, and the audit rows of ended edge streams
in services/identity/call_audit.py): streams that end while one end is being recorded share the next
statement, and each end is still recorded as alone: its session offline with one DISCONNECTED event
(a session another stream took over is left alone), one audit row attributed to its edge. Against a
real PostgreSQL, and through a real server whose streams all end at once."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import grpc
from emma.identity.v1 import identity_pb2

from services.edgelink.closings import SessionEnds
from services.identity.call_audit import CallAuditor
from services.identity.context import Caller, CallState
from services.identity.edge_keys import parse_api_key
from tests.support.cloud import Host, new_edge
from tests.support.edge_client import EdgeStream, hello

CONNECT = "/emma.edge.v1.EdgeLinkService/Connect"


async def _open_session(db: asyncpg.Connection, edge_pk: int) -> uuid.UUID:
    session_id = uuid.uuid4()
    await db.execute(
        """INSERT INTO app.edge_sessions (edge_pk, session_id, replica_id, online, connected_time, last_seen_time)
           VALUES ($1, $2, 'test', true, now(), now())
           ON CONFLICT (edge_pk) DO UPDATE SET session_id = EXCLUDED.session_id, online = true""",
        edge_pk,
        session_id,
    )
    return session_id


async def _disconnects(db: asyncpg.Connection, edge_pk: int) -> int:
    return int(
        await db.fetchval("SELECT count(*) FROM app.edge_events WHERE edge_pk = $1 AND kind = 'DISCONNECTED'", edge_pk)
    )


async def test_ends_that_come_together_share_a_statement_and_each_is_recorded(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    prefix = f"ends-{uuid.uuid4().hex[:6]}"
    edges = [await new_edge(db, f"{prefix}-{i}") for i in range(8)]
    sessions = [await _open_session(db, pk) for _, pk, _ in edges]
    # The last edge's stream was taken over by a newer one before its end is recorded.
    taken_over = uuid.uuid4()
    await db.execute("UPDATE app.edge_sessions SET session_id = $2 WHERE edge_pk = $1", edges[-1][1], taken_over)
    ends = SessionEnds(pool)

    await asyncio.gather(*(ends.record(pk, sid) for (_, pk, _), sid in zip(edges, sessions, strict=True)))

    # The first end is a statement of its own; the seven that came while it ran share the next.
    assert ends.statements == 2
    rows = {
        r["edge_pk"]: r
        for r in await db.fetch(
            "SELECT edge_pk, session_id, online, disconnected_time FROM app.edge_sessions WHERE edge_pk = ANY($1)",
            [pk for _, pk, _ in edges],
        )
    }
    for _, pk, _ in edges[:-1]:
        assert not rows[pk]["online"] and rows[pk]["disconnected_time"] is not None
        assert await _disconnects(db, pk) == 1
    newer = rows[edges[-1][1]]
    assert (newer["session_id"], newer["online"], newer["disconnected_time"]) == (taken_over, True, None)
    assert await _disconnects(db, edges[-1][1]) == 0

    # A lone end afterwards is a statement of its own, as before.
    again = await _open_session(db, edges[0][1])
    await ends.record(edges[0][1], again)
    assert ends.statements == 3
    assert await _disconnects(db, edges[0][1]) == 2
    await ends.stop()


async def test_audit_rows_of_streams_ending_together_are_each_attributed(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    prefix = f"ends-audit-{uuid.uuid4().hex[:6]}"
    edges = [await new_edge(db, f"{prefix}-{i}") for i in range(6)]
    auditor = CallAuditor(pool)
    key_ids = [parse_api_key(key)[0] for _, _, key in edges]  # type: ignore[index]
    outcomes = [(0, ""), (grpc.StatusCode.CANCELLED.value[0], "cancelled")] * 3
    # A stream whose key was erased meanwhile (its edge is gone) gets no row; the others still do.
    gone = hello("organizations/acme/sites/x/edges/x", "emma_gonekey_secret").hello

    await asyncio.gather(
        *(
            auditor.audit_edge(
                CONNECT, key_id, hello(str(edge), key).hello, CallState(Caller(kind="edge"), CONNECT, f"ip:{i}"), out
            )
            for i, ((edge, _, key), key_id, out) in enumerate(zip(edges, key_ids, outcomes, strict=True))
        ),
        auditor.audit_edge(CONNECT, "gonekey", gone, CallState(Caller(kind="edge"), CONNECT, "ip:x"), (0, "")),
    )

    rows = await db.fetch(
        "SELECT * FROM identity.audit_entries WHERE method = $1 AND actor LIKE $2 ORDER BY actor",
        CONNECT,
        f"organizations/acme/sites/{prefix}-%",
    )
    assert [r["actor"] for r in rows] == [str(edge) for edge, _, _ in edges]
    for r, (edge, _, key), (code, _), i in zip(rows, edges, outcomes, range(6), strict=True):
        assert (r["org_id"], r["actor_kind"], r["resource"]) == ("acme", identity_pb2.ACTOR_KIND_EDGE, str(edge))
        assert (r["result_code"], r["client_address"]) == (code, f"ip:{i}")
        assert key not in r["request_json"] and '"apiKey":"[REDACTED]"' in r["request_json"]
    assert await db.fetchval("SELECT count(*) FROM identity.audit_entries WHERE client_address = 'ip:x'") == 0


async def test_a_fleet_whose_streams_end_at_once_has_each_end_recorded(host: Host, db: asyncpg.Connection) -> None:
    prefix = f"ends-fleet-{uuid.uuid4().hex[:6]}"
    edges = [await new_edge(db, f"{prefix}-{i}") for i in range(20)]
    async with host(["edge"]) as (server, _):
        streams = [EdgeStream(server.port) for _ in edges]
        for stream, (edge, _, key) in zip(streams, edges, strict=True):
            await stream.send(hello(str(edge), key))
        for stream in streams:
            assert (await stream.recv()).WhichOneof("message") == "welcome"
        await asyncio.gather(*(stream.close() for stream in streams))

        pks = [pk for _, pk, _ in edges]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            offline = await db.fetchval(
                "SELECT count(*) FROM app.edge_sessions WHERE edge_pk = ANY($1) AND NOT online", pks
            )
            audited = await db.fetchval(
                "SELECT count(*) FROM identity.audit_entries WHERE method = $1 AND actor LIKE $2",
                CONNECT,
                f"organizations/acme/sites/{prefix}-%",
            )
            if offline == len(edges) and audited == len(edges):
                break
            await asyncio.sleep(0.05)
        assert (offline, audited) == (len(edges), len(edges))
        for pk in pks:
            assert await _disconnects(db, pk) == 1


async def test_a_row_the_database_refuses_costs_only_its_own_stream_its_audit_row(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    """The rows of streams ending together are one INSERT; when PostgreSQL refuses it for one row (text it
    cannot hold), each row is written on its own, so only that stream's row is lost, as when every row
    was a statement of its own."""
    prefix = f"ends-refused-{uuid.uuid4().hex[:6]}"
    edges = [await new_edge(db, f"{prefix}-{i}") for i in range(5)]
    auditor = CallAuditor(pool)
    key_ids = [parse_api_key(key)[0] for _, _, key in edges]  # type: ignore[index]
    cancelled = grpc.StatusCode.CANCELLED.value[0]
    # The third stream's outcome has a NUL character, which no text column takes.
    outcomes = [(cancelled, "cancelled"), (cancelled, "cancelled"), (cancelled, "bad\x00end")] + [(0, "")] * 2

    await asyncio.gather(
        *(
            auditor.audit_edge(
                CONNECT, key_id, hello(str(edge), key).hello, CallState(Caller(kind="edge"), CONNECT, f"ip:{i}"), out
            )
            for i, ((edge, _, key), key_id, out) in enumerate(zip(edges, key_ids, outcomes, strict=True))
        )
    )

    rows = await db.fetch(
        "SELECT actor, result_code, result_message FROM identity.audit_entries WHERE method = $1 AND actor LIKE $2"
        " ORDER BY actor",
        CONNECT,
        f"organizations/acme/sites/{prefix}-%",
    )
    assert [(r["actor"], r["result_code"], r["result_message"]) for r in rows] == [
        (str(edges[i][0]), *outcomes[i]) for i in (0, 1, 3, 4)
    ]


async def test_streams_open_when_the_server_stops_have_each_end_recorded(host: Host, db: asyncpg.Connection) -> None:
    """The stop path: a server stopping with a fleet's streams open ends them all at once; their ends,
    taken together, are recorded before the pool closes, as a lone stream's end was."""
    prefix = f"ends-stop-{uuid.uuid4().hex[:6]}"
    edges = [await new_edge(db, f"{prefix}-{i}") for i in range(12)]
    async with host(["edge"], heartbeat_interval_s=600.0) as (server, _):
        streams = [EdgeStream(server.port) for _ in edges]
        for stream, (edge, _, key) in zip(streams, edges, strict=True):
            await stream.send(hello(str(edge), key))
        for stream in streams:
            assert (await stream.recv()).WhichOneof("message") == "welcome"
        # Leaving the block stops the server with every stream open (no edge hangs up).
    for stream in streams:
        await stream.close()

    pks = [pk for _, pk, _ in edges]
    assert await db.fetchval("SELECT count(*) FROM app.edge_sessions WHERE edge_pk = ANY($1) AND NOT online", pks) == 12
    for pk in pks:
        assert await _disconnects(db, pk) == 1
    audited = await db.fetchval(
        "SELECT count(*) FROM identity.audit_entries WHERE method = $1 AND actor LIKE $2",
        CONNECT,
        f"organizations/acme/sites/{prefix}-%",
    )
    assert audited == 12
