"""The EdgeLink side of schedules: each successful run's plan goes to the edges of its sites.

Like commands (services/command/relay.py), EdgeLink imports this relay from the optimizer's face and
attaches every edge stream it holds. A stored run that is still valid NOTIFYs its sites
(store.SCHEDULE_CHANNEL); every replica LISTENs and sends the newest valid plan to the streams of those
sites it holds. An edge that connects later gets the plan when its stream attaches, and a full pass
after the LISTEN connection comes back covers notifications lost meanwhile. The edge's ScheduleAck is
stored with the delivery (optimizer.schedule_deliveries).

Sending a schedule twice is harmless (the edge replaces a schedule with the newer copy of itself), so
delivery needs no claim in the database as commands do; the relay only avoids resending the schedule
a stream already has.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Protocol

import asyncpg
from emma.edge.v1 import edge_link_pb2

from services.names import parse_edge
from services.optimizer import store
from services.optimizer.dispatch import edge_schedule
from services.platform.notify import Listener

log = logging.getLogger("emma.optimizer.relay")

# A reason from the edge is stored for people; one edge must not write megabytes into a row.
MAX_ACK_REASON_CHARS = 1_000
# How often every attached stream is checked for a plan that came into force (one query per stream).
POLL_INTERVAL_S = 60.0
# The ids sent are run names, organizations/{o}/optimizationRuns/{uuid}: well under this.
MAX_SCHEDULE_ID_CHARS = 300


class ScheduleSink(Protocol):
    """What the relay needs of an edge session (EdgeLink's EdgeSession is one)."""

    @property
    def edge_pk(self) -> int: ...

    @property
    def edge_name(self) -> str: ...

    async def send(self, response: edge_link_pb2.ConnectResponse) -> None: ...


def _site_of(edge_name: str) -> str:
    return str(parse_edge(edge_name, "edge").site_name)


class ScheduleRelay:
    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self._pool = pool
        self._sinks: dict[int, ScheduleSink] = {}
        # The schedule each attached stream was last sent, so a notification for another site's run
        # of a community, or a repeated one, sends nothing new.
        self._sent: dict[int, str] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener = Listener(dsn, [store.SCHEDULE_CHANNEL], self._on_notify, self._deliver_all)
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._listener.start()
        self._poller = asyncio.create_task(self._poll(), name="schedule-poll")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        await self._listener.stop()
        for task in list(self._tasks):
            task.cancel()

    # ---------------------------------------------------------------- sessions

    async def attach(self, sink: ScheduleSink) -> None:
        """A stream of this edge opened here: send it the plan in force, if there is one."""
        self._sinks[sink.edge_pk] = sink
        self._sent.pop(sink.edge_pk, None)
        await self._deliver(sink)

    def detach(self, sink: ScheduleSink) -> None:
        if self._sinks.get(sink.edge_pk) is sink:
            del self._sinks[sink.edge_pk]
            self._sent.pop(sink.edge_pk, None)
            self._locks.pop(sink.edge_pk, None)

    # ---------------------------------------------------------------- delivery

    def _on_notify(self, _channel: str, site: str) -> None:
        for sink in list(self._sinks.values()):
            if _site_of(sink.edge_name) == site:
                self._spawn(sink)

    async def _deliver_all(self) -> None:
        for sink in list(self._sinks.values()):
            self._spawn(sink)

    async def _poll(self) -> None:
        """A run that was stored before its horizon started is announced when it is stored; this pass
        delivers it once it comes into force (and anything a lost notification missed)."""
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            await self._deliver_all()

    def _spawn(self, sink: ScheduleSink) -> None:
        task = asyncio.create_task(self._deliver(sink), name=f"schedule-{sink.edge_pk}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, sink: ScheduleSink) -> None:
        lock = self._locks.setdefault(sink.edge_pk, asyncio.Lock())
        async with lock:
            if self._sinks.get(sink.edge_pk) is not sink:
                return  # the stream ended (or a newer one took over) while this waited
            try:
                now = dt.datetime.now(dt.UTC)
                async with self._pool.acquire() as conn:
                    site = _site_of(sink.edge_name)
                    # The plan in force; without one, the next plan (a day-ahead run), which the edge
                    # holds until its first slot starts. The periodic pass switches to a plan once it
                    # comes into force.
                    found = await store.run_for_edge(conn, site, now)
                    if found is None:
                        return
                    schedule = edge_schedule(found.result, found.inputs, sink.edge_name, now)
                    if schedule is None or self._sent.get(sink.edge_pk) == schedule.schedule_id:
                        return
                    # Recorded before it is queued: the edge's ack may otherwise come back first.
                    await store.record_sent(conn, found.run_id, sink.edge_name, schedule.schedule_id)
                    await sink.send(edge_link_pb2.ConnectResponse(schedule=schedule))
                    self._sent[sink.edge_pk] = schedule.schedule_id
            except Exception:
                # The plan stays in force and the edge keeps its previous one (or its safe mode);
                # the next run, notification or reconnect delivers again.
                log.warning("schedule delivery failed", extra={"edge": sink.edge_name}, exc_info=True)
                return
        log.info(
            "schedule sent",
            extra={"edge": sink.edge_name, "schedule_id": schedule.schedule_id, "intervals": len(schedule.intervals)},
        )

    # ---------------------------------------------------------------- acknowledgements

    async def on_ack(self, sink: ScheduleSink, ack: edge_link_pb2.ScheduleAck) -> None:
        extra = {
            "edge": sink.edge_name,
            "schedule_id": ack.schedule_id[:MAX_SCHEDULE_ID_CHARS],
            "accepted": ack.accepted,
        }
        if len(ack.schedule_id) > MAX_SCHEDULE_ID_CHARS or "\x00" in ack.schedule_id:
            # Not an id this relay sent (those are run names); PostgreSQL could not even compare it.
            log.warning("ack of a schedule that was not sent to this edge ignored", extra=extra)
            return
        reason = ack.reason.replace("\x00", "\ufffd")[:MAX_ACK_REASON_CHARS]
        async with self._pool.acquire() as conn:
            known = await store.record_ack(conn, sink.edge_name, ack.schedule_id, ack.accepted, reason)
        if not known:
            log.warning("ack of a schedule that was not sent to this edge ignored", extra=extra)
        elif ack.accepted:
            log.info("schedule accepted by the edge", extra=extra)
        else:
            log.warning("schedule refused by the edge: %s", reason[:200], extra=extra)
