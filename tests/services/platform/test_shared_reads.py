"""SharedReads: calls that arrive together share a read, and never one that started before them."""

from __future__ import annotations

import asyncio

import pytest

from services.platform.shared_reads import SharedReads
from tests.support.gated_reads import GatedReads


class Reads(GatedReads[int]):
    """Reads of a counter that the test opens and closes by hand: each read records the value the
    counter had when it started, and ends when the test lets it."""

    def __init__(self) -> None:
        super().__init__()
        self.counter = 0

    async def read(self) -> int:
        seen = self.counter
        return await self.gated(seen, seen)


async def test_calls_during_a_read_share_the_next_one_which_sees_what_they_saw() -> None:
    shared: SharedReads[str, int] = SharedReads()
    reads = Reads()
    first = asyncio.ensure_future(shared.get("site", reads.read))
    await reads.started_count(1)
    # Written after the first read started: the calls below must not get that read's answer.
    reads.counter = 1
    later = [asyncio.ensure_future(shared.get("site", reads.read)) for _ in range(5)]
    await asyncio.sleep(0)
    assert reads.started == [0]  # they wait: one read per key at a time

    reads.gates[0].set()
    assert await first == 0
    await reads.started_count(2)
    assert reads.started == [0, 1]  # one more read for all five, started after they arrived
    reads.gates[1].set()
    assert await asyncio.gather(*later) == [1, 1, 1, 1, 1]
    assert len(shared) == 0


async def test_other_keys_read_on_their_own() -> None:
    shared: SharedReads[str, int] = SharedReads()
    reads = Reads()
    a = asyncio.ensure_future(shared.get("a", reads.read))
    b = asyncio.ensure_future(shared.get("b", reads.read))
    await reads.started_count(2)
    assert len(shared) == 2
    for gate in reads.gates:
        gate.set()
    assert await asyncio.gather(a, b) == [0, 0]


async def test_a_cancelled_call_leaves_the_read_to_the_others_and_errors_reach_every_sharer() -> None:
    shared: SharedReads[str, int] = SharedReads()
    reads = Reads()
    leaving = asyncio.ensure_future(shared.get("site", reads.read))
    staying = asyncio.ensure_future(shared.get("site", reads.read))  # gathers for the next read
    await reads.started_count(1)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    reads.gates[0].set()  # the read the cancelled call started still ends, and the next one starts
    await reads.started_count(2)

    reads.fail_next = RuntimeError("database gone")
    also = asyncio.ensure_future(shared.get("site", reads.read))
    await asyncio.sleep(0)
    reads.gates[1].set()
    with pytest.raises(RuntimeError, match="database gone"):
        await staying
    await reads.started_count(3)  # `also` arrived during the failing read: a read of its own follows
    reads.gates[2].set()
    assert await also == 0


async def test_stop_ends_running_and_gathering_reads() -> None:
    shared: SharedReads[str, int] = SharedReads()
    reads = Reads()
    running = asyncio.ensure_future(shared.get("site", reads.read))
    gathering = asyncio.ensure_future(shared.get("site", reads.read))
    await reads.started_count(1)
    await shared.stop()
    for call in (running, gathering):
        with pytest.raises(asyncio.CancelledError):
            await call
    assert len(shared) == 0
