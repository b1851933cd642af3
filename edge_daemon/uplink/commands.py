"""Command handler: EdgeCommand -> request channel, controller acks -> CommandAck, through the journal.

For every EdgeCommand (delivered at least once, so possibly again):
- already known by name -> its current status goes out again; the device never sees it twice;
- expire_time passed -> FAILED, reason "expired";
- unknown or read-only channel, or a value the request channel refuses -> REJECTED at once;
- otherwise it is journaled RECEIVED, then written to `<channel>/Request` (`daemon.submit_command`);
  the manual-override controller applies or rejects it in the next cycle and writes the final ack,
  which `pump` drains (`daemon.take_acks`) into the journal.

The handler never writes to a stream itself: it records acks in the journal and sets `changed`; the
current session sends whatever is unsent. Reasons are `AckReason`s, decided where the verdict is made
(here, in `submit_command` or by the controller); `message` carries the edge's text for people.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final

from emma.edge.v1 import edge_link_pb2

from core.logs import log_context
from edge_daemon.channels import Ack, AckEvent, AckReason, AckStatus
from edge_daemon.clock import Clock
from edge_daemon.errors import CommandError, NotWritableError
from edge_daemon.uplink.journal import (
    EXECUTED,
    FAILED,
    REJECTED,
    CommandJournal,
    PendingAck,
)
from edge_daemon.uplink.wire import seconds

if TYPE_CHECKING:
    from edge_daemon.daemon import EdgeDaemon

log = logging.getLogger(__name__)

ACK_POLL_S: Final = 0.05

_STATUS: Final = {AckStatus.EXECUTED: EXECUTED, AckStatus.REJECTED: REJECTED, AckStatus.FAILED: FAILED}


class CommandHandler:
    def __init__(self, daemon: EdgeDaemon, journal: CommandJournal, clock: Clock) -> None:
        self.daemon = daemon
        self.journal = journal
        self.clock = clock
        self.changed = asyncio.Event()

    async def on_command(self, command: edge_link_pb2.EdgeCommand) -> None:
        name = command.name
        if not name:
            log.warning("command without a name ignored", extra={"channel": command.channel})
            return
        with log_context(command_id=name):
            await self._handle(command)
        self.changed.set()

    async def _handle(self, command: edge_link_pb2.EdgeCommand) -> None:
        name, channel, value = command.name, command.channel, command.value
        journal = self.journal
        known = await asyncio.to_thread(journal.resend, name)
        if known is not None:
            log.info(
                "command redelivered; answering with its current status",
                extra={"channel": channel, "status": edge_link_pb2.CommandAckStatus.Name(known.status)},
            )
            return
        if command.HasField("expire_time") and seconds(command.expire_time) <= self.clock.time():
            await asyncio.to_thread(
                journal.decide,
                name,
                channel,
                value,
                FAILED,
                AckReason.EXPIRED.value,
                "the command expired before it arrived",
            )
            log.info("command expired", extra={"channel": channel})
            return
        try:
            self.daemon.devices.writable(channel)
        except NotWritableError as exc:
            reason = AckReason.CHANNEL_NOT_WRITABLE if exc.known else AckReason.CHANNEL_NOT_FOUND
            await asyncio.to_thread(journal.decide, name, channel, value, REJECTED, reason.value, str(exc))
            log.info("command rejected", extra={"channel": channel, "reason": reason.value})
            return
        # Journal first: a crash between the two leaves a RECEIVED that start-up turns into FAILED,
        # never a command that reached the device without a trace.
        await asyncio.to_thread(journal.receive, name, channel, value)
        try:
            self.daemon.submit_command(channel, name, value)
        except CommandError as exc:
            reason = AckReason.FIELD_INVALID
            await asyncio.to_thread(journal.finish, name, REJECTED, reason.value, str(exc))
            log.info("command rejected", extra={"channel": channel, "reason": reason.value})

    async def pump(self) -> None:
        """Move final acks from the channel store into the journal; never returns.

        Woken by the end of every control cycle (the only place controllers write final acks, apart
        from a superseded request, which `submit_command` acks at once), so an EXECUTED goes out right
        after the cycle that applied it instead of up to ACK_POLL_S later (a 100 ms cycle plus a 50 ms
        poll made RECEIVED -> EXECUTED 82-89 ms, not the half cycle the design costs). The poll stays as
        the fallback for acks written outside a cycle.
        """
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def hook(_ctx: object) -> None:
            # The cycle runs on the event loop (tests may run it from another thread): thread-safe either way.
            loop.call_soon_threadsafe(wake.set)

        hooks = self.daemon.cycle.hooks
        hooks.append(hook)
        try:
            while True:
                wake.clear()
                await self.drain_acks()
                # The poll sets the same event, and the pump awaits the event itself: asyncio.wait_for (Python
                # 3.11) returns the result when its awaitable finished just as the task was cancelled, and drops
                # the cancellation; a cycle ending in the same few loop steps as a shutdown then left the pump
                # running and the daemon waiting for it forever.
                poll = loop.call_later(ACK_POLL_S, wake.set)
                try:
                    await wake.wait()
                finally:
                    poll.cancel()
        finally:
            hooks.remove(hook)

    async def drain_acks(self) -> int:
        events = self.daemon.take_acks()
        for event in events:
            await self._final(event)
        if events:
            self.changed.set()
        return len(events)

    async def _final(self, event: AckEvent) -> None:
        ack = event.ack
        status = _STATUS[ack.status]
        with log_context(command_id=ack.command_id):
            known = await asyncio.to_thread(self.journal.get, ack.command_id)
            if known is None or known.final:
                log.debug("ack for a command the uplink did not submit or already settled")
                return
            reason = _reason(ack)
            record = await asyncio.to_thread(
                self.journal.finish, ack.command_id, status, reason, ack.reason, ack.applied_value
            )
            if record is None:
                return
            log.info(
                "command %s",
                edge_link_pb2.CommandAckStatus.Name(status).removeprefix("COMMAND_ACK_STATUS_").lower(),
                extra={"channel": record.channel, "applied_value": ack.applied_value, "reason": reason or None},
            )

    async def fail_unfinished(self) -> None:
        names = await asyncio.to_thread(
            self.journal.fail_unfinished,
            AckReason.EDGE_RESTARTED.value,
            "the edge daemon restarted before the command was applied",
        )
        for name in names:
            with log_context(command_id=name):
                log.warning("command failed: the daemon restarted before applying it")
        if names:
            self.changed.set()

    async def unsent(self) -> list[PendingAck]:
        return await asyncio.to_thread(self.journal.unsent)

    async def mark_sent(self, pending: PendingAck) -> None:
        await asyncio.to_thread(self.journal.mark_sent, pending.name, pending.status)
        with log_context(command_id=pending.name):
            log.info(
                "command ack sent",
                extra={"status": edge_link_pb2.CommandAckStatus.Name(pending.status)},
            )


def _reason(ack: Ack) -> str:
    """The journal's reason string for a controller's verdict (its text goes into `message`)."""
    if ack.status is AckStatus.EXECUTED:
        return ""
    if ack.code is not None:
        return ack.code.value
    # A verdict without a code (a controller that does not say why) is still refused or failed.
    return (AckReason.EDGE_FAILED if ack.status is AckStatus.FAILED else AckReason.EDGE_REJECTED).value
