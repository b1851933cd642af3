"""Manual override: commands from the cloud, applied to output channels with a final ack.

Protocol (per writable channel `X`, e.g. `battery_1/SetActivePower`):

1. The uplink writes `Request(command_id, value, hold_s)` to `X/Request` (see `edge_daemon.commands`).
2. This controller re-validates the value against the effective limits of `X` (static and dynamic,
   e.g. MaxChargePower / MaxDischargePower, from this cycle's snapshot), because the cloud validated
   against telemetry that is seconds old.
3. Accepted: the value is written to `X` and held there for `hold_s` (default from the config), so
   lower-priority controllers cannot undo it next cycle. `value=None` releases the hold.
4. The request is cleared (compare-and-clear, so a newer request is never lost) and the final
   `Ack(command_id, EXECUTED, applied_value=...)` or `Ack(..., REJECTED, reason=..., code=AckReason...)`
   is written to `X/Ack`.

A command id that was already processed is never applied again; its earlier final ack is written
once more, because the cloud redelivers a command exactly when it missed that ack. The memory of
processed ids is bounded and in-memory: a restart forgets it (documented limitation).

This controller must be the last one (config enforces it): its acks promise that the value is what the
cycle commits, which only holds if no later controller can overwrite it.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass

from edge_daemon.channels import Ack, AckReason, AckStatus, Category, Request, ack_channel, request_channel
from edge_daemon.controllers.base import Controller, CycleContext
from edge_daemon.errors import LimitError
from edge_daemon.params import ParamReader

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ManualOverrideParams:
    default_hold_s: float = 900.0
    max_hold_s: float = 86_400.0
    remembered_commands: int = 4096


def parse_manual_override(r: ParamReader) -> ManualOverrideParams:
    max_hold = r.get_float("max_hold_s", 86_400.0, minimum=0, exclusive_min=True)
    return ManualOverrideParams(
        default_hold_s=r.get_float("default_hold_s", 900.0, minimum=0, maximum=max_hold, exclusive_min=True),
        max_hold_s=max_hold,
        remembered_commands=r.get_int("remembered_commands", 4096, minimum=1),
    )


@dataclass(slots=True)
class _Hold:
    command_id: str
    value: float
    until: float


class ManualOverride(Controller):
    type_name = "manual_override"

    def __init__(self, params: ManualOverrideParams | None = None) -> None:
        self.params = params or ManualOverrideParams()
        self.holds: dict[str, _Hold] = {}
        self._done: OrderedDict[str, tuple[str, Ack]] = OrderedDict()

    def step(self, ctx: CycleContext) -> None:
        for output in ctx.devices.outputs:
            cv = ctx.snapshot.get(request_channel(output))
            if cv is not None and isinstance(cv.value, Request):
                self._handle(ctx, output, cv.value)
        for output, hold in list(self.holds.items()):
            if ctx.now >= hold.until:
                del self.holds[output]
                log.info("manual override expired", extra={"command_id": hold.command_id, "channel": output})
                continue
            self._reassert(ctx, output, hold)

    def _handle(self, ctx: CycleContext, output: str, request: Request) -> None:
        ctx.store.clear(request_channel(output), expected=request)
        done = self._done.get(request.command_id)
        if done is not None:
            channel, ack = done
            log.info("duplicate command ignored", extra={"command_id": request.command_id, "channel": output})
            ctx.store.set(channel, ack, ts=ctx.now, category=Category.ACK)
            return
        try:
            ack = self._decide(ctx, output, request)
        except Exception as exc:
            # The request is already gone from its channel: without a final status here the cloud would
            # only learn of the failure from its own timeout.
            log.exception("command failed", extra={"command_id": request.command_id, "channel": output})
            ack = Ack(request.command_id, AckStatus.FAILED, f"internal error: {exc!r}", code=AckReason.EDGE_FAILED)
        self._remember(request.command_id, ack_channel(output), ack)
        ctx.store.set(ack_channel(output), ack, ts=ctx.now, category=Category.ACK)
        log.info(
            "command %s",
            ack.status.value,
            extra={
                "command_id": ack.command_id,
                "channel": output,
                "applied_value": ack.applied_value,
                "reason": ack.reason or None,
            },
        )

    def _decide(self, ctx: CycleContext, output: str, request: Request) -> Ack:
        cid = request.command_id
        if request.value is None:
            self.holds.pop(output, None)
            return Ack(cid, AckStatus.EXECUTED, "override released", None)
        value = request.value
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return Ack(cid, AckStatus.REJECTED, f"value {value!r} is not a finite number", code=AckReason.FIELD_INVALID)
        hold_s = self.params.default_hold_s if request.hold_s is None else request.hold_s
        if not 0 < hold_s <= self.params.max_hold_s:
            text = f"hold_s {hold_s:g} outside 0..{self.params.max_hold_s:g}"
            return Ack(cid, AckStatus.REJECTED, text, code=AckReason.FIELD_INVALID)
        try:
            limits = ctx.limits(output)
        except LimitError as exc:
            return Ack(cid, AckStatus.REJECTED, str(exc), code=_refusal(ctx, output, value))
        if value not in limits:
            text = f"{value:g} outside limits {limits.low:g}..{limits.high:g} of {output}"
            return Ack(cid, AckStatus.REJECTED, text, code=_refusal(ctx, output, value))
        self.holds[output] = _Hold(cid, float(value), ctx.now + hold_s)
        ctx.write(output, float(value))
        return Ack(cid, AckStatus.EXECUTED, "", float(value))

    def _reassert(self, ctx: CycleContext, output: str, hold: _Hold) -> None:
        try:
            limits = ctx.limits(output)
        except LimitError as exc:
            # The hold outlives a dying BMS only as long as its limits are known; then we let go and the
            # lower-priority controllers (which treat unknown limits as 0 W) take over.
            del self.holds[output]
            log.warning(
                "manual override dropped",
                extra={"command_id": hold.command_id, "channel": output, "reason": str(exc)},
            )
            return
        # Dynamic limits shrink as a battery fills or empties; the accepted command keeps running within
        # them rather than being reported as executed at a value the device will refuse.
        ctx.write(output, limits.clamp(hold.value))

    def _remember(self, command_id: str, channel: str, ack: Ack) -> None:
        self._done[command_id] = (channel, ack)
        while len(self._done) > self.params.remembered_commands:
            self._done.popitem(last=False)


def _refusal(ctx: CycleContext, output: str, value: float) -> AckReason:
    """Why a value the limits refused was refused: the channel's static range, or only this cycle's
    dynamic limits (which may also be unknown or stale)."""
    spec = ctx.devices.writable(output)[1]
    if (spec.minimum is not None and value < spec.minimum) or (spec.maximum is not None and value > spec.maximum):
        return AckReason.VALUE_OUT_OF_RANGE
    return AckReason.VALUE_EXCEEDS_DYNAMIC_LIMIT
