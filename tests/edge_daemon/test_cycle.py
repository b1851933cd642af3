"""Control cycle: phase order, priority (last write wins), fault isolation, dead devices, deadlines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from edge_daemon.channels import Category, ChannelStore, Number
from edge_daemon.clock import ManualClock
from edge_daemon.controllers.base import Controller, CycleContext
from edge_daemon.cycle import CYCLE_TIME, ERRORS, LATENESS, OVERRUNS, ControlCycle
from edge_daemon.devices.base import ChannelAccess, ChannelSpec, Device
from edge_daemon.devices.polling import PollingDevice
from edge_daemon.devices.site import SiteDevices
from tests.support.cancellation import loop_steps, stop_ends
from tests.support.sim import Site, site_config


class Probe(Device):
    """A device that logs the phases it takes part in."""

    type_name = "probe"

    def __init__(self, device_id: str, journal: list[str]) -> None:
        super().__init__(device_id)
        self.journal = journal
        self.applied: float | None = None
        self.reads = 0

    @property
    def channels(self) -> tuple[ChannelSpec, ...]:
        return (
            ChannelSpec("Reading", "W", ChannelAccess.READ, "a reading"),
            ChannelSpec("Setpoint", "W", ChannelAccess.WRITE, "a setpoint", -100, 100),
        )

    def read(self, store: ChannelStore, now: float) -> None:
        self.reads += 1
        self.journal.append(f"read:{self.device_id}")
        store.set(self.address("Reading"), float(self.reads), ts=now)

    def write(self, store: ChannelStore) -> None:
        self.journal.append(f"write:{self.device_id}")
        self.applied = self.output_value(store, "Setpoint")


class Writer(Controller):
    type_name = "writer"

    def __init__(self, name: str, value: float | None, journal: list[str], fail: bool = False) -> None:
        self.name, self.value, self.journal, self.fail = name, value, journal, fail
        self.seen: list[float | None] = []

    def step(self, ctx: CycleContext) -> None:
        self.journal.append(f"step:{self.name}")
        self.seen.append(ctx.value("p/Reading"))
        if self.value is not None:
            ctx.write("p/Setpoint", self.value)
        if self.fail:
            raise RuntimeError("controller bug")


def _cycle(devices: list[Device], controllers: list[Controller], period_s: float = 1.0) -> ControlCycle:
    return ControlCycle(
        ChannelStore(ManualClock(0.0)),
        SiteDevices(devices),
        controllers,
        period_s=period_s,
        clock=ManualClock(0.0),
    )


def test_phases_run_in_order_and_last_write_wins() -> None:
    journal: list[str] = []
    low, high = Writer("low", 10.0, journal), Writer("high", 20.0, journal)
    cycle = _cycle([Probe("p", journal)], [low, high])
    cycle.run_once()
    assert journal == ["read:p", "step:low", "step:high", "write:p"]
    probe = cycle.devices.by_id["p"]
    assert isinstance(probe, Probe) and probe.applied == 20.0
    cv = cycle.store.get("p/Setpoint")
    assert cv is not None and cv.value == 20.0 and cv.category is Category.OUTPUT


def test_controllers_see_the_snapshot_taken_at_cycle_start() -> None:
    journal: list[str] = []
    ctl = Writer("c", None, journal)
    cycle = _cycle([Probe("p", journal)], [ctl])
    cycle.run_once()
    cycle.run_once()
    assert ctl.seen == [1.0, 2.0]


def test_a_failing_controller_leaves_no_half_decision_and_others_still_run() -> None:
    journal: list[str] = []
    ok, bad = Writer("ok", 10.0, journal), Writer("bad", 99.0, journal, fail=True)
    cycle = _cycle([Probe("p", journal)], [ok, bad])
    cycle.run_once()
    probe = cycle.devices.by_id["p"]
    assert isinstance(probe, Probe) and probe.applied == 10.0
    assert cycle.stats.errors == 1
    cv = cycle.store.get(ERRORS)
    assert cv is not None and cv.value == 1


def test_cycle_channels_are_published() -> None:
    cycle = _cycle([Probe("p", [])], [])
    cycle.run_once(lateness_s=0.002)
    snap = cycle.store.snapshot()
    assert snap[CYCLE_TIME].value >= 0  # type: ignore[operator]
    assert snap[LATENESS].value == pytest.approx(2.0)
    assert snap[OVERRUNS].value == 0


def test_period_bounds() -> None:
    with pytest.raises(ValueError, match="period"):
        _cycle([], [], period_s=0.05)
    assert _cycle([], [], period_s=0.1).period_s == 0.1


class DeadDevice(PollingDevice):
    """A driver whose device answered once and then stopped answering (polls hang forever)."""

    type_name = "dead"

    def __init__(self, device_id: str) -> None:
        super().__init__(device_id, poll_interval_s=0.05, timeout_s=0.2)
        self.polls = 0
        self.applied: list[Mapping[str, float]] = []

    @property
    def device_channels(self) -> tuple[ChannelSpec, ...]:
        return (
            ChannelSpec("Power", "W", ChannelAccess.READ, "power"),
            ChannelSpec("SetPower", "W", ChannelAccess.WRITE, "setpoint"),
        )

    async def poll(self) -> Mapping[str, Number]:
        self.polls += 1
        if self.polls == 1:
            return {"Power": 42.0}
        await asyncio.Event().wait()  # hangs like a TCP peer that vanished
        raise AssertionError("unreachable")

    async def apply(self, outputs: Mapping[str, float]) -> None:
        await asyncio.Event().wait()


async def test_dead_polling_device_never_blocks_the_cycle() -> None:
    journal: list[str] = []
    dead = DeadDevice("dead")
    cycle = ControlCycle(ChannelStore(), SiteDevices([dead, Probe("p", journal)]), [], period_s=0.1)
    await dead.start()
    task = asyncio.create_task(cycle.run())
    try:
        await asyncio.sleep(0.1)
        cycle.store.set("dead/SetPower", 5.0, category=Category.OUTPUT)  # apply() will hang too
        await asyncio.sleep(1.4)
    finally:
        cycle.stop()
        await task
        await dead.stop()
    assert cycle.stats.cycles >= 12  # ~15 slots in 1.5 s, none lost to the hanging driver
    # No cycle's own work took a period: it never waited on the hanging driver. (Not `overruns == 0`,
    # which also counts a cycle a loaded machine woke a whole period late.)
    assert cycle.stats.max_cycle_time_s < cycle.period_s, cycle.stats
    assert dead.poll_failures >= 3  # timeouts are counted and polling goes on
    power = cycle.store.get("dead/Power")
    ok = cycle.store.get("dead/CommunicationOk")
    assert power is not None and power.value == 42.0
    assert ok is not None and ok.value is False
    assert ok.timestamp - power.timestamp > 0.5  # the old reading keeps its old timestamp


class GatedDevice(PollingDevice):
    """A driver whose poll answers when the test opens the gate."""

    type_name = "gated"

    def __init__(self) -> None:
        super().__init__("gated", poll_interval_s=60.0, timeout_s=60.0)
        self.gate = asyncio.Event()
        self.polling = asyncio.Event()

    @property
    def device_channels(self) -> tuple[ChannelSpec, ...]:
        return (ChannelSpec("Power", "W", ChannelAccess.READ, "power"),)

    async def poll(self) -> Mapping[str, Number]:
        self.polling.set()
        await self.gate.wait()
        return {"Power": 7.0}

    async def apply(self, outputs: Mapping[str, float]) -> None:
        return None


async def test_a_polling_device_stops_even_when_its_poll_answered_in_the_same_loop_steps() -> None:
    # The daemon stops its devices once: a poll that answered a loop step or two before the stop must
    # not swallow it (asyncio.wait_for on Python 3.11 did, and the daemon's shutdown waited forever).
    for steps in range(6):
        device = GatedDevice()
        await device.start()
        await device.polling.wait()
        device.gate.set()
        await loop_steps(steps)
        ended = await stop_ends(device.stop(), device._task)
        assert ended, f"stop() did not end when the poll answered {steps} steps before it"


class SwallowingDevice(PollingDevice):
    """A driver whose library swallows a cancellation that arrives during a poll, as pymodbus does: it
    awaits each response with asyncio.wait_for, which on Python 3.11 drops a cancellation arriving
    together with the response (an edge test then hung 300 s in CI in the device's stop())."""

    type_name = "swallowing"

    def __init__(self) -> None:
        super().__init__("swallowing", poll_interval_s=0.05, timeout_s=60.0)
        self.polling = asyncio.Event()
        self.swallowed = 0

    @property
    def device_channels(self) -> tuple[ChannelSpec, ...]:
        return (ChannelSpec("Power", "W", ChannelAccess.READ, "power"),)

    async def poll(self) -> Mapping[str, Number]:
        self.polling.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            if self.swallowed:
                raise
            self.swallowed += 1  # once: the response came in the same loop steps as the cancellation
        return {"Power": 7.0}

    async def apply(self, outputs: Mapping[str, float]) -> None:
        return None


async def test_a_polling_device_stops_even_when_its_driver_swallows_the_cancellation() -> None:
    device = SwallowingDevice()
    await device.start()
    await device.polling.wait()
    task = device._task
    assert task is not None
    assert await stop_ends(device.stop(), task), "stop() waited on a poll loop that went on polling"
    assert device.swallowed == 1 and task.done()


async def test_stop_interrupts_a_long_period_promptly() -> None:
    cycle = _cycle([Probe("p", [])], [], period_s=30.0)
    cycle.clock = ManualClock(0.0)
    task = asyncio.create_task(cycle.run())
    await asyncio.sleep(0.05)
    began = time.monotonic()
    cycle.stop()
    await asyncio.wait_for(task, 1.0)
    assert time.monotonic() - began < 0.5
    assert cycle.stats.cycles == 1


def test_demo_site_runs_fast_forward(tmp_path: Path) -> None:
    site = Site(site_config(tmp_path))
    site.run(100)
    assert site.cycle.stats.cycles == 100
    assert site.cycle.stats.errors == 0
