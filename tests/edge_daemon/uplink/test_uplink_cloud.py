"""The uplink against the real cloud (EdgeLinkService over PostgreSQL): exactly-once telemetry through
a kill -9 while offline, through a cloud that drops and returns, and a refused key."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from emma.edge.v1 import edge_link_pb2
from google.protobuf import timestamp_pb2

from edge_daemon.channel_registry import ChannelRegistry
from edge_daemon.channels import AckReason
from edge_daemon.daemon import EdgeDaemon
from edge_daemon.outbox import Outbox
from edge_daemon.uplink import GrpcUplink, create_uplink
from edge_daemon.uplink.wire import ack_reason_code, timestamp
from services.command.relay import ack_reason
from tests.support.cloud import new_edge
from tests.support.uplink import (
    OutboxContent,
    TcpRelay,
    closed_port,
    ledger,
    outbox_count,
    read_outbox,
    real_cloud,
    site_config,
    site_doc,
    stored_points,
    until,
    write_toml,
)

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def captured_logs() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.DEBUG)
    root = logging.getLogger("edge_daemon")
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def record_appends(outbox: Outbox) -> dict[int, bytes]:
    """Observe every batch the producer appends (the real append still runs and decides the seq)."""
    seen: dict[int, bytes] = {}
    append = outbox.append

    def recording(payload: bytes, **kwargs: float | None) -> int:
        seq = append(payload, **kwargs)
        seen[seq] = payload
        return seq

    outbox.append = recording  # type: ignore[method-assign]
    return seen


async def assert_stored_exactly_once(
    db: asyncpg.Connection, edge_pk: int, measured: OutboxContent, *, until_seq: int
) -> None:
    """Batches 1..until_seq are all in the ledger, once, with their points; in batch_seq order."""
    rows = [r for r in await ledger(db, edge_pk) if r.batch_seq <= until_seq]
    assert [r.batch_seq for r in rows] == list(range(1, until_seq + 1))
    assert {r.batch_seq: r.point_count for r in rows} == {
        seq: len(measured.batches[seq].values) for seq in range(1, until_seq + 1)
    }
    times = [r.received_time for r in rows]
    assert times == sorted(times), "stored out of batch_seq order"
    # Every measured point exactly once: the store holds the same multiset of (channel, time, value).
    expected = measured.points(range(1, until_seq + 1))
    newest = max(t for _, t, _ in expected)
    stored = await stored_points(db, edge_pk)
    assert Counter({p: n for p, n in stored.items() if p[1] <= newest}) == expected


async def test_cloud_drops_and_returns_nothing_lost_nothing_twice(
    tmp_path: Path, db: asyncpg.Connection, migrated_url: str, captured_logs: list[logging.LogRecord]
) -> None:
    edge, pk, key = await new_edge(db, "drops")
    relay = TcpRelay()  # the cloud's fixed address; each cloud instance gets its own port behind it
    await relay.start()
    config = site_config(tmp_path, endpoint=f"127.0.0.1:{relay.port}", edge=str(edge), key=key)
    uplink = create_uplink(config)
    daemon = EdgeDaemon(config, uplink=uplink)
    await daemon.open()
    assert daemon.outbox is not None
    outbox = daemon.outbox
    appended = record_appends(outbox)
    runner = asyncio.create_task(daemon.run())
    try:
        async with real_cloud(migrated_url) as cloud:
            relay.upstream = cloud.port
            await until(lambda: uplink.stats.batches_stored >= 5, what="batches stored")
            relay.upstream = None  # the cloud goes away: its server stops, new connections fail
        # The cloud is gone; the edge keeps measuring into the outbox.
        offline_from = outbox.last_seq()
        await until(lambda: not uplink.stats.connected, what="disconnect noticed")
        await until(lambda: outbox.last_seq() >= offline_from + 5 and len(outbox) >= 5, what="offline")
        sessions_before = uplink.stats.sessions
        async with real_cloud(migrated_url) as cloud:
            relay.upstream = cloud.port
            await until(lambda: uplink.stats.sessions > sessions_before, what="reconnect")
            target = outbox.last_seq()

            async def caught_up() -> bool:
                return any(r.batch_seq >= target for r in await ledger(db, pk))

            await until(caught_up, what="catch-up")
            daemon.stop()
            await runner
    finally:
        daemon.stop()
        await asyncio.gather(runner, return_exceptions=True)
        await relay.stop()

    # What the edge measured: every appended batch. What remains unsent: the outbox after the stop.
    left = read_outbox(tmp_path / "outbox.sqlite")
    measured = OutboxContent(
        {s: edge_link_pb2.TelemetryBatch.FromString(p) for s, p in appended.items()}, left.channels
    )
    stored_seqs = {r.batch_seq for r in await ledger(db, pk)}
    # Nothing lost: every batch is stored or still waiting in the outbox (the last one, flushed at stop).
    assert set(appended) <= stored_seqs | set(left.batches)
    assert max(stored_seqs) >= target >= offline_from + 5
    assert uplink.stats.batches_rejected == 0
    # Nothing twice, in order: the ledger is 1..N and the samples are exactly the measured points.
    await assert_stored_exactly_once(db, pk, measured, until_seq=max(stored_seqs))
    messages = [r.getMessage() for r in captured_logs]
    assert any(m.startswith("cloud stream ended") for m in messages)
    assert any(m.startswith("cannot connect to the cloud") for m in messages)


class DaemonProcess:
    """`python -m edge_daemon --config site.toml` as a real process, its JSON log in a file."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_daemon", "--config", str(config_path)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_lines(self) -> list[str]:
        return self.log_path.read_text().splitlines()

    def kill(self, sig: int = signal.SIGKILL) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        code = self.proc.wait(timeout=20)
        self._log.close()
        return code


async def test_kill_9_while_offline_then_every_batch_arrives_once_in_order(
    tmp_path: Path, db: asyncpg.Connection, migrated_url: str
) -> None:
    edge, pk, key = await new_edge(db, "killed")
    outbox_path = tmp_path / "outbox.sqlite"
    doc = site_doc(tmp_path, endpoint=f"127.0.0.1:{closed_port()}", edge=str(edge), key=key)
    config_path = write_toml(tmp_path / "site.toml", doc)

    first = DaemonProcess(config_path, tmp_path / "first.log")
    try:
        await until(lambda: outbox_count(outbox_path) >= 12, timeout=30, what="offline batches")
        assert first.alive()
    finally:
        assert first.kill() == -signal.SIGKILL
    assert any("cannot connect to the cloud" in line for line in first.log_lines())

    before = read_outbox(outbox_path)  # what was measured and committed before the kill
    n = max(before.batches)
    assert sorted(before.batches) == list(range(1, n + 1)), "outbox seqs are not contiguous"
    measured_points = sum(len(b.values) for b in before.batches.values())
    assert measured_points > 0

    async with real_cloud(migrated_url) as cloud:
        doc["cloud"]["endpoint"] = f"127.0.0.1:{cloud.port}"
        write_toml(config_path, doc)
        second = DaemonProcess(config_path, tmp_path / "second.log")
        try:

            async def delivered() -> bool:
                seqs = [r.batch_seq for r in await ledger(db, pk)]
                return len([s for s in seqs if s <= n]) == n and max(seqs) > n

            await until(delivered, timeout=30, what="pre-kill batches and a new one stored")
        finally:
            assert second.kill(signal.SIGTERM) == 0  # a clean stop on SIGTERM

    await assert_stored_exactly_once(db, pk, before, until_seq=n)
    assert sum(r.point_count for r in await ledger(db, pk) if r.batch_seq <= n) == measured_points
    # Numbering continued above the pre-kill batches and the cloud holds no holes: 1..last, each once.
    seqs = [r.batch_seq for r in await ledger(db, pk)]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > n
    # Each process announced itself in its first batch.
    started = await db.fetchval(
        "SELECT count(*) FROM app.edge_events WHERE edge_pk = $1 AND kind = 'DAEMON_STARTED'", pk
    )
    assert started == 2


async def test_refused_key_keeps_the_site_running_and_the_outbox_filling(
    tmp_path: Path, db: asyncpg.Connection, migrated_url: str, captured_logs: list[logging.LogRecord]
) -> None:
    edge, pk, key = await new_edge(db, "badkey")
    async with real_cloud(migrated_url) as cloud:
        config = site_config(
            tmp_path,
            endpoint=f"127.0.0.1:{cloud.port}",
            edge=str(edge),
            key=key[:-4] + "oops",
            auth_retry_s=0.3,
        )
        uplink = create_uplink(config)
        assert isinstance(uplink, GrpcUplink)
        daemon = EdgeDaemon(config, uplink=uplink)
        runner = asyncio.create_task(daemon.run())
        try:
            await until(lambda: daemon.outbox is not None, what="outbox open")
            assert daemon.outbox is not None
            outbox = daemon.outbox
            await until(lambda: uplink.stats.auth_failures >= 3 and len(outbox) >= 1, what="refusals")
            cycles, queued = daemon.cycle.stats.cycles, len(outbox)

            def outbox_len() -> int:
                return len(outbox)

            # The control cycle keeps running and the outbox keeps filling while the cloud says no.
            await until(
                lambda: (
                    uplink.stats.auth_failures >= 5
                    and daemon.cycle.stats.cycles > cycles
                    and outbox_len() > queued >= 1
                ),
                what="cycles and batches during further refusals",
            )
            assert uplink.stats.sessions == 0 and uplink.stats.batches_sent == 0
            assert uplink.stats.last_end is not None
            assert uplink.stats.last_end.reason == "EDGE_KEY_INVALID"
            assert await ledger(db, pk) == []
            refusals = [r for r in captured_logs if r.getMessage().startswith("THE CLOUD REFUSES")]
            assert refusals and all(r.levelno == logging.ERROR for r in refusals)

            # An operator puts the right key in place: the next attempt reads it and catches up.
            (tmp_path / "edge.key").write_text(key + "\n")
            waiting = daemon.outbox.last_seq()

            async def caught_up() -> bool:
                return len(await ledger(db, pk)) >= waiting

            await until(caught_up, what="upload after the key was fixed")
        finally:
            daemon.stop()
            await asyncio.gather(runner, return_exceptions=True)
    seqs = [r.batch_seq for r in await ledger(db, pk)]
    assert seqs == list(range(1, len(seqs) + 1))


def _stale(index: int) -> edge_link_pb2.TelemetryBatch:
    """From 40 days ago: beyond the cloud's retention."""
    return edge_link_pb2.TelemetryBatch(
        batch_seq=1,
        base_time=timestamp(time.time() - 40 * 86_400),
        channel_indexes=[index],
        time_offsets_ms=[0],
        values=[50.0],
    )


def _nul_in_event(index: int) -> edge_link_pb2.TelemetryBatch:
    """An event whose device id PostgreSQL cannot store; this used to fail the stream on every resend."""
    poison = edge_link_pb2.TelemetryBatch(
        batch_seq=1, base_time=timestamp(time.time()), channel_indexes=[index], time_offsets_ms=[0], values=[50.0]
    )
    poison.events.add(kind=edge_link_pb2.EDGE_EVENT_KIND_DEVICE_COMMUNICATION_LOST, device_id="battery\x001")
    return poison


def _base_time_beyond_int64(index: int) -> edge_link_pb2.TelemetryBatch:
    """A base_time whose microseconds overflow int64; this used to fail the stream on every resend."""
    return edge_link_pb2.TelemetryBatch(
        batch_seq=1,
        base_time=timestamp_pb2.Timestamp(seconds=2**62),
        channel_indexes=[index],
        time_offsets_ms=[0],
        values=[50.0],
    )


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_stale, "BATCH_TIME_OUT_OF_RANGE"),
        (_nul_in_event, "FIELD_INVALID"),
        (_base_time_beyond_int64, "BATCH_TIME_OUT_OF_RANGE"),
    ],
    ids=["stale", "nul-in-event", "base-time-beyond-int64"],
)
async def test_a_batch_the_cloud_rejects_is_dropped_with_its_reason_and_blocks_nothing(
    tmp_path: Path,
    db: asyncpg.Connection,
    migrated_url: str,
    captured_logs: list[logging.LogRecord],
    make: Callable[[int], edge_link_pb2.TelemetryBatch],
    reason: str,
) -> None:
    edge, pk, key = await new_edge(db, f"rejects-{make.__name__.strip('_').replace('_', '-')}")
    # Before the daemon ever ran, its outbox got a batch the cloud refuses.
    outbox_path = tmp_path / "outbox.sqlite"
    registry = ChannelRegistry(outbox_path)
    box = Outbox(outbox_path, 1 << 20)
    index = registry.index_for("battery_1/Soc", "%")
    stale = make(index)
    assert box.append(stale.SerializeToString()) == 1
    box.close()
    registry.close()

    async with real_cloud(migrated_url) as cloud:
        config = site_config(tmp_path, endpoint=f"127.0.0.1:{cloud.port}", edge=str(edge), key=key)
        uplink = create_uplink(config)
        daemon = EdgeDaemon(config, uplink=uplink)
        runner = asyncio.create_task(daemon.run())
        try:

            async def later_ones_stored() -> bool:
                return len(await ledger(db, pk)) >= 3

            await until(later_ones_stored, what="batches after the rejected one")
            assert daemon.outbox is not None
            assert [b.batch_seq for b in daemon.outbox.pending(10, 0)] != [1]
        finally:
            daemon.stop()
            await asyncio.gather(runner, return_exceptions=True)
    assert uplink.stats.rejections == [(1, reason)]
    seqs = [r.batch_seq for r in await ledger(db, pk)]
    assert 1 not in seqs and seqs == list(range(2, len(seqs) + 2))
    assert 1 not in read_outbox(outbox_path).batches  # dropped: resending cannot fix it
    rejected = [r for r in captured_logs if r.getMessage().startswith("telemetry batch rejected")]
    assert [(getattr(r, "batch_seq", None), getattr(r, "reason", None)) for r in rejected] == [(1, reason)]


async def test_commands_queued_in_the_cloud_are_executed_or_rejected_by_the_edge(
    tmp_path: Path, db: asyncpg.Connection, migrated_url: str
) -> None:
    """End to end with the cloud's own command relay: queued rows are delivered on the stream; the
    edge's acks drive the cloud's state machine."""
    edge, pk, key = await new_edge(db, "commands")
    ids = {"ok": uuid.uuid4(), "too-much": uuid.uuid4()}
    # Different channels: a second command for the same channel would supersede the first.
    commands = (("ok", "battery_1/SetActivePower", -1_000.0), ("too-much", "ev_1/SetActivePower", 50_000.0))
    for request_id, channel, value in commands:
        await db.execute(
            """INSERT INTO app.commands (id, edge_pk, channel, value, state, issued_time, expire_time,
                   creator, request_id, request_hash)
               VALUES ($1, $2, $3, $4, 'QUEUED', now(), now() + interval '5 min', 'users/test', $5, $5)""",
            ids[request_id],
            pk,
            channel,
            value,
            request_id,
        )
    async with real_cloud(migrated_url) as cloud:
        config = site_config(tmp_path, endpoint=f"127.0.0.1:{cloud.port}", edge=str(edge), key=key)
        daemon = EdgeDaemon(config, uplink=create_uplink(config))
        runner = asyncio.create_task(daemon.run())
        try:

            async def settled() -> bool:
                states = await db.fetch(
                    "SELECT state FROM app.commands WHERE edge_pk = $1 AND state NOT IN "
                    "('EXECUTED', 'REJECTED_BY_EDGE', 'FAILED')",
                    pk,
                )
                return not states

            await until(settled, what="final command states in the cloud")
        finally:
            daemon.stop()
            await asyncio.gather(runner, return_exceptions=True)
    rows = {
        r["id"]: r
        for r in await db.fetch(
            "SELECT id, state, state_reason, applied_value FROM app.commands WHERE edge_pk = $1", pk
        )
    }
    assert (rows[ids["ok"]]["state"], rows[ids["ok"]]["applied_value"]) == ("EXECUTED", -1_000.0)
    assert (rows[ids["too-much"]]["state"], rows[ids["too-much"]]["state_reason"]) == (
        "REJECTED_BY_EDGE",
        "VALUE_OUT_OF_RANGE",
    )
    path = await db.fetch("SELECT to_state FROM app.command_events WHERE command_id = $1 ORDER BY id", ids["ok"])
    assert [r["to_state"] for r in path][-3:] == ["DELIVERED", "RECEIVED", "EXECUTED"]


def test_the_cloud_stores_the_same_reason_from_edges_with_and_without_reason_code() -> None:
    for reason in AckReason:
        new_edge_ack = edge_link_pb2.CommandAck(reason=reason.value, reason_code=ack_reason_code(reason.value))
        assert ack_reason(new_edge_ack) == reason.value
        assert ack_reason(edge_link_pb2.CommandAck(reason_code=ack_reason_code(reason.value))) == reason.value
        # An edge from before reason_code: its serialized ack has no field 7 and still parses.
        old_edge_ack = edge_link_pb2.CommandAck.FromString(
            edge_link_pb2.CommandAck(reason=reason.value).SerializeToString()
        )
        assert old_edge_ack.reason_code == edge_link_pb2.COMMAND_ACK_REASON_UNSPECIFIED
        assert ack_reason(old_edge_ack) == reason.value
    # A code newer than this cloud: the edge's string counts.
    future = edge_link_pb2.CommandAck(reason="SOMETHING_NEW", reason_code=99)  # type: ignore[arg-type]
    assert ack_reason(future) == "SOMETHING_NEW"
