"""GatheredReads: calls for different items arriving during a read are answered by one next read of all
their items, never by a read that started before them; per-item errors stay with their item."""

from __future__ import annotations

import asyncio

import pytest

from services.platform.shared_reads import GatheredReads
from tests.support.gated_reads import GatedReads


class Reads(GatedReads[tuple[str, list[str]]]):
    """Reads of a store of counters that the test opens and closes by hand: each read records the items
    it was given and answers each with its counter as it was when the read started."""

    def __init__(self) -> None:
        super().__init__()
        self.counters: dict[str, int] = {}

    async def read(self, group: str, items: list[str]) -> dict[str, int | Exception]:
        seen: dict[str, int | Exception] = {
            item: self.counters[item] if item in self.counters else KeyError(item) for item in items
        }
        return await self.gated((group, items), seen)


async def test_items_gathered_during_a_read_are_read_together_by_the_next_one_which_sees_what_they_saw() -> None:
    reads = Reads()
    reads.counters = {"a": 0, "b": 0, "c": 0}
    gathered: GatheredReads[str, str, int] = GatheredReads(reads.read)
    first = asyncio.ensure_future(gathered.get("day-ahead", "a"))
    await reads.started_count(1)
    # Written after the first read started: the calls below must not get that read's answer.
    reads.counters = {"a": 1, "b": 2, "c": 3}
    later = [asyncio.ensure_future(gathered.get("day-ahead", item)) for item in ("b", "a", "c", "b")]
    await asyncio.sleep(0)
    assert reads.started == [("day-ahead", ["a"])]  # they wait: one read per group at a time

    reads.gates[0].set()
    assert await first == 0
    await reads.started_count(2)
    # One more read for all of them, their items once each in arrival order, started after they arrived.
    assert reads.started[1] == ("day-ahead", ["b", "a", "c"])
    reads.gates[1].set()
    assert await asyncio.gather(*later) == [2, 1, 3, 2]
    assert len(gathered) == 0


async def test_other_groups_read_on_their_own() -> None:
    reads = Reads()
    reads.counters = {"a": 5}
    gathered: GatheredReads[str, str, int] = GatheredReads(reads.read)
    one = asyncio.ensure_future(gathered.get("day-ahead", "a"))
    other = asyncio.ensure_future(gathered.get("spot", "a"))
    await reads.started_count(2)
    assert sorted(group for group, _ in reads.started) == ["day-ahead", "spot"]
    assert len(gathered) == 2
    for gate in reads.gates:
        gate.set()
    assert await asyncio.gather(one, other) == [5, 5]


async def test_an_items_error_fails_only_its_calls() -> None:
    reads = Reads()
    reads.counters = {"a": 1, "c": 3}
    gathered: GatheredReads[str, str, int] = GatheredReads(reads.read)
    first = asyncio.ensure_future(gathered.get("g", "a"))
    await reads.started_count(1)
    later = [asyncio.ensure_future(gathered.get("g", item)) for item in ("a", "missing", "c", "missing")]
    reads.gates[0].set()
    await reads.started_count(2)
    reads.gates[1].set()
    outcomes = await asyncio.gather(first, *later, return_exceptions=True)
    assert outcomes[:2] == [1, 1] and outcomes[3] == 3
    assert [type(o) for o in (outcomes[2], outcomes[4])] == [KeyError, KeyError]


async def test_a_failed_read_fails_every_call_it_gathered_and_the_next_read_runs() -> None:
    reads = Reads()
    reads.counters = {"a": 1, "b": 2}
    gathered: GatheredReads[str, str, int] = GatheredReads(reads.read)
    first = asyncio.ensure_future(gathered.get("g", "a"))
    await reads.started_count(1)
    later = [asyncio.ensure_future(gathered.get("g", item)) for item in ("a", "b")]
    reads.fail_next = ConnectionError("database gone")
    reads.gates[0].set()
    with pytest.raises(ConnectionError):
        await first
    await reads.started_count(2)  # the gathered calls still get their own read
    reads.fail_next = ConnectionError("still gone")
    reads.gates[1].set()
    for call in later:
        with pytest.raises(ConnectionError, match="still gone"):
            await call
    # Nothing is left behind: the next call reads afresh.
    again = asyncio.ensure_future(gathered.get("g", "b"))
    await reads.started_count(3)
    reads.gates[2].set()
    assert await again == 2 and len(gathered) == 0


async def test_a_cancelled_call_leaves_the_read_to_the_others() -> None:
    reads = Reads()
    reads.counters = {"a": 1, "b": 2}
    gathered: GatheredReads[str, str, int] = GatheredReads(reads.read)
    leaving = asyncio.ensure_future(gathered.get("g", "a"))
    await reads.started_count(1)
    leaving_later = asyncio.ensure_future(gathered.get("g", "a"))
    staying = asyncio.ensure_future(gathered.get("g", "b"))
    await asyncio.sleep(0)
    leaving.cancel()
    leaving_later.cancel()
    for call in (leaving, leaving_later):
        with pytest.raises(asyncio.CancelledError):
            await call
    reads.gates[0].set()  # the read the cancelled call started still ends, and the next one starts
    await reads.started_count(2)
    assert reads.started[1] == ("g", ["a", "b"])  # the cancelled caller's item is still read: harmless
    reads.gates[1].set()
    assert await staying == 2


async def test_stop_ends_the_running_and_the_gathering_reads() -> None:
    reads = Reads()
    reads.counters = {"a": 1}
    gathered: GatheredReads[str, str, int] = GatheredReads(reads.read)
    running = asyncio.ensure_future(gathered.get("g", "a"))
    await reads.started_count(1)
    waiting = asyncio.ensure_future(gathered.get("g", "a"))
    await asyncio.sleep(0)
    await gathered.stop()
    for call in (running, waiting):
        with pytest.raises(asyncio.CancelledError):
            await call
    assert len(gathered) == 0
