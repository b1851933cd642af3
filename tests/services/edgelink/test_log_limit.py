"""The limiter behind the undecodable-message WARNING: one line per interval, and the next line that
passes says how many were held back."""

from __future__ import annotations

from services.edgelink.log_limit import LogLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_interval_and_the_next_says_how_many_were_held_back() -> None:
    clock = Clock()
    limiter = LogLimiter(60.0, clock)
    assert limiter.allow() == 0
    clock.now += 1
    assert [limiter.allow() for _ in range(5)] == [None] * 5
    clock.now += 59  # 60 s after the line that passed
    assert limiter.allow() == 5
    assert limiter.allow() is None
    clock.now += 600
    assert limiter.allow() == 1
