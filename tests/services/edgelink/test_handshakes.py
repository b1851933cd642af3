"""Hellos taken together (services/edgelink/handshake.py): Hellos that arrive while a round of handshakes
runs share the next round's statements, and each still gets its own answer: a bad key, a foreign edge
name or an old protocol refuses that Hello alone; an edge twice in a round keeps its later session;
a Hello the database refuses fails alone. Against a real PostgreSQL, and through a real server."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import grpc
from emma.edge.v1 import edge_link_pb2
from grpc_status import rpc_status

from services.edgelink.handshake import Handshakes, Opened
from services.errors import ApiError, error_info_of
from services.platform.config import IngestConfig
from tests.support.cloud import Host, new_edge
from tests.support.edge_client import CHANNELS, EdgeStream, batch, battery_inventory, hello

STORED = edge_link_pb2.TELEMETRY_ACK_RESULT_STORED


def _reason(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    assert isinstance(exc, ApiError), repr(exc)
    return exc.code, exc.reason


async def test_hellos_waiting_together_each_get_their_own_answer(pool: asyncpg.Pool, db: asyncpg.Connection) -> None:
    prefix = f"hs-{uuid.uuid4().hex[:6]}"
    good = [await new_edge(db, f"{prefix}-good-{i}") for i in range(5)]
    other, _, other_key = await new_edge(db, f"{prefix}-other")
    twice, twice_pk, twice_key = await new_edge(db, f"{prefix}-twice")
    # One edge resumes where its ledger says: its Welcome must carry that, not another edge's.
    await db.execute(
        """INSERT INTO telemetry.batch_ledger (edge_pk, batch_seq, point_count, min_time, max_time)
           VALUES ($1, 41, 0, now(), now()), ($1, 42, 0, now(), now())""",
        good[0][1],
    )
    guessed, guessed_pk, guessed_key = await new_edge(db, f"{prefix}-guessed")
    bad_secret = guessed_key[: guessed_key.rindex("_") + 1] + "not-the-secret"
    old_protocol = hello(str(good[3][0]), good[3][2]).hello
    old_protocol.protocol_version = 2
    # One round at a time, of at most four Hellos.
    handshakes = Handshakes(pool, IngestConfig(), "replica-test", rounds_at_once=1, max_round=4)

    hellos = {
        "good-0": hello(str(good[0][0]), good[0][2], devices=[battery_inventory()]).hello,
        "good-1": hello(str(good[1][0]), good[1][2]).hello,
        "good-2": hello(str(good[2][0]), good[2][2], clock_offset_s=3_600).hello,
        "bad-key": hello(str(guessed), bad_secret).hello,
        "malformed-key": hello(str(good[4][0]), "not-a-key").hello,
        "foreign-edge": hello(str(other), good[1][2]).hello,
        "old-protocol": old_protocol,
        "twice-first": hello(str(twice), twice_key, channels=CHANNELS[:1]).hello,
        "twice-later": hello(str(twice), twice_key).hello,
        "good-4": hello(str(good[4][0]), good[4][2]).hello,
        "other": hello(str(other), other_key).hello,
    }
    # The first Hello starts a round of its own at once; the others arrive while it runs and share
    # the next ones, four at a time (twice-first and twice-later in one round).
    outcomes = await asyncio.gather(*(handshakes.open(h) for h in hellos.values()), return_exceptions=True)
    answers = dict(zip(hellos, outcomes, strict=True))
    assert handshakes.rounds == 4

    assert _reason(answers["bad-key"]) == (grpc.StatusCode.UNAUTHENTICATED, "EDGE_KEY_INVALID")
    assert _reason(answers["malformed-key"]) == (grpc.StatusCode.UNAUTHENTICATED, "EDGE_KEY_INVALID")
    assert _reason(answers["foreign-edge"]) == (grpc.StatusCode.PERMISSION_DENIED, "EDGE_MISMATCH")
    assert _reason(answers["old-protocol"]) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "PROTOCOL_VERSION_UNSUPPORTED",
    )
    opened = {name: a for name, a in answers.items() if isinstance(a, Opened)}
    assert sorted(opened) == ["good-0", "good-1", "good-2", "good-4", "other", "twice-first", "twice-later"]
    for name, a in opened.items():
        assert str(a.identity.name) == hellos[name].edge
        # Each session's table maps its own channels to its own series.
        series = {
            r["channel"]: r["id"]
            for r in await db.fetch("SELECT id, channel FROM telemetry.series WHERE edge_pk = $1", a.identity.edge_pk)
        }
        assert [int(s) for s in a.lut] == [series[e.channel] for e in hellos[name].channel_table]
    assert opened["good-0"].last_stored == 42
    assert {opened[n].last_stored for n in opened if n != "good-0"} == {0}
    assert [opened[n].drifting for n in ("good-0", "good-1", "good-2")] == [False, False, True]
    assert await db.fetchval("SELECT count(*) FROM app.edge_inventory WHERE edge_pk = $1", good[0][1]) == 1

    # Every session row is the one its Hello was answered with; the edge that came twice keeps the later.
    rows = {
        r["edge_pk"]: r
        for r in await db.fetch(
            "SELECT edge_pk, session_id, online, replica_id FROM app.edge_sessions WHERE edge_pk = ANY($1::bigint[])",
            [a.identity.edge_pk for a in opened.values()],
        )
    }
    assert rows[twice_pk]["session_id"] == opened["twice-later"].session_id
    for name, a in opened.items():
        if name != "twice-first":
            assert rows[a.identity.edge_pk]["session_id"] == a.session_id
        assert rows[a.identity.edge_pk]["online"] and rows[a.identity.edge_pk]["replica_id"] == "replica-test"
    events = await db.fetch(
        "SELECT edge_pk, kind FROM app.edge_events WHERE edge_pk = ANY($1::bigint[]) ORDER BY id",
        [a.identity.edge_pk for a in opened.values()],
    )
    kinds: dict[int, list[str]] = {}
    for e in events:
        kinds.setdefault(e["edge_pk"], []).append(e["kind"])
    assert kinds[opened["good-2"].identity.edge_pk] == ["CONNECTED", "CLOCK_DRIFT"]
    assert kinds[twice_pk] == ["CONNECTED", "CONNECTED"]
    assert kinds[opened["good-1"].identity.edge_pk] == ["CONNECTED"]
    # The refused Hellos stored nothing: good-3 (old protocol) has no session and no series.
    assert await db.fetchval("SELECT count(*) FROM app.edge_sessions WHERE edge_pk = $1", good[3][1]) == 0
    assert await db.fetchval("SELECT count(*) FROM telemetry.series WHERE edge_pk = $1", good[3][1]) == 0
    # Keys that authenticated a stream were marked used (good-3's too: its key was right, its protocol
    # was not); the key only guessed at was not.
    used = await db.fetch(
        "SELECT edge_pk FROM identity.edge_api_keys WHERE last_use_time IS NOT NULL AND edge_pk = ANY($1::bigint[])",
        [guessed_pk, *(e[1] for e in good)],
    )
    assert sorted(r["edge_pk"] for r in used) == sorted(e[1] for e in good)


async def test_a_hello_the_database_refuses_fails_alone(pool: asyncpg.Pool, db: asyncpg.Connection) -> None:
    prefix = f"hs-{uuid.uuid4().hex[:6]}"
    edges = [await new_edge(db, f"{prefix}-{i}") for i in range(4)]
    refused = edges[2]
    # The database refuses one edge's session row (as it would an edge erased between its key check and
    # its session): a real trigger, for this edge only.
    name = f"refuse_{prefix.replace('-', '_')}"
    await db.execute(
        f"""CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.edge_pk = {refused[1]} THEN RAISE EXCEPTION 'refused for the test'; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER {name} BEFORE INSERT ON app.edge_sessions FOR EACH ROW EXECUTE FUNCTION {name}()"""
    )
    handshakes = Handshakes(pool, IngestConfig(), "replica-test", rounds_at_once=1)
    try:
        # The first one alone, the others together in a round whose wave fails as a whole at first.
        outcomes = await asyncio.gather(
            *(handshakes.open(hello(str(e), key).hello) for e, _, key in edges), return_exceptions=True
        )
    finally:
        await db.execute(f"DROP TRIGGER {name} ON app.edge_sessions; DROP FUNCTION {name}()")
    assert handshakes.rounds == 2
    assert isinstance(outcomes[2], asyncpg.RaiseError), repr(outcomes[2])
    for i in (0, 1, 3):
        answer = outcomes[i]
        assert isinstance(answer, Opened), repr(answer)
        session = await db.fetchval("SELECT session_id FROM app.edge_sessions WHERE edge_pk = $1", edges[i][1])
        assert session == answer.session_id
    assert await db.fetchval("SELECT count(*) FROM app.edge_sessions WHERE edge_pk = $1", refused[1]) == 0


async def test_edges_connecting_at_once_through_the_server(host: Host, db: asyncpg.Connection) -> None:
    prefix = f"hs-{uuid.uuid4().hex[:6]}"
    edges = [await new_edge(db, f"{prefix}-{i}") for i in range(8)]
    bad_key = edges[5][2][: edges[5][2].rindex("_") + 1] + "wrong"
    now = time.time()
    async with host(["edge"]) as (server, _):

        async def connect(i: int) -> str:
            edge, _, key = edges[i]
            stream = EdgeStream(server.port)
            try:
                await stream.send(hello(str(edge), bad_key if i == 5 else key))
                try:
                    await stream.recv_kind("welcome")
                except grpc.aio.AioRpcError as exc:
                    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
                    assert status is not None
                    info = error_info_of(status)
                    assert info is not None
                    return f"{exc.code().name} {info.reason}"
                await stream.send(batch(1, now, [(0, 0, float(i))]))
                ack = await stream.recv_ack()
                assert (ack.batch_seq, ack.result) == (1, STORED)
                return "stored"
            finally:
                await stream.close()

        answers = await asyncio.gather(*(connect(i) for i in range(len(edges))))
    assert answers == ["stored"] * 5 + ["UNAUTHENTICATED EDGE_KEY_INVALID"] + ["stored"] * 2
    for i, (_, pk, _) in enumerate(edges):
        stored = await db.fetchval(
            """SELECT l.value FROM telemetry.latest l JOIN telemetry.series s ON s.id = l.series_id
               WHERE s.edge_pk = $1""",
            pk,
        )
        assert stored == (None if i == 5 else float(i))
