"""Channel store: API contract, and concurrent hammering from threads and asyncio tasks at once."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterator, Mapping

import pytest

from edge_daemon.channels import (
    Ack,
    AckStatus,
    Category,
    ChannelStore,
    ChannelValue,
    Request,
    Sample,
    ack_channel,
    request_channel,
)
from edge_daemon.clock import ManualClock
from edge_daemon.errors import ChannelError, EdgeError


def test_set_get_timestamps_and_categories() -> None:
    clock = ManualClock(1_000.0)
    store = ChannelStore(clock)
    store.set("battery_1/Soc", 55.5)
    clock.advance(2)
    store.set("battery_1/SetActivePower", 100.0, category=Category.OUTPUT)
    store.set("battery_1/Soc", 56.0, ts=999.5)

    assert store.get("battery_1/Soc") == ChannelValue(56.0, 999.5, Category.INPUT)
    assert store.get("battery_1/SetActivePower") == ChannelValue(100.0, 1_002.0, Category.OUTPUT)
    assert store.get("battery_1/Missing") is None
    # The category sticks: a later write without one keeps it, a conflicting one is refused.
    store.set("battery_1/SetActivePower", 50.0)
    cv = store.get("battery_1/SetActivePower")
    assert cv is not None
    assert cv.category is Category.OUTPUT
    with pytest.raises(ChannelError, match="output channel"):
        store.set("battery_1/SetActivePower", 1.0, category=Category.INPUT)


@pytest.mark.parametrize("name", ["Soc", "battery_1/", "/Soc", "battery 1/Soc", "a//b", "x/" + "y" * 300, ""])
def test_invalid_names_are_rejected(name: str) -> None:
    with pytest.raises(ChannelError):
        ChannelStore().set(name, 1.0)


def test_valid_names() -> None:
    store = ChannelStore()
    for name in ["battery_1/Soc", "pv-roof/ActivePower", "_cycle/LatenessMs", "b/SetActivePower/Request"]:
        store.set(name, 1)
    assert set(store.snapshot()) == {
        "battery_1/Soc",
        "pv-roof/ActivePower",
        "_cycle/LatenessMs",
        "b/SetActivePower/Request",
    }


def test_request_and_ack_channels_hold_only_their_types() -> None:
    store = ChannelStore()
    out = "battery_1/SetActivePower"
    store.declare(request_channel(out), Category.REQUEST)
    store.declare(ack_channel(out), Category.ACK)
    with pytest.raises(ChannelError):
        store.set(request_channel(out), 5.0)
    with pytest.raises(ChannelError):
        store.set(ack_channel(out), Request("c1", 5.0))
    with pytest.raises(ChannelError):
        store.set("battery_1/Soc", Ack("c1", AckStatus.EXECUTED))
    assert issubclass(ChannelError, EdgeError)


def test_snapshot_is_immutable_and_isolated_from_later_writes() -> None:
    store = ChannelStore(ManualClock(0.0))
    store.set("a/X", 1.0)
    snap = store.snapshot()
    store.set("a/X", 2.0)
    store.set("a/Y", 3.0)
    assert snap["a/X"].value == 1.0
    assert "a/Y" not in snap
    with pytest.raises(TypeError):
        snap["a/X"] = ChannelValue(9.0, 0.0, Category.INPUT)  # type: ignore[index]
    # Repeated snapshots of an unchanged store are the same object: cheap once per cycle.
    assert store.snapshot() is store.snapshot()


def test_clear_with_expected_value_only_removes_that_value() -> None:
    store = ChannelStore()
    name = request_channel("battery_1/SetActivePower")
    first, second = Request("c1", 1.0), Request("c2", 2.0)
    store.set(name, first, category=Category.REQUEST)
    store.set(name, second)
    assert store.clear(name, expected=first) is False
    assert store.get(name) is not None
    assert store.clear(name, expected=second) is True
    assert store.get(name) is None
    assert store.clear(name) is False


def test_drain_samples_coalesces_and_skips_non_telemetry() -> None:
    clock = ManualClock(10.0)
    store = ChannelStore(clock)
    store.set("a/P", 1.0)
    store.set("a/P", 2.0)
    store.set("a/On", True)
    store.set("a/Name", "text")
    store.set("a/Set", 5, category=Category.OUTPUT)
    store.set("a/Set/Request", Request("c", 1.0), category=Category.REQUEST)
    store.set("a/Set/Ack", Ack("c", AckStatus.EXECUTED, applied_value=1.0), category=Category.ACK)
    assert store.drain_samples() == [
        Sample("a/P", 2.0, 10.0),
        Sample("a/On", True, 10.0),
        Sample("a/Set", 5, 10.0),
    ]
    assert store.drain_samples() == []
    acks = store.drain_acks()
    assert [(a.channel, a.ack.command_id) for a in acks] == [("a/Set/Ack", "c")]
    assert store.drain_acks() == []


def test_acks_are_events_not_only_state() -> None:
    store = ChannelStore()
    for i in range(3):
        store.set("a/Set/Ack", Ack(f"c{i}", AckStatus.REJECTED, "no"), category=Category.ACK)
    assert [e.ack.command_id for e in store.drain_acks()] == ["c0", "c1", "c2"]


@pytest.fixture
def fast_switching() -> Iterator[None]:
    # Make the GIL hand over far more often than every 5 ms so threads really interleave.
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


THREADS = 4
TASKS = 4
WRITES = 3_000


def _check_snapshot(snap: Mapping[str, ChannelValue], last: dict[str, float]) -> None:
    a, b = snap.get("pair/A"), snap.get("pair/B")
    assert (a is None) == (b is None)
    if a is not None and b is not None:
        # set_many is atomic: no snapshot ever sees half of a pair.
        assert a.value == b.value
        assert a.timestamp == b.timestamp
    for name, cv in snap.items():
        if name.endswith("/Counter"):
            assert isinstance(cv.value, int)
            assert cv.value >= last.get(name, 0), f"{name} went backwards"
            last[name] = cv.value


async def test_hammer_from_threads_and_tasks_at_once(fast_switching: None) -> None:
    store = ChannelStore()
    errors: list[BaseException] = []
    drained: dict[str, list[list[float]]] = {}  # per drainer: name -> values in drain order
    drained_lock = threading.Lock()
    writers_done = threading.Event()

    def writer_body(writer: str, i: int) -> None:
        store.set(f"{writer}/Counter", i)
        if i % 7 == 0:
            store.set_many({"pair/A": f"{writer}:{i}", "pair/B": f"{writer}:{i}"})
        if i % 50 == 0:
            store.set(f"{writer}/Set/Ack", Ack(f"{writer}-{i}", AckStatus.EXECUTED), category=Category.ACK)

    def thread_writer(writer: str) -> None:
        try:
            for i in range(1, WRITES + 1):
                writer_body(writer, i)
        except BaseException as exc:
            errors.append(exc)

    def drainer(me: str) -> None:
        mine: dict[str, list[float]] = {}
        last: dict[str, float] = {}
        try:
            while True:
                done = writers_done.is_set()
                _check_snapshot(store.snapshot(), last)
                for s in store.drain_samples():
                    assert isinstance(s.value, int)
                    mine.setdefault(s.name, []).append(s.value)
                if done:
                    break
        except BaseException as exc:
            errors.append(exc)
        with drained_lock:
            drained[me] = [mine.get(f"{w}/Counter", []) for w in writer_names]

    async def task_writer(writer: str) -> None:
        for i in range(1, WRITES + 1):
            writer_body(writer, i)
            if i % 10 == 0:
                await asyncio.sleep(0)

    async def task_reader() -> int:
        last: dict[str, float] = {}
        n = 0
        while not writers_done.is_set():
            _check_snapshot(store.snapshot(), last)
            n += 1
            await asyncio.sleep(0)
        return n

    writer_names = [f"thread{i}" for i in range(THREADS)] + [f"task{i}" for i in range(TASKS)]
    threads = [threading.Thread(target=thread_writer, args=(f"thread{i}",)) for i in range(THREADS)]
    drainers = [threading.Thread(target=drainer, args=(f"drainer{i}",)) for i in range(2)]
    for t in threads + drainers:
        t.start()
    reader = asyncio.create_task(task_reader())
    await asyncio.gather(*(task_writer(f"task{i}") for i in range(TASKS)))
    await asyncio.gather(*(asyncio.to_thread(t.join) for t in threads))
    writers_done.set()
    reads = await reader
    await asyncio.gather(*(asyncio.to_thread(t.join) for t in drainers))

    assert errors == []
    assert reads > 0
    for w, name in enumerate(writer_names):
        per_drainer = [drained[d][w] for d in drained]
        for values in per_drainer:
            # Each drainer sees a channel's samples in write order...
            assert values == sorted(values) and len(set(values)) == len(values)
        merged = sorted(v for values in per_drainer for v in values)
        # ...no sample is handed out twice, and the final value is never lost.
        assert len(set(merged)) == len(merged)
        assert merged[-1] == WRITES
        cv = store.get(f"{name}/Counter")
        assert cv is not None and cv.value == WRITES
    acks = store.drain_acks()
    assert len(acks) == len(writer_names) * (WRITES // 50)
    for name in writer_names:
        ids = [int(e.ack.command_id.rsplit("-", 1)[1]) for e in acks if e.channel == f"{name}/Set/Ack"]
        assert ids == list(range(50, WRITES + 1, 50))
