"""Hellos taken together: the handshakes of streams that open at the same time are one set of statements.

When a fleet reconnects (1,000 edges after a replica restart or a network cut) each Hello cost seven
round trips on the shared pool before its Welcome (key, edge name, key use, channels, session row and
events, last stored batch), about 300 Hellos a second on the two-core machine, and each edge's first
batches waited for their Welcome. Here, as the ingest writer groups batches, the Hellos waiting when a
round of handshakes starts are that round's (at most MAX_ROUND of them; ROUNDS_AT_ONCE rounds run side
by side), and it does the same statements once for all of them. Each Hello still gets its own answer:
a bad key, a foreign edge name, a bad declaration fails that Hello alone, in the order the single
handshake checked them.

An edge that appears twice in a round (it reconnected while its first Hello waited) is opened in a
later wave of the same round: one statement may change its session row only once, and the later
Hello's session must be the one that stays, as it would have alone. A wave the database refuses (an
edge erased meanwhile) is retried one Hello at a time, so that edge fails alone.

A Hello whose stream goes away while its round runs still has its session row written: the round
is shared and runs on; the offline sweeper marks that session offline, as after a database outage at
a stream's close.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import numpy as np
import numpy.typing as npt
from emma.common.v1 import errors_pb2
from emma.edge.v1 import edge_link_pb2
from google.protobuf import timestamp_pb2

from core.tasks import stop_tasks
from services.edgelink.hello import check_channel_addresses, check_channel_indexes, check_text
from services.errors import ApiError
from services.identity import EdgeIdentity, authenticate_edge_keys
from services.platform.config import IngestConfig
from services.platform.migrations import Conn
from services.registry import store_inventories
from services.telemetry import last_stored_batch_seqs, register_channels_of_edges

log = logging.getLogger("emma.edgelink")

PROTOCOL_VERSION = 1
# Rounds run side by side, each of at most MAX_ROUND Hellos: one round of a whole fleet's Hellos (1,000
# edges reconnecting) kept every edge waiting for the slowest part of it, on one connection and one
# PostgreSQL backend; bounded rounds answer the first Hellos early, and a few at once keep both of
# PostgreSQL's cores (and the waits for its disk) busy. Under light load each Hello is a round of its own.
ROUNDS_AT_ONCE = 3
MAX_ROUND = 64
# Text from an edge that is only logged or stored for people is cut to a bounded length.
MAX_LOGGED_CHARS = 200

# (severity, kind, message, details) of an edge event.
Event = tuple[str, str, str, dict[str, Any]]

# The session rows of the streams that open ($1..$6 per stream: edge, session id, agent version,
# protocol version, clock offset; $3 the replica) and their events ($7..$11 per event, in order: the
# stream's edge, severity, kind, message, details as JSON text; CONNECTED, then CLOCK_DRIFT if the
# edge's clock is off). Every edge at most once: ON CONFLICT DO UPDATE changes a row once a statement.
_OPEN_SESSIONS_SQL = """
WITH opened AS (
    INSERT INTO app.edge_sessions AS s (edge_pk, session_id, replica_id, online,
        connected_time, last_seen_time, agent_version, protocol_version, clock_offset_ms)
    SELECT x.e, x.sid, $3, true, now(), now(), x.av, x.pv, x.off
    FROM unnest($1::bigint[], $2::uuid[], $4::text[], $5::int[], $6::float8[]) AS x(e, sid, av, pv, off)
    ORDER BY x.e
    ON CONFLICT (edge_pk) DO UPDATE SET session_id = EXCLUDED.session_id,
        replica_id = EXCLUDED.replica_id, online = true, connected_time = now(),
        last_seen_time = now(), disconnected_time = NULL,
        agent_version = EXCLUDED.agent_version,
        protocol_version = EXCLUDED.protocol_version,
        clock_offset_ms = EXCLUDED.clock_offset_ms
    RETURNING edge_pk
)
INSERT INTO app.edge_events (edge_pk, event_time, severity, kind, message, details)
SELECT ev.e, now(), ev.severity, ev.kind, ev.message, ev.details::jsonb
FROM unnest($7::bigint[], $8::text[], $9::text[], $10::text[], $11::text[])
     WITH ORDINALITY AS ev(e, severity, kind, message, details, n)
JOIN opened ON opened.edge_pk = ev.e
ORDER BY ev.n
"""


def clipped(text: str, limit: int = MAX_LOGGED_CHARS) -> str:
    """`text` cut to `limit` characters, saying how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def ts_seconds(ts: timestamp_pb2.Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def clock_drift(edge: str, offset_ms: float, limit_ms: float, was_drifting: bool) -> tuple[bool, Event | None]:
    """(whether the edge's clock is off by more than the limit, the CLOCK_DRIFT event to record when it
    has just gone beyond it, else None)."""
    drifting = abs(offset_ms) > limit_ms
    if not drifting or was_drifting:
        return drifting, None
    log.warning("edge clock drift", extra={"edge": edge, "clock_offset_ms": offset_ms})
    return drifting, (
        "warning",
        "CLOCK_DRIFT",
        f"edge clock is {offset_ms / 1000:+.1f} s off the server's",
        {"clock_offset_ms": offset_ms},
    )


def with_channels(
    lut: npt.NDArray[np.int64], table: Sequence[edge_link_pb2.ChannelDescriptor], ids: dict[str, int]
) -> npt.NDArray[np.int64]:
    """The session's table from channel index to series id, with `table`'s entries (grown if needed)."""
    if not table:
        return lut
    top = max(e.index for e in table) + 1
    if top > len(lut):
        grown = np.full(top, -1, dtype=np.int64)
        grown[: len(lut)] = lut
        lut = grown
    for e in table:
        lut[e.index] = ids[e.channel]
    return lut


def _check(hello: edge_link_pb2.Hello, identity: EdgeIdentity) -> None:
    """What the handshake refuses once the key is known, in the order it always checked it."""
    if hello.edge and hello.edge != str(identity.name):
        raise ApiError(
            grpc.StatusCode.PERMISSION_DENIED,
            errors_pb2.ERROR_REASON_EDGE_MISMATCH,
            f"the API key belongs to {identity.name}, not {clipped(hello.edge)}",
        )
    # Before anything of the Hello is stored (see hello.py).
    check_text(hello, "hello.")
    check_channel_indexes((e.index for e in hello.channel_table), "hello.channel_table")
    if hello.protocol_version != PROTOCOL_VERSION:
        raise ApiError(
            grpc.StatusCode.FAILED_PRECONDITION,
            errors_pb2.ERROR_REASON_PROTOCOL_VERSION_UNSUPPORTED,
            f"protocol_version {hello.protocol_version} is not supported; this server speaks {PROTOCOL_VERSION}",
        )
    check_channel_addresses(hello.channel_table, "hello.channel_table")


def _retrieved(future: asyncio.Future[Opened]) -> None:
    """Marks a refusal seen even when its caller left before it came (its stream ended)."""
    if not future.cancelled():
        future.exception()


@dataclass(eq=False)  # each Hello is an item of its own, however alike two are
class _Waiting:
    hello: edge_link_pb2.Hello


@dataclass(frozen=True)
class Opened:
    """A handshake done: the stream's session row is committed online, with its CONNECTED event."""

    identity: EdgeIdentity
    session_id: uuid.UUID
    lut: npt.NDArray[np.int64]  # channel index -> series id (-1: not declared)
    last_stored: int
    drifting: bool  # the edge's clock is off beyond the limit (a CLOCK_DRIFT event was recorded)


class Handshakes:
    """`open(hello)`: the Hello checked and its stream's session opened, in a round shared with the Hellos
    waiting with it (see the module's docstring)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        config: IngestConfig,
        replica_id: str,
        *,
        rounds_at_once: int = ROUNDS_AT_ONCE,
        max_round: int = MAX_ROUND,
    ) -> None:
        self._pool = pool
        self._config = config
        self._replica_id = replica_id
        self._rounds_at_once = rounds_at_once
        self._max_round = max_round
        self._waiting: list[tuple[_Waiting, asyncio.Future[Opened]]] = []
        self._running: set[asyncio.Task[None]] = set()
        self.rounds = 0  # rounds run (each one set of statements), for stats and tests

    async def open(self, hello: edge_link_pb2.Hello) -> Opened:
        """Raises the ApiError that refuses this Hello, or what the database raised for its round.

        A caller that is cancelled leaves its round running for the others (it is shielded)."""
        future: asyncio.Future[Opened] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieved)
        self._waiting.append((_Waiting(hello), future))
        self._start_rounds()
        return await asyncio.shield(future)

    def _start_rounds(self) -> None:
        while self._waiting and len(self._running) < self._rounds_at_once:
            taken, self._waiting = self._waiting[: self._max_round], self._waiting[self._max_round :]
            task = asyncio.get_running_loop().create_task(self._run_round(taken), name="edge-handshakes")
            self._running.add(task)
            task.add_done_callback(self._round_done)

    def _round_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._start_rounds()

    async def stop(self) -> None:
        """End the rounds still running (a server stopping); their callers see them cancelled."""
        for _, future in self._waiting:
            future.cancel()
        self._waiting = []
        await stop_tasks(list(self._running))

    async def _run_round(self, taken: list[tuple[_Waiting, asyncio.Future[Opened]]]) -> None:
        try:
            outcomes = await self._round([w for w, _ in taken])
        except Exception as exc:  # the database, for the whole round: each of its Hellos fails with it
            outcomes = {w: exc for w, _ in taken}
        except BaseException:
            for _, future in taken:
                future.cancel()
            raise
        for w, future in taken:
            if future.done():  # the server stopped meanwhile
                continue
            outcome = outcomes[w]
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    async def _round(self, waiting: list[_Waiting]) -> dict[_Waiting, Opened | Exception]:
        self.rounds += 1
        outcomes: dict[_Waiting, Opened | Exception] = {}
        async with self._pool.acquire() as conn:
            identities = await authenticate_edge_keys(conn, [w.hello.api_key for w in waiting])
            accepted: list[tuple[_Waiting, EdgeIdentity]] = []
            for w, identity in zip(waiting, identities, strict=True):
                try:
                    if isinstance(identity, ApiError):
                        raise identity
                    _check(w.hello, identity)
                except ApiError as exc:
                    outcomes[w] = exc
                    continue
                accepted.append((w, identity))
            while accepted:
                wave: list[tuple[_Waiting, EdgeIdentity]] = []
                later: list[tuple[_Waiting, EdgeIdentity]] = []
                edges: set[int] = set()
                for item in accepted:
                    (later if item[1].edge_pk in edges else wave).append(item)
                    edges.add(item[1].edge_pk)
                outcomes.update(await self._open_wave(conn, wave))
                accepted = later
        return outcomes

    async def _open_wave(
        self, conn: Conn, wave: list[tuple[_Waiting, EdgeIdentity]]
    ) -> dict[_Waiting, Opened | Exception]:
        try:
            return await self._open_together(conn, wave)
        except Exception as exc:
            if len(wave) == 1 or not isinstance(exc, asyncpg.PostgresError):
                return {w: exc for w, _ in wave}
        outcomes: dict[_Waiting, Opened | Exception] = {}
        for item in wave:  # one Hello's edge is refused by the database: it fails alone
            outcomes.update(await self._open_wave(conn, [item]))
        return outcomes

    async def _open_together(
        self, conn: Conn, wave: list[tuple[_Waiting, EdgeIdentity]]
    ) -> dict[_Waiting, Opened | Exception]:
        """The Hellos of distinct edges, checked: channels, inventory, session rows and events, and where
        each edge resumes, one statement each for all of them."""
        series = await register_channels_of_edges(
            conn,
            [
                (identity.edge_pk, [e.channel for e in w.hello.channel_table], [e.unit for e in w.hello.channel_table])
                for w, identity in wave
            ],
        )
        await store_inventories(conn, [(identity.edge_pk, w.hello.devices) for w, identity in wave])
        sessions = [uuid.uuid4() for _ in wave]
        offsets: list[float] = []
        drifting: list[bool] = []
        event_edges: list[int] = []
        events: list[Event] = []
        for (w, identity), session_id in zip(wave, sessions, strict=True):
            hello = w.hello
            offset_ms = (ts_seconds(hello.edge_time) - time.time()) * 1000 if hello.HasField("edge_time") else 0.0
            drifts, drift = clock_drift(str(identity.name), offset_ms, self._config.clock_drift_warn_ms, False)
            offsets.append(offset_ms)
            drifting.append(drifts)
            event_edges.append(identity.edge_pk)
            events.append(
                (
                    "info",
                    "CONNECTED",
                    f"stream opened on {self._replica_id} (agent {hello.agent_version or '?'})",
                    {"session_id": str(session_id), "replica_id": self._replica_id},
                )
            )
            if drift is not None:
                event_edges.append(identity.edge_pk)
                events.append(drift)
        # One statement (one round trip, one commit) for every session row and event of the wave.
        await conn.execute(
            _OPEN_SESSIONS_SQL,
            [identity.edge_pk for _, identity in wave],
            sessions,
            self._replica_id,
            [w.hello.agent_version for w, _ in wave],
            [w.hello.protocol_version for w, _ in wave],
            offsets,
            event_edges,
            [e[0] for e in events],
            [e[1] for e in events],
            [e[2] for e in events],
            [json.dumps(e[3]) for e in events],
        )
        last = await last_stored_batch_seqs(conn, [identity.edge_pk for _, identity in wave])
        return {
            w: Opened(
                identity=identity,
                session_id=session_id,
                lut=with_channels(np.full(0, -1, dtype=np.int64), w.hello.channel_table, ids),
                last_stored=last[identity.edge_pk],
                drifting=drifts,
            )
            for (w, identity), session_id, ids, drifts in zip(wave, sessions, series, drifting, strict=True)
        }
