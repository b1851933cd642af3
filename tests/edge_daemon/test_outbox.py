"""Outbox and channel registry: ordering, acks, restarts, the bytes bound with gaps, kill -9 durability."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_daemon.channel_registry import ChannelRegistry
from edge_daemon.clock import ManualClock
from edge_daemon.errors import OutboxError
from edge_daemon.outbox import Outbox

ROOT = Path(__file__).resolve().parents[2]


def test_append_pending_ack_in_batch_seq_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", 1_000_000)
    seqs = [box.append(f"batch {i}".encode()) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert [b.payload for b in box.pending(3)] == [b"batch 0", b"batch 1", b"batch 2"]
    assert [b.batch_seq for b in box.pending(10, after_seq=3)] == [4, 5]
    assert box.ack(2) is True
    assert box.ack(2) is False
    assert [b.batch_seq for b in box.pending()] == [1, 3, 4, 5]
    assert box.ack_up_to(4) == 3
    assert [b.batch_seq for b in box.pending()] == [5]
    assert len(box) == 1 and box.total_bytes == len(b"batch 4")
    box.close()
    with pytest.raises(OutboxError, match="closed"):
        box.append(b"x")


def test_batch_seq_survives_restart_and_is_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path, 1_000_000)
    for _ in range(3):
        box.append(b"x")
    box.ack_up_to(3)  # everything acked and deleted
    box.close()
    box = Outbox(path, 1_000_000)
    assert box.last_seq() == 3
    assert box.append(b"after restart") == 4
    box.close()
    box = Outbox(path, 1_000_000)
    assert [(b.batch_seq, b.payload) for b in box.pending()] == [(4, b"after restart")]
    assert len(box) == 1 and box.total_bytes == len(b"after restart")
    box.close()


def test_advance_seq_jumps_past_the_clouds_last_stored_seq(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "fresh.sqlite", 1_000_000)
    box.advance_seq(41)  # a wiped edge learns from Welcome that the cloud already holds 1..41
    assert box.append(b"a") == 42
    box.advance_seq(10)  # never lowers
    assert box.append(b"b") == 43


def test_bound_drops_oldest_and_records_one_growing_gap(tmp_path: Path) -> None:
    clock = ManualClock(1_000.0)
    box = Outbox(tmp_path / "o.sqlite", 1_000, clock=clock)
    for i in range(10):  # 10 x 100 bytes fills the bound exactly
        box.append(bytes(100), start_time=1_000.0 + i, end_time=1_001.0 + i)
    assert box.gaps() == []
    box.append(bytes(250), start_time=1_010.0, end_time=1_011.0)  # needs 250 bytes: drops 1..3
    assert box.total_bytes <= 1_000
    assert [b.batch_seq for b in box.pending()] == [4, 5, 6, 7, 8, 9, 10, 11]
    [gap] = box.gaps()
    assert (gap.first_seq, gap.last_seq, gap.batch_count, gap.size_bytes) == (1, 3, 3, 300)
    assert (gap.start_time, gap.end_time) == (1_000.0, 1_003.0)
    box.append(bytes(100), start_time=1_011.0, end_time=1_012.0)  # drops 4: the same outage, same gap
    [gap] = box.gaps()
    assert (gap.first_seq, gap.last_seq, gap.batch_count, gap.end_time) == (1, 4, 4, 1_004.0)
    with pytest.raises(OutboxError, match="exceeds"):
        box.append(bytes(1_001))
    # Newest data is always kept.
    assert box.pending(100)[-1].payload == bytes(100)
    assert box.total_bytes == sum(len(b.payload) for b in box.pending(100))


def test_gap_ack_is_refused_if_the_gap_grew_meanwhile(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", 300)
    for _ in range(4):
        box.append(bytes(100))
    [read] = box.gaps()  # the uplink reads the gap and starts reporting it...
    box.append(bytes(100))  # ...while another batch is dropped into the same gap
    assert box.ack_gap(read) is False
    [grown] = box.gaps()
    assert (grown.first_seq, grown.last_seq) == (1, 2)
    assert box.ack_gap(grown) is True
    assert box.gaps() == []
    box.ack_up_to(10)
    for _ in range(4):  # after acks the next loss is a new gap
        box.append(bytes(100))
    [fresh] = box.gaps()
    assert fresh.first_seq == 6


def test_gaps_survive_restart(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path, 200)
    for _ in range(3):
        box.append(bytes(100))
    box.close()
    box = Outbox(path, 200)
    assert [(g.first_seq, g.last_seq) for g in box.gaps()] == [(1, 1)]
    assert box.total_bytes == 200


async def test_outbox_from_asyncio_via_threads(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", 10_000_000)
    seqs = await asyncio.gather(*(asyncio.to_thread(box.append, f"{i}".encode()) for i in range(50)))
    assert sorted(seqs) == list(range(1, 51))
    pending = await asyncio.to_thread(box.pending, 100)
    assert {b.payload for b in pending} == {f"{i}".encode() for i in range(50)}


def test_channel_registry_indices_are_stable_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    reg = ChannelRegistry(path)
    a = reg.index_for("battery_1/Soc", "%")
    b, c = reg.indices_for([("battery_1/ActivePower", "W"), ("grid_1/ActivePower", "W")])
    assert len({a, b, c}) == 3
    assert reg.index_for("battery_1/Soc", "%") == a
    reg.close()
    # The outbox shares the file.
    Outbox(path, 1_000).close()
    reg = ChannelRegistry(path)
    assert reg.index_of("battery_1/Soc", "%") == a
    assert reg.index_of("grid_1/ActivePower", "W") == c
    assert reg.index_of("never/Seen") is None
    # A unit change is a new series with a new index, never a reused one.
    d = reg.index_for("battery_1/Soc", "ratio")
    assert d > c
    assert [(r.index, r.name, r.unit) for r in reg.table()] == [
        (a, "battery_1/Soc", "%"),
        (b, "battery_1/ActivePower", "W"),
        (c, "grid_1/ActivePower", "W"),
        (d, "battery_1/Soc", "ratio"),
    ]


WRITER = textwrap.dedent("""
    import sys
    from edge_daemon.outbox import Outbox
    from edge_daemon.channel_registry import ChannelRegistry

    path = sys.argv[1]
    registry = ChannelRegistry(path)
    box = Outbox(path, 10_000_000)
    i = 0
    while True:
        index = registry.index_for(f"dev/Ch{i % 50}", "W")
        payload = (f"{i}:{index}:" * 40).encode()
        seq = box.append(payload)
        # Reported only after append returned, i.e. after the commit.
        print(seq, i, index, flush=True)
        i += 1
""")


def test_kill_minus_9_loses_no_committed_batch(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    assert proc.stdout is not None
    reported: list[tuple[int, int, int]] = []
    try:
        for line in proc.stdout:
            reported.append(tuple(int(x) for x in line.split()))  # type: ignore[arg-type]
            if len(reported) >= 300:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # mid-flight: the writer is busy appending the next batches
        proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert len(reported) == 300

    box = Outbox(path, 10_000_000)
    registry = ChannelRegistry(path)
    stored = {b.batch_seq: b.payload for b in box.pending(limit=1_000_000)}
    for seq, i, index in reported:
        assert stored[seq] == (f"{i}:{index}:" * 40).encode()
        assert registry.index_of(f"dev/Ch{i % 50}", "W") == index
    seqs = [seq for seq, _, _ in reported]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # Whatever the writer committed after its last report is there too, and numbering continues above it.
    assert box.append(b"after the crash") > max(stored)


def test_a_lowered_bound_keeps_the_new_batch(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path, 1_000)
    for _ in range(10):
        box.append(bytes(100))
    box.close()
    box = Outbox(path, 300)  # the site config now allows less than is stored
    seq = box.append(bytes(300))
    assert [b.batch_seq for b in box.pending()] == [seq]
    assert box.total_bytes == 300
    [gap] = box.gaps()
    assert (gap.first_seq, gap.last_seq, gap.batch_count) == (1, 10, 10)
