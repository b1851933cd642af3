"""Queueing a cloud command onto a request channel: the edge half of the RECEIVED acknowledgement.

`submit_command` checks what can be checked without a cycle (the channel exists and is writable, the
value is a number), then writes `Request` to `<channel>/Request`. When it returns the uplink may send
RECEIVED; the final EXECUTED / REJECTED arrives later on `<channel>/Ack` (see
`controllers.manual_override`) and reaches the uplink through `ChannelStore.drain_acks()`.

A request channel holds one request. If a second command for the same channel arrives before a cycle
consumed the first, the first is superseded and gets a final REJECTED right away, so no command is ever
left without a final status.
"""

from __future__ import annotations

import math

from edge_daemon.channels import (
    Ack,
    AckReason,
    AckStatus,
    Category,
    ChannelStore,
    Request,
    ack_channel,
    request_channel,
)
from edge_daemon.devices.site import SiteDevices
from edge_daemon.errors import CommandError, NotWritableError


def submit_command(
    store: ChannelStore,
    devices: SiteDevices,
    channel: str,
    command_id: str,
    value: float | None,
    hold_s: float | None = None,
) -> Request | None:
    """Queue a command for `channel`. Returns the request it superseded, if any. Raises CommandError."""
    if not command_id:
        raise CommandError("command_id must not be empty")
    try:
        devices.writable(channel)
    except NotWritableError as exc:
        raise CommandError(str(exc)) from exc
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
    ):
        raise CommandError(f"value {value!r} is not a finite number")
    if hold_s is not None and not (math.isfinite(hold_s) and hold_s > 0):
        raise CommandError(f"hold_s {hold_s!r} must be a positive number of seconds")
    request = Request(command_id, None if value is None else float(value), hold_s)
    previous = store.swap(request_channel(channel), request, category=Category.REQUEST)
    displaced = previous.value if previous is not None else None
    if isinstance(displaced, Request) and displaced.command_id != command_id:
        store.set(
            ack_channel(channel),
            Ack(
                displaced.command_id,
                AckStatus.REJECTED,
                f"superseded by command {command_id}",
                code=AckReason.SUPERSEDED,
            ),
            category=Category.ACK,
        )
        return displaced
    return None
