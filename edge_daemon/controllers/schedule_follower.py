"""Schedule follower: applies setpoint schedules from the cloud, with a safe mode when none is valid.

A `Schedule` is a list of entries `(channel, start, end, value)` with epoch-second validity
`start <= now < end`. The uplink hands a whole schedule over with `set_schedule`, which replaces the
previous one. Entries of one channel must not overlap, so the value at any instant is unambiguous.

Each cycle, every channel with a valid entry gets its value (clamped to the channel's effective limits
at that moment: the optimizer planned with yesterday's forecast, the BMS decides today). A channel
other than the battery setpoint whose entries have ended (a PV inverter's ActivePowerLimit, an EV
charger's or a flexible load's SetActivePower) is cleared, so a curtailment or a pause never outlives
the schedule that asked for it. When the
battery setpoint has no valid entry, because the schedule expired, never arrived or does not cover the
present, the configured safe mode takes over:

- `hold`: write `hold_w` (0 W by default: the battery idles).
- `self_consumption`: behave like the self-consumption controller.
- `defer`: write nothing, so lower-priority controllers keep control.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edge_daemon.channels import Category
from edge_daemon.controllers.base import Controller, CycleContext
from edge_daemon.controllers.self_consumption import safe_write, setpoint_for_grid
from edge_daemon.devices.site import SiteDevices
from edge_daemon.errors import LimitError, ScheduleError
from edge_daemon.params import ParamReader

log = logging.getLogger(__name__)

SAFE_MODE_CHANNEL = "_schedule/InSafeMode"


@dataclass(frozen=True, slots=True)
class ScheduleEntry:
    channel: str
    start: float
    end: float
    value: float


@dataclass(frozen=True, slots=True)
class Schedule:
    schedule_id: str
    entries: tuple[ScheduleEntry, ...]


class SafeMode(enum.Enum):
    HOLD = "hold"
    SELF_CONSUMPTION = "self_consumption"
    DEFER = "defer"


@dataclass(frozen=True, slots=True)
class ScheduleFollowerParams:
    battery: str
    safe_mode: SafeMode = SafeMode.HOLD
    grid_meter: str | None = None
    hold_w: float = 0.0
    max_entries: int = 10_000


def parse_schedule_follower(r: ParamReader) -> ScheduleFollowerParams:
    mode_name = r.get_str("safe_mode", SafeMode.HOLD.value)
    try:
        mode = SafeMode(mode_name)
    except ValueError:
        options = ", ".join(m.value for m in SafeMode)
        raise r.error("safe_mode", f"unknown safe mode {mode_name!r} (expected one of {options})") from None
    grid_meter = r.get_optional_str("grid_meter")
    if mode is SafeMode.SELF_CONSUMPTION and grid_meter is None:
        raise r.error("grid_meter", "required when safe_mode is self_consumption")
    return ScheduleFollowerParams(
        battery=r.get_str("battery"),
        safe_mode=mode,
        grid_meter=grid_meter,
        hold_w=r.get_float("hold_w", 0.0),
        max_entries=r.get_int("max_entries", 10_000, minimum=1),
    )


@dataclass(frozen=True, slots=True)
class _Compiled:
    schedule: Schedule
    # Per channel: entry start times (sorted, for bisect) and the entries in the same order.
    starts: Mapping[str, Sequence[float]]
    entries: Mapping[str, Sequence[ScheduleEntry]]


class ScheduleFollower(Controller):
    type_name = "schedule_follower"

    def __init__(self, params: ScheduleFollowerParams, devices: SiteDevices) -> None:
        self.params = params
        self.setpoint_channel = f"{params.battery}/SetActivePower"
        self._devices = devices
        self._writable = frozenset(devices.outputs)
        # Replaced by one reference assignment, which is atomic: the uplink may call set_schedule from
        # any thread and the cycle sees either the old or the new schedule, never a mix.
        self._compiled: _Compiled | None = None
        self.in_safe_mode: bool | None = None
        # What this follower last wrote to each channel it set, so it can hand a channel back when its
        # entries end (see _release).
        self._written: dict[str, float] = {}

    @property
    def schedule(self) -> Schedule | None:
        compiled = self._compiled
        return None if compiled is None else compiled.schedule

    def set_schedule(self, schedule: Schedule) -> None:
        """Validate and install `schedule`, replacing the current one. Raises ScheduleError."""
        self._compiled = self._compile(schedule)
        log.info(
            "schedule installed",
            extra={"schedule_id": schedule.schedule_id, "entries": len(schedule.entries)},
        )

    def clear_schedule(self) -> None:
        self._compiled = None

    def _compile(self, schedule: Schedule) -> _Compiled:
        if len(schedule.entries) > self.params.max_entries:
            raise ScheduleError(
                f"schedule has {len(schedule.entries)} entries, at most {self.params.max_entries} allowed"
            )
        grouped: dict[str, list[ScheduleEntry]] = {}
        for i, entry in enumerate(schedule.entries):
            if entry.channel not in self._writable:
                raise ScheduleError(f"entries[{i}]: {entry.channel} is not a writable channel")
            if not (math.isfinite(entry.start) and math.isfinite(entry.end) and entry.start < entry.end):
                raise ScheduleError(f"entries[{i}]: start must be before end")
            if not math.isfinite(entry.value):
                raise ScheduleError(f"entries[{i}]: value must be finite")
            found = self._devices.spec(entry.channel)
            assert found is not None
            spec = found[1]
            # Static limits never change, so a value beyond them is a planning error worth reporting;
            # dynamic limits are applied by clamping at run time.
            if (spec.minimum is not None and entry.value < spec.minimum) or (
                spec.maximum is not None and entry.value > spec.maximum
            ):
                raise ScheduleError(f"entries[{i}]: {entry.value:g} outside the static limits of {entry.channel}")
            grouped.setdefault(entry.channel, []).append(entry)
        for channel, entries in grouped.items():
            entries.sort(key=lambda e: e.start)
            for a, b in itertools.pairwise(entries):
                if b.start < a.end:
                    raise ScheduleError(f"{channel}: entries overlap at {b.start:.0f}")
        return _Compiled(
            schedule,
            {c: [e.start for e in es] for c, es in grouped.items()},
            {c: tuple(es) for c, es in grouped.items()},
        )

    def active_value(self, channel: str, now: float) -> float | None:
        compiled = self._compiled
        if compiled is None or channel not in compiled.starts:
            return None
        i = bisect.bisect_right(compiled.starts[channel], now) - 1
        if i < 0:
            return None
        entry = compiled.entries[channel][i]
        return entry.value if now < entry.end else None

    def step(self, ctx: CycleContext) -> None:
        compiled = self._compiled
        covered = False
        applied: set[str] = set()
        if compiled is not None:
            for channel in compiled.entries:
                value = self.active_value(channel, ctx.now)
                if value is None:
                    continue
                covered |= channel == self.setpoint_channel
                self._apply(ctx, channel, value)
                applied.add(channel)
        self._release(ctx, applied)
        if not covered:
            self._safe_mode(ctx)
        self._report(ctx, not covered)

    def _apply(self, ctx: CycleContext, channel: str, value: float) -> None:
        try:
            limits = ctx.limits(channel)
        except LimitError:
            safe_write(ctx, channel, None)
            self._written[channel] = ctx.writes[channel]
            return
        ctx.write(channel, limits.clamp(value))
        self._written[channel] = ctx.writes[channel]

    def _release(self, ctx: CycleContext, applied: set[str]) -> None:
        """Hand back every channel the schedule set that no valid entry covers now (the schedule expired,
        was replaced, or has a gap there): its value is cleared, so the device does what it does
        unmanaged (a PV inverter without a limit produces all it can, an EV charger or a flexible load
        without a setpoint runs at full power). A value someone else wrote since (a command's hold) stays.
        The battery setpoint is never released: the safe mode owns it."""
        for channel in [c for c in self._written if c not in applied]:
            value = self._written.pop(channel)
            if channel != self.setpoint_channel:
                ctx.store.clear(channel, expected=value)

    def _safe_mode(self, ctx: CycleContext) -> None:
        p = self.params
        if p.safe_mode is SafeMode.HOLD:
            safe_write(ctx, self.setpoint_channel, p.hold_w)
        elif p.safe_mode is SafeMode.SELF_CONSUMPTION:
            assert p.grid_meter is not None
            safe_write(ctx, self.setpoint_channel, setpoint_for_grid(ctx, p.battery, p.grid_meter, 0.0))

    def _report(self, ctx: CycleContext, safe: bool) -> None:
        if safe != self.in_safe_mode:
            self.in_safe_mode = safe
            ctx.store.set(SAFE_MODE_CHANNEL, safe, ts=ctx.now, category=Category.INPUT)
            log.info(
                "schedule follower %s",
                "in safe mode" if safe else "following schedule",
                extra={"safe_mode": self.params.safe_mode.value},
            )
