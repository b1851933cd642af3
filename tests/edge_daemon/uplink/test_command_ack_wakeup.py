"""The command-ack pump wakes at the end of each control cycle: an EXECUTED reaches the journal (and so
the stream) right after the cycle that applied it, not at the pump's next poll."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from emma.edge.v1 import edge_link_pb2

from edge_daemon.daemon import EdgeDaemon
from edge_daemon.uplink import commands
from edge_daemon.uplink.commands import CommandHandler
from edge_daemon.uplink.journal import CommandJournal
from edge_daemon.uplink.wire import timestamp
from tests.support.cancellation import cancel_ends, loop_steps
from tests.support.uplink import SETPOINT, site_config, until

NAME = "organizations/acme/sites/demo/edges/gw/commands/c1"


async def test_a_final_ack_is_journaled_by_the_cycle_that_applied_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A poll this slow would fail the test: only the cycle's wake-up can move the ack in time.
    monkeypatch.setattr(commands, "ACK_POLL_S", 60.0)
    config = site_config(tmp_path, endpoint="127.0.0.1:1", edge="organizations/acme/sites/demo/edges/gw", key="k")
    daemon = EdgeDaemon(config)
    journal = CommandJournal(tmp_path / "journal.sqlite")
    handler = CommandHandler(daemon, journal, daemon.clock)
    pump = asyncio.create_task(handler.pump())
    try:
        await until(lambda: len(daemon.cycle.hooks) == 2, what="the pump's hook")  # the daemon's sampler + the pump's
        now = time.time()
        await handler.on_command(
            edge_link_pb2.EdgeCommand(
                name=NAME, channel=SETPOINT, value=-1000.0, expire_time=timestamp(now + 60), create_time=timestamp(now)
            )
        )
        record = journal.get(NAME)
        assert record is not None and record.status == edge_link_pb2.COMMAND_ACK_STATUS_RECEIVED
        daemon.cycle.run_once()  # applies the request and writes its final ack
        await until(
            lambda: (r := journal.get(NAME)) is not None and r.status == edge_link_pb2.COMMAND_ACK_STATUS_EXECUTED,
            timeout=5,
            what="EXECUTED in the journal",
        )
        assert journal.get(NAME).applied_value == -1000.0  # type: ignore[union-attr]
    finally:
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)
        journal.close()
    assert len(daemon.cycle.hooks) == 1  # the pump's hook left with it


async def test_a_cancelled_pump_ends_even_when_a_cycle_woke_it_in_the_same_loop_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A shutdown cancels the pump at any moment, also a few loop steps after a cycle ended and set its
    # wake-up: that cancellation must end the pump (asyncio.wait_for on Python 3.11 dropped it when the
    # awaited event had just been set, and the daemon's shutdown then waited for the pump forever).
    monkeypatch.setattr(commands, "ACK_POLL_S", 60.0)  # only the cycle wakes the pump here
    config = site_config(tmp_path, endpoint="127.0.0.1:1", edge="organizations/acme/sites/demo/edges/gw", key="k")
    daemon = EdgeDaemon(config)
    journal = CommandJournal(tmp_path / "journal.sqlite")
    try:
        for steps in range(8):  # the cancellation 0..7 loop steps after the cycle's end
            handler = CommandHandler(daemon, journal, daemon.clock)
            pump = asyncio.create_task(handler.pump())
            await until(lambda: len(daemon.cycle.hooks) == 2, what="the pump's hook")
            daemon.cycle.run_once()
            await loop_steps(steps)
            assert await cancel_ends(pump), f"the pump outlived its cancellation {steps} steps after a cycle"
            assert len(daemon.cycle.hooks) == 1
    finally:
        journal.close()
