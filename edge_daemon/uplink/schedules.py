"""Schedule (emma.edge.v1) -> the schedule follower's Schedule, answered by a ScheduleAck.

Each interval x setpoint becomes one entry `(channel, start, end, value)`. An expire_time cuts entries
short (the edge must not apply a schedule after it), entries entirely after it are dropped, and a
schedule that has already expired is refused. Everything else (writable channel, static limits,
overlaps, size) is the follower's own validation; its ScheduleError becomes the refusal's reason.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from emma.edge.v1 import edge_link_pb2

from core.logs import log_context
from edge_daemon.controllers.schedule_follower import Schedule, ScheduleEntry
from edge_daemon.errors import ScheduleError
from edge_daemon.uplink.wire import seconds

if TYPE_CHECKING:
    from edge_daemon.daemon import EdgeDaemon

log = logging.getLogger(__name__)


def schedule_from_proto(message: edge_link_pb2.Schedule, now: float) -> Schedule:
    """Raises ScheduleError with a reason for people."""
    if not message.schedule_id:
        raise ScheduleError("schedule_id is required")
    expire = seconds(message.expire_time) if message.HasField("expire_time") else None
    if expire is not None and expire <= now:
        raise ScheduleError("the schedule expired before it arrived")
    entries: list[ScheduleEntry] = []
    for i, interval in enumerate(message.intervals):
        if not (interval.HasField("start_time") and interval.HasField("end_time")):
            raise ScheduleError(f"intervals[{i}]: start_time and end_time are required")
        start, end = seconds(interval.start_time), seconds(interval.end_time)
        if start >= end:
            raise ScheduleError(f"intervals[{i}]: start_time must be before end_time")
        if expire is not None:
            if start >= expire:
                continue
            end = min(end, expire)
        for j, setpoint in enumerate(interval.setpoints):
            if not setpoint.channel:
                raise ScheduleError(f"intervals[{i}].setpoints[{j}]: channel is required")
            entries.append(ScheduleEntry(setpoint.channel, start, end, setpoint.value))
    return Schedule(message.schedule_id, tuple(entries))


def apply_schedule(daemon: EdgeDaemon, message: edge_link_pb2.Schedule, now: float) -> edge_link_pb2.ScheduleAck:
    """Hand a schedule to the follower; the ack says whether it took it and, if not, why."""
    with log_context(schedule_id=message.schedule_id):
        try:
            daemon.set_schedule(schedule_from_proto(message, now))
        except ScheduleError as exc:
            log.warning("schedule refused: %s", exc, extra={"source": message.source})
            return edge_link_pb2.ScheduleAck(schedule_id=message.schedule_id, accepted=False, reason=str(exc))
        log.info(
            "schedule accepted",
            extra={"source": message.source, "intervals": len(message.intervals)},
        )
        return edge_link_pb2.ScheduleAck(schedule_id=message.schedule_id, accepted=True)
