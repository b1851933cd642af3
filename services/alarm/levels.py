"""The judgement of a THRESHOLD rule on a channel's samples, pure: no I/O, no clock.

A level (1 warning, 2 critical) is entered when the value has been beyond it, without a break, for
the hold time; it is left only when the value is back past the level by the hysteresis (a high level
50 with hysteresis 2 is left below 48). Entering is judged first, so a value that jumps from normal
to critical opens the alarm as critical after the hold time of the critical level.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace

NORMAL, WARNING, CRITICAL = 0, 1, 2


@dataclass(frozen=True)
class Levels:
    warn_high: float | None = None
    critical_high: float | None = None
    warn_low: float | None = None
    critical_low: float | None = None
    hysteresis: float = 0.0
    hold: dt.timedelta = dt.timedelta(0)


@dataclass(frozen=True)
class Judgement:
    """Where a rule stands on one source: the judged level and since when each level is exceeded."""

    level: int = NORMAL
    warn_since: dt.datetime | None = None
    critical_since: dt.datetime | None = None


def raw_level(levels: Levels, value: float, slack: float = 0.0) -> int:
    """The level `value` is beyond, with every threshold moved `slack` towards normal."""

    def beyond(high: float | None, low: float | None) -> bool:
        return (high is not None and value >= high - slack) or (low is not None and value <= low + slack)

    if beyond(levels.critical_high, levels.critical_low):
        return CRITICAL
    if beyond(levels.warn_high, levels.warn_low):
        return WARNING
    return NORMAL


def judge(levels: Levels, state: Judgement, time: dt.datetime, value: float) -> Judgement:
    """The judgement after one more sample (samples of a source come in time order)."""
    now_level = raw_level(levels, value)
    warn_since = (state.warn_since or time) if now_level >= WARNING else None
    critical_since = (state.critical_since or time) if now_level >= CRITICAL else None
    held = NORMAL
    if critical_since is not None and time - critical_since >= levels.hold:
        held = CRITICAL
    elif warn_since is not None and time - warn_since >= levels.hold:
        held = WARNING
    level = state.level
    if held > level:
        level = held
    else:
        # Within the hysteresis band the level stays; past it, it falls to what the value is beyond.
        released = raw_level(levels, value, slack=levels.hysteresis)
        if released < level:
            level = released
    return replace(state, level=level, warn_since=warn_since, critical_since=critical_since)
