"""The uplink's parts on their own: batch building and the outbox hand-off (with overflow gaps), the
command journal across restarts, schedule conversion, wire names, backoff, and its configuration."""

from __future__ import annotations

import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
from emma.edge.v1 import edge_link_pb2

from edge_daemon.channels import AckReason, Sample
from edge_daemon.clock import ManualClock
from edge_daemon.config import parse_config
from edge_daemon.daemon import EdgeDaemon
from edge_daemon.errors import ScheduleError, SiteConfigError
from edge_daemon.outbox import Outbox
from edge_daemon.uplink import create_uplink
from edge_daemon.uplink.backoff import Backoff
from edge_daemon.uplink.batches import BatchProducer, LatenessWindow, Point, build_batches
from edge_daemon.uplink.connection import channel_options
from edge_daemon.uplink.journal import EXECUTED, FAILED, RECEIVED, REJECTED, CommandJournal
from edge_daemon.uplink.schedules import schedule_from_proto
from edge_daemon.uplink.wire import ack_reason_code, timestamp, wire_channel, wire_value
from tests.support.sim import MIDSUMMER
from tests.support.uplink import read_outbox, site_doc

ROOT = Path(__file__).resolve().parents[3]
EDGE = "organizations/acme/sites/demo/edges/gw"
GAP = edge_link_pb2.EDGE_EVENT_KIND_TELEMETRY_GAP
STARTED = edge_link_pb2.EDGE_EVENT_KIND_DAEMON_STARTED


# -- batches ---------------------------------------------------------------------------------------


def test_build_batches_is_columnar_with_millisecond_offsets_and_splits_at_max_points() -> None:
    t0 = 1_750_000_000.0
    points = [Point(i % 3, t0 + i * 0.1, float(i)) for i in range(7)]
    event = edge_link_pb2.EdgeEvent(kind=STARTED)
    batches = build_batches(list(reversed(points)), max_points=3, events=[event])
    assert [len(b.values) for b in batches] == [3, 3, 1]
    first = batches[0]
    assert first.batch_seq == 0  # the outbox assigns it
    assert (first.base_time.seconds, first.base_time.nanos) == (1_750_000_000, 0)
    assert list(first.channel_indexes) == [0, 1, 2]
    assert list(first.time_offsets_ms) == [0, 100, 200]
    assert list(first.values) == [0.0, 1.0, 2.0]
    assert [len(b.events) for b in batches] == [1, 0, 0]
    assert list(batches[2].time_offsets_ms) == [0] and batches[2].base_time.nanos == 600_000_000


def test_wire_values_and_channel_addresses() -> None:
    assert (wire_value(True), wire_value(False), wire_value(3), wire_value(2.5)) == (1.0, 0.0, 3.0, 2.5)
    assert wire_value(math.nan) is None and wire_value(math.inf) is None
    assert wire_channel("battery_1/Soc") == "battery_1/Soc"
    assert wire_channel("_cycle/LatenessMs") == "edge.cycle/LatenessMs"
    assert wire_channel("_daemon/DroppedSamples") == "edge.daemon/DroppedSamples"
    assert wire_channel("battery_1/SetActivePower/Request") is None
    assert wire_channel("battery_1/" + "X" * 70) is None


def test_lateness_p99_over_the_last_minute() -> None:
    window = LatenessWindow(span_s=60)
    window.observe([Sample("_cycle/LatenessMs", 1000.0, 0.0)])  # pushed out of the window below
    window.observe([Sample("_cycle/LatenessMs", float(i % 100), 100.0 + i * 0.1) for i in range(500)])
    window.observe([Sample("battery_1/Soc", 5000.0, 150.0)])
    assert window.p99() == 98.0
    assert LatenessWindow().p99() == 0.0


def _offline_daemon(tmp_path: Path, max_bytes: int) -> tuple[EdgeDaemon, ManualClock]:
    doc = site_doc(tmp_path, endpoint="127.0.0.1:1", edge=EDGE, key="k")
    doc["outbox"] = {"path": "outbox.sqlite", "max_bytes": max_bytes}
    clock = ManualClock(MIDSUMMER + 12 * 3600)
    return EdgeDaemon(parse_config(doc, tmp_path / "site.toml"), clock=clock), clock


async def test_producer_stamps_the_outbox_seq_and_reports_overflow_gaps(tmp_path: Path) -> None:
    daemon, clock = _offline_daemon(tmp_path, max_bytes=64 * 1024)
    await daemon.open()
    assert daemon.outbox is not None
    producer = BatchProducer(daemon, daemon.outbox, started_time=clock.time())
    seqs: list[int] = []
    for _ in range(120):  # far more than 64 KiB of batches: the oldest are dropped
        for _ in range(5):
            clock.advance(1.0)
            daemon.cycle.run_once()
        seqs += await producer.flush()
    assert seqs == list(range(1, 121))
    left = read_outbox(tmp_path / "outbox.sqlite")
    daemon._close()

    # Every stored payload carries the batch_seq of its outbox row.
    assert all(batch.batch_seq == seq for seq, batch in left.batches.items())
    # Nothing vanished silently: each batch no longer in the outbox is described by a TELEMETRY_GAP
    # event inside a later batch that waits to be sent, or by a gap the next batch will report.
    covered: set[int] = set()
    for batch in left.batches.values():
        for event in batch.events:
            assert event.kind == GAP
            assert event.last_batch_seq < batch.batch_seq
            assert event.end_time.seconds >= event.event_time.seconds > 0
            covered |= set(range(event.first_batch_seq, event.last_batch_seq + 1))
    box = Outbox(tmp_path / "outbox.sqlite", 64 * 1024)
    try:
        for gap in box.gaps():
            covered |= set(range(gap.first_seq, gap.last_seq + 1))
    finally:
        box.close()
    dropped = set(range(1, 121)) - set(left.batches)
    assert dropped and covered
    assert dropped <= covered
    assert not covered & set(left.batches)


async def test_producer_announces_the_start_once_and_skips_unmappable_channels(tmp_path: Path) -> None:
    daemon, clock = _offline_daemon(tmp_path, max_bytes=1 << 20)
    await daemon.open()
    assert daemon.outbox is not None and daemon.registry is not None
    producer = BatchProducer(daemon, daemon.outbox, started_time=clock.time())
    for _ in range(3):
        clock.advance(1.0)
        daemon.cycle.run_once()
        await producer.flush()
    left = read_outbox(tmp_path / "outbox.sqlite")
    names = {r.name for r in daemon.registry.table()}
    daemon._close()
    kinds = [[e.kind for e in b.events] for _, b in sorted(left.batches.items())]
    assert kinds == [[STARTED], [], []]
    assert "_cycle/LatenessMs" in names and "battery_1/Soc" in names
    assert all(wire_channel(n) is not None for n in names)
    batch = left.batches[1]
    assert len(batch.values) == len(batch.channel_indexes) == len(batch.time_offsets_ms) > 20


# -- command journal -------------------------------------------------------------------------------


def test_journal_keeps_unsent_acks_and_dedups_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    clock = ManualClock(1_000.0)
    journal = CommandJournal(path, clock=clock)
    assert journal.receive("c1", "battery_1/SetActivePower", -1000.0)
    assert not journal.receive("c1", "battery_1/SetActivePower", -1000.0)  # a redelivery is no news
    assert [(p.name, p.status) for p in journal.unsent()] == [("c1", RECEIVED)]
    journal.mark_sent("c1", RECEIVED)
    assert journal.unsent() == []
    clock.advance(1)
    record = journal.finish("c1", EXECUTED, "", "", -1000.0)
    assert record is not None and record.final
    assert journal.finish("c1", REJECTED, "X", "") is None  # only one final status
    assert journal.decide("c2", "battery_1/Soc", 1.0, REJECTED, "CHANNEL_NOT_WRITABLE", "read-only")
    assert journal.receive("c3", "battery_1/SetActivePower", 500.0)
    journal.close()

    # A restart: unsent acks survive, and the command that was RECEIVED lost its request.
    journal = CommandJournal(path, clock=clock)
    assert journal.fail_unfinished("EDGE_RESTARTED", "restarted") == ["c3"]
    pending = [(p.name, p.status, p.ack.applied_value, p.ack.reason) for p in journal.unsent()]
    assert pending == [
        ("c1", EXECUTED, -1000.0, ""),
        ("c2", REJECTED, 0.0, "CHANNEL_NOT_WRITABLE"),
        ("c3", RECEIVED, 0.0, ""),
        ("c3", FAILED, 0.0, "EDGE_RESTARTED"),
    ]
    assert [p.ack.reason_code for p in journal.unsent()] == [
        edge_link_pb2.COMMAND_ACK_REASON_UNSPECIFIED,
        edge_link_pb2.COMMAND_ACK_REASON_CHANNEL_NOT_WRITABLE,
        edge_link_pb2.COMMAND_ACK_REASON_UNSPECIFIED,
        edge_link_pb2.COMMAND_ACK_REASON_EDGE_RESTARTED,
    ]
    for p in journal.unsent():
        journal.mark_sent(p.name, p.status)
    assert journal.unsent() == []
    assert journal.resend("c1") is not None  # redelivered: its final ack goes out again
    assert [(p.name, p.status) for p in journal.unsent()] == [("c1", EXECUTED)]
    assert journal.resend("unknown") is None
    clock.advance(8 * 86_400)
    journal.mark_sent("c1", EXECUTED)
    assert journal.prune() == 3
    journal.close()


# -- schedules -------------------------------------------------------------------------------------


def _schedule(now: float, **kwargs: object) -> edge_link_pb2.Schedule:
    intervals = [
        edge_link_pb2.ScheduleInterval(
            start_time=timestamp(now + 60 * i),
            end_time=timestamp(now + 60 * (i + 1)),
            setpoints=[edge_link_pb2.ScheduleSetpoint(channel="battery_1/SetActivePower", value=100.0 * i)],
        )
        for i in range(4)
    ]
    return edge_link_pb2.Schedule(schedule_id="s1", intervals=intervals, **kwargs)  # type: ignore[arg-type]


def test_schedule_conversion_clips_at_expiry_and_refuses_malformed_ones() -> None:
    now = 1_000_000.0
    schedule = schedule_from_proto(_schedule(now, expire_time=timestamp(now + 150)), now)
    assert [(e.start, e.end, e.value) for e in schedule.entries] == [
        (now, now + 60, 0.0),
        (now + 60, now + 120, 100.0),
        (now + 120, now + 150, 200.0),
    ]
    assert len(schedule_from_proto(_schedule(now), now).entries) == 4
    with pytest.raises(ScheduleError, match="expired"):
        schedule_from_proto(_schedule(now, expire_time=timestamp(now - 1)), now)
    with pytest.raises(ScheduleError, match="schedule_id"):
        schedule_from_proto(edge_link_pb2.Schedule(), now)
    bad = _schedule(now)
    bad.intervals[1].ClearField("end_time")
    with pytest.raises(ScheduleError, match=r"intervals\[1\]: start_time and end_time are required"):
        schedule_from_proto(bad, now)


# -- backoff ---------------------------------------------------------------------------------------


def test_backoff_is_full_jitter_doubling_to_the_cap_and_resets() -> None:
    backoff = Backoff(0.5, 30.0, rng=random.Random(7))
    ceilings = []
    for _ in range(10):
        ceiling = backoff.ceiling()
        ceilings.append(ceiling)
        assert 0 <= backoff.next_delay() <= ceiling
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]
    backoff.reset()
    assert backoff.ceiling() == 0.5
    assert all(30 <= backoff.slow_delay(60) <= 60 for _ in range(50))


# -- configuration ---------------------------------------------------------------------------------


def test_cloud_section_keys_and_their_validation(tmp_path: Path) -> None:
    doc = site_doc(tmp_path, endpoint="cloud.example:443", edge=EDGE, key="k", keepalive_time_s=20)
    cloud = parse_config(doc, tmp_path / "site.toml").cloud
    assert cloud is not None
    assert (cloud.edge, cloud.tls, cloud.keepalive_time_s, cloud.reconnect_max_s) == (EDGE, False, 20.0, 0.5)
    options = dict(channel_options(cloud))
    assert options["grpc.keepalive_time_ms"] == 20_000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.http2.max_pings_without_data"] == 0
    assert options["grpc.max_receive_message_length"] == 16 * 1024 * 1024

    for key, value, message in [
        ("edge", "sites/demo", r"cloud\.edge: expected organizations/"),
        ("edge", "organizations/Acme/sites/demo/edges/gw", r"cloud\.edge"),
        ("keepalive_time_s", 5, r"cloud\.keepalive_time_s: must be at least 10"),
        ("reconnect_max_s", 0.01, r"cloud\.reconnect_max_s: must be at least 0.1"),
        ("ca_file", "ca.pem", r"cloud\.ca_file: only meaningful with tls = true"),
        ("colour", "blue", r"cloud\.colour: unknown key"),
    ]:
        bad = site_doc(tmp_path, endpoint="cloud.example:443", edge=EDGE, key="k")
        bad["cloud"][key] = value
        with pytest.raises(SiteConfigError, match=message):
            parse_config(bad, tmp_path / "site.toml")
    missing = site_doc(tmp_path, endpoint="cloud.example:443", edge=EDGE, key="k")
    del missing["cloud"]["edge"]
    with pytest.raises(SiteConfigError, match=r"cloud\.edge: required key is missing"):
        parse_config(missing, tmp_path / "site.toml")


def test_missing_or_empty_key_file_is_a_config_error(tmp_path: Path) -> None:
    doc = site_doc(tmp_path, endpoint="127.0.0.1:1", edge=EDGE, key="emma_k_secret")
    config = parse_config(doc, tmp_path / "site.toml")
    assert create_uplink(config).api_key == "emma_k_secret"  # stripped of its newline
    (tmp_path / "edge.key").write_text("  \n")
    with pytest.raises(SiteConfigError, match=r"site\.toml: cloud\.key_file: .*edge\.key is empty"):
        create_uplink(config)
    (tmp_path / "edge.key").unlink()
    with pytest.raises(SiteConfigError, match=r"cloud\.key_file: cannot read the API key from .*edge\.key"):
        create_uplink(config)


def test_emma_edge_refuses_to_start_without_its_key(tmp_path: Path) -> None:
    from tests.support.uplink import write_toml

    doc = site_doc(tmp_path, endpoint="127.0.0.1:1", edge=EDGE, key="k")
    (tmp_path / "edge.key").unlink()
    config_path = write_toml(tmp_path / "site.toml", doc)
    result = subprocess.run(
        [sys.executable, "-m", "edge_daemon", "--config", str(config_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"emma edge: {config_path}: cloud.key_file: cannot read")
    assert len(result.stderr.strip().splitlines()) == 1


def test_every_ack_reason_has_its_contract_value_and_back() -> None:
    for reason in AckReason:
        code = ack_reason_code(reason.value)
        assert code != edge_link_pb2.COMMAND_ACK_REASON_UNSPECIFIED, reason
        assert edge_link_pb2.CommandAckReason.Name(code) == f"COMMAND_ACK_REASON_{reason.name}"
    assert len(edge_link_pb2.CommandAckReason.values()) == len(AckReason) + 1  # + UNSPECIFIED
    # EXECUTED carries no reason, and a string from an older journal that no AckReason has still parses.
    assert ack_reason_code("") == ack_reason_code("SOMETHING_ELSE") == edge_link_pb2.COMMAND_ACK_REASON_UNSPECIFIED
