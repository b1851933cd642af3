"""The threshold judgement on its own: hold time, escalation, hysteresis on the way back."""

from __future__ import annotations

import datetime as dt

from services.alarm.levels import CRITICAL, NORMAL, WARNING, Judgement, Levels, judge

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
LEVELS = Levels(warn_high=45, critical_high=55, warn_low=5, hysteresis=2, hold=dt.timedelta(seconds=2))


def _run(values: list[tuple[float, float]], levels: Levels = LEVELS) -> list[int]:
    state = Judgement()
    out = []
    for seconds, value in values:
        state = judge(levels, state, T0 + dt.timedelta(seconds=seconds), value)
        out.append(state.level)
    return out


def test_a_level_is_entered_only_after_its_hold_time_without_a_break() -> None:
    assert _run([(0, 46), (1, 46), (2, 46)]) == [NORMAL, NORMAL, WARNING]
    # A dip below the level restarts the hold.
    assert _run([(0, 46), (1, 44), (2, 46), (3, 46), (4, 46)]) == [NORMAL, NORMAL, NORMAL, NORMAL, WARNING]


def test_escalation_and_the_way_back_through_the_hysteresis() -> None:
    levels = [(0, 46), (2, 46), (3, 56), (5, 56), (6, 54), (7, 53.5), (8, 52.9), (9, 44), (10, 43.5), (11, 42.9)]
    assert _run(levels) == [
        NORMAL,
        WARNING,
        WARNING,
        CRITICAL,
        CRITICAL,  # 54 is below 55 but inside the hysteresis
        CRITICAL,
        WARNING,  # below 53: out of critical, still beyond warning
        WARNING,  # 44 is inside the warning's hysteresis (43)
        WARNING,
        NORMAL,
    ]


def test_low_levels_and_a_jump_straight_to_critical() -> None:
    assert _run([(0, 4), (2, 4), (3, 6), (4, 7.1)]) == [NORMAL, WARNING, WARNING, NORMAL]
    no_hold = Levels(warn_high=45, critical_high=55)
    assert _run([(0, 60), (1, 40)], no_hold) == [CRITICAL, NORMAL]
