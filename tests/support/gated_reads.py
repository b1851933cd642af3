"""Reads a test opens and closes by hand, for the tests of services/platform/shared_reads.py."""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

S = TypeVar("S")  # what a read records when it starts
V = TypeVar("V")


class GatedReads(Generic[S]):
    """Each read records what it started with (`started`), then waits for its own gate (`gates`, in the
    order the reads started) to end; `fail_next` makes the next read to end raise instead."""

    def __init__(self) -> None:
        self.started: list[S] = []
        self.gates: list[asyncio.Event] = []
        self.fail_next: Exception | None = None

    async def gated(self, start: S, result: V) -> V:
        """Record `start`, wait for this read's gate, then return `result` (or raise `fail_next`)."""
        self.started.append(start)
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        return result

    async def started_count(self, n: int) -> None:
        async with asyncio.timeout(5):  # a read that never starts fails the test, not the suite's timeout
            while len(self.started) < n:
                await asyncio.sleep(0)
