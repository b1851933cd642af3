"""EdgeDaemon end to end with a stand-in uplink that uses exactly the hand-off surface the real one will."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.logs import configure_logging, log_context
from edge_daemon.channels import AckEvent, AckStatus, Sample
from edge_daemon.clock import ManualClock
from edge_daemon.config import demo_site_config, demo_site_dict, parse_config
from edge_daemon.controllers.schedule_follower import Schedule, ScheduleEntry
from edge_daemon.daemon import DROPPED_SAMPLES, EdgeDaemon
from edge_daemon.errors import CommandError, ScheduleError
from tests.support.sim import MIDSUMMER

SETPOINT = "battery_1/SetActivePower"


class BatchingUplink:
    """Turns samples into JSON batches in the outbox and sends one command, as the real uplink would
    (minus gRPC): every sqlite call goes through asyncio.to_thread."""

    def __init__(self, batches_wanted: int) -> None:
        self.batches_wanted = batches_wanted
        self.samples: list[Sample] = []
        self.acks: list[AckEvent] = []
        self.seqs: list[int] = []
        self.done = asyncio.Event()

    async def run(self, daemon: EdgeDaemon) -> None:
        assert daemon.outbox is not None and daemon.registry is not None
        daemon.submit_command(SETPOINT, "cmd-42", -1_500.0, hold_s=60)
        while True:
            await asyncio.sleep(0.25)
            samples = daemon.take_samples()
            self.samples.extend(samples)
            self.acks.extend(daemon.take_acks())
            if not samples:
                continue
            units = daemon.channel_units()
            indices = await asyncio.to_thread(
                daemon.registry.indices_for, [(s.name, units.get(s.name, "")) for s in samples]
            )
            payload = json.dumps([[i, s.timestamp, float(s.value)] for i, s in zip(indices, samples, strict=True)])
            seq = await asyncio.to_thread(
                daemon.outbox.append,
                payload.encode(),
                start_time=samples[0].timestamp,
                end_time=samples[-1].timestamp,
            )
            self.seqs.append(seq)
            if len(self.seqs) >= self.batches_wanted and self.acks:
                self.done.set()


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = configure_logging(logging.INFO, stream, static={"edge": "demo"})
    try:
        yield stream
    finally:
        logging.getLogger().removeHandler(handler)


async def test_daemon_runs_cycle_samples_outbox_and_commands(tmp_path: Path, json_log: io.StringIO) -> None:
    uplink = BatchingUplink(batches_wanted=4)
    daemon = EdgeDaemon(demo_site_config(tmp_path, period_s=0.1), uplink=uplink)
    runner = asyncio.create_task(daemon.run())
    await asyncio.wait_for(uplink.done.wait(), 10)
    daemon.stop()
    await asyncio.wait_for(runner, 5)

    # The command reached the battery and its final ack carries the applied value.
    [ack] = [e for e in uplink.acks if e.ack.command_id == "cmd-42"]
    assert ack.channel == "battery_1/SetActivePower/Ack"
    assert ack.ack.status is AckStatus.EXECUTED and ack.ack.applied_value == -1_500.0
    battery_power = [s.value for s in uplink.samples if s.name == "battery_1/ActivePower"]
    assert battery_power[-1] == -1_500.0

    # Per-cycle samples of devices and of the cycle itself, in time order per channel.
    names = {s.name for s in uplink.samples}
    assert {
        "battery_1/Soc",
        "pv_1/ActivePower",
        "grid_1/ActivePower",
        "_cycle/CycleTimeMs",
        SETPOINT,
    } <= names
    soc_times = [s.timestamp for s in uplink.samples if s.name == "battery_1/Soc"]
    assert soc_times == sorted(soc_times) and len(soc_times) >= 10
    assert daemon.channel_units()["battery_1/Soc"] == "%"

    # The outbox (closed by stop) holds every batch, readable after a restart.
    assert daemon.outbox is None
    daemon2 = EdgeDaemon(demo_site_config(tmp_path, period_s=0.1))
    await daemon2.open()
    assert daemon2.outbox is not None and daemon2.registry is not None
    stored = daemon2.outbox.pending(1_000)
    assert [b.batch_seq for b in stored][: len(uplink.seqs)] == uplink.seqs
    table = {r.index: r.name for r in daemon2.registry.table()}
    first = json.loads(stored[0].payload)
    assert all(row[0] in table for row in first)

    # Structured logs: JSON lines, the command's lines carry its id.
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    assert all(line["edge"] == "demo" for line in lines)
    command_lines = [line for line in lines if line.get("command_id") == "cmd-42"]
    assert {line["message"] for line in command_lines} >= {"command received", "command executed"}


async def test_a_crashing_uplink_never_stops_control(tmp_path: Path) -> None:
    class Crashing:
        runs = 0

        async def run(self, daemon: EdgeDaemon) -> None:
            Crashing.runs += 1
            raise ConnectionError("cloud unreachable")

    daemon = EdgeDaemon(demo_site_config(tmp_path, period_s=0.1), uplink=Crashing(), uplink_restart_s=0.1)
    runner = asyncio.create_task(daemon.run())
    await asyncio.sleep(1.0)
    daemon.stop()
    await runner
    assert Crashing.runs >= 3
    assert daemon.cycle.stats.cycles >= 8


async def test_schedule_and_command_hand_off_errors(tmp_path: Path) -> None:
    daemon = EdgeDaemon(demo_site_config(tmp_path))
    with pytest.raises(ScheduleError, match="overlap"):
        daemon.set_schedule(
            Schedule("s", (ScheduleEntry(SETPOINT, 0, 100, 1.0), ScheduleEntry(SETPOINT, 50, 150, 1.0)))
        )
    good = Schedule("s", (ScheduleEntry(SETPOINT, 0, 100, 1.0),))
    daemon.set_schedule(good)
    assert daemon.schedule_follower is not None and daemon.schedule_follower.schedule is good
    with pytest.raises(CommandError):
        daemon.submit_command("battery_1/Soc", "c", 1.0)
    doc = demo_site_dict()
    doc["controllers"] = [c for c in doc["controllers"] if c["type"] != "schedule_follower"]
    without = EdgeDaemon(parse_config(doc, tmp_path / "site.toml"))
    with pytest.raises(ScheduleError, match="no schedule_follower"):
        without.set_schedule(good)


def test_pending_samples_are_bounded_and_the_loss_is_telemetered(tmp_path: Path) -> None:
    doc = demo_site_dict()
    doc["telemetry"] = {"max_pending_samples": 1_000}
    clock = ManualClock(MIDSUMMER)
    daemon = EdgeDaemon(parse_config(doc, tmp_path / "site.toml"), clock=clock)
    for _ in range(100):
        clock.advance(1.0)
        daemon.cycle.run_once()
    samples = daemon.take_samples()
    assert len(samples) == 1_000
    assert daemon.dropped_samples > 0
    # The newest survive: the last sample is from the last cycle.
    assert samples[-1].timestamp == clock.time()
    cv = daemon.store.get(DROPPED_SAMPLES)
    assert cv is not None and cv.value == daemon.dropped_samples
    assert daemon.take_samples() == []


def test_log_context_fields_reach_every_line() -> None:
    stream = io.StringIO()
    handler = configure_logging(logging.INFO, stream)
    try:
        log = logging.getLogger("edge_daemon.test")
        with log_context(command_id="c-7"):
            log.info("inside", extra={"channel": "x/Y"})
        log.info("outside")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        logging.getLogger().removeHandler(handler)
    inside, outside, failed = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["command_id"] == "c-7" and inside["channel"] == "x/Y" and inside["level"] == "INFO"
    assert "command_id" not in outside
    assert "ValueError: boom" in failed["exception"]
