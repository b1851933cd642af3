"""Fan-out of command state changes to WatchCommand streams: one LISTEN per process, not per stream.

Two sources feed a subscription. A NOTIFY (payload: the command id) says "something changed, re-read";
it reaches every process. A `Change` from this process's relay (services/command/local.py) carries the
committed transition itself, so the stream can show it without a round trip to the database and
without waiting for the NOTIFY; that NOTIFY still arrives and is then not worth a re-read, so each
local change accounts for one, whichever of the two arrives first (they come on different connections,
and the NOTIFY often wins). Whatever a stream cannot place (a change it missed one before) or any doubt
makes it re-read, and a re-read once a second covers a notification lost while LISTEN reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator

import asyncpg
from emma.command.v1 import command_pb2

from services.command import local, states, store
from services.command.local import Change
from services.command.transitions import EVENTS_CHANNEL
from services.names import EdgeName
from services.platform.notify import Listener
from services.platform.rpc import timestamp

# Watchers also re-read on this period, so a notification lost while LISTEN reconnects costs a second.
FALLBACK_POLL_S = 1.0
# How long a stream whose command's changes this process's relay publishes waits, woken by a NOTIFY
# alone, for that change's local copy before it re-reads the command instead (see wait_for_change).
LOCAL_CHANGE_WAIT_S = 0.005


class Subscription:
    def __init__(self) -> None:
        self._changed = asyncio.Event()
        self._changes: list[Change] = []
        self._forced = False
        self._local = False  # this process's relay has published changes of this command
        # Local changes published minus NOTIFYs received. Each local change commits its NOTIFY, so the two
        # cancel out whichever came first: above zero, that many NOTIFYs need no re-read when they come;
        # below zero, a NOTIFY no local change has accounted for (yet): the stream re-reads unless that
        # change's local copy arrives before the stream looks (its transaction's result and its NOTIFY
        # race on two connections). A NOTIFY wrongly taken for a local change's (one of another replica's,
        # just before a local one) is found by that local change's own NOTIFY, one later.
        self._balance = 0

    def notify(self, *, force: bool = False) -> None:
        """A NOTIFY for this command (or, with `force`, the LISTEN connection came back)."""
        if force:
            self._forced = True
        else:
            self._balance -= 1
            if self._balance >= 0:  # the NOTIFY of a change already published here
                return
        self._changed.set()

    def publish(self, change: Change) -> None:
        self._changes.append(change)
        self._balance += 1
        self._local = True
        self._changed.set()

    def forgive(self) -> None:
        """A local change was already shown (a re-read got there first): its NOTIFY came or will; if it
        came before this subscription, counting on it would swallow the next one, so do not (at worst
        one re-read too many)."""
        if self._balance > 0:
            self._balance -= 1

    async def wait_for_change(self) -> tuple[list[Change], bool]:
        """The local changes since the last call, and whether the stream must re-read the command."""
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns when the change was signalled just
        # as the stream was cancelled and drops the cancellation; the handler then ran on until its command
        # was final.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FALLBACK_POLL_S):
                await self._changed.wait()
        timed_out = not self._changed.is_set()
        if self._balance < 0 and self._local and not self._forced and not timed_out:
            # Woken by a NOTIFY no local change accounts for, on a command whose changes the relay of
            # this process publishes: PostgreSQL sends a transaction's NOTIFY before its result, so the
            # relay's copy of the change is usually a moment behind (it came after the NOTIFY in two
            # commands of three in the benchmark). Waiting a moment for it spares a re-read of the command
            # (0.5 ms and more, on the path of the answer); a change the relay does not publish (a cancel,
            # a timeout) is seen LOCAL_CHANGE_WAIT_S later.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LOCAL_CHANGE_WAIT_S):
                    while self._balance < 0 and not self._forced:
                        self._changed.clear()
                        await self._changed.wait()
        self._changed.clear()
        changes, self._changes = self._changes, []
        stale = self._forced or timed_out or self._balance < 0
        if stale:  # the re-read sees every change notified so far
            self._forced = False
            self._balance = max(0, self._balance)
        return changes, stale


def advance(command: command_pb2.Command, change: Change) -> command_pb2.Command | None:
    """The command after `change`, as a re-read would show it; None when `change` is not its next step
    (already shown, or one before it is missing)."""
    if states.from_proto(command.state) != change.from_state:
        return None
    after = command_pb2.Command()
    after.CopyFrom(command)
    after.state = states.to_proto(change.to_state)
    after.state_reason = change.reason
    after.applied_value = change.applied_value or 0.0
    after.update_time.CopyFrom(timestamp(change.time))
    after.transitions.append(
        command_pb2.CommandTransition(
            from_state=states.to_proto(change.from_state),
            to_state=states.to_proto(change.to_state),
            transition_time=timestamp(change.time),
            reason=change.reason,
            message=change.message,
        )
    )
    return after


def already_shown(command: command_pb2.Command, change: Change) -> bool:
    """States only move forward, so a change to a state no later than the command's is behind it."""
    return states.ORDER[change.to_state] <= states.ORDER[states.from_proto(command.state)]


def is_final(command: command_pb2.Command) -> bool:
    return states.from_proto(command.state) in states.FINAL


async def follow(
    pool: asyncpg.Pool, edge: EdgeName, command_id: uuid.UUID, command: command_pb2.Command, changes: Subscription
) -> AsyncIterator[tuple[command_pb2.Command, command_pb2.CommandTransition]]:
    """Each transition after `command` (as the database has it) with the command after it, until a final
    state. `changes` must have been subscribed before `command` was read, so nothing slips in between.

    WatchCommand streams these; CreateCommand with final_state_wait waits through them for the last.
    """
    while not is_final(command):
        local_changes, reread = await changes.wait_for_change()
        for change in local_changes:
            after = advance(command, change)
            if after is not None:
                command = after
                yield command, command.transitions[-1]
            elif already_shown(command, change):
                changes.forgive()
            else:  # a step in between is missing: the database has it
                reread = True
        if reread and not is_final(command):
            seen = len(command.transitions)
            async with pool.acquire() as conn:
                latest = await store.load(conn, command_id, edge=edge)
            assert latest is not None
            for transition in latest.transitions[seen:]:
                yield latest, transition
            command = latest


class CommandWatcher:
    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self._pool = pool
        self._subs: dict[uuid.UUID, set[Subscription]] = defaultdict(set)
        self._listener = Listener(dsn, [EVENTS_CHANNEL], self._on_notify, self._on_reconnect)

    async def start(self) -> None:
        await self._listener.start()
        local.hub(self._pool).changed = self.publish

    async def stop(self) -> None:
        hub = local.hub(self._pool)
        if hub.changed == self.publish:
            hub.changed = None
            local.leave(self._pool)
        await self._listener.stop()

    def publish(self, change: Change) -> bool:
        """A transition this process committed (the relay's), for the streams watching its command;
        whether any does."""
        subs = self._subs.get(change.command_id, ())
        for sub in subs:
            sub.publish(change)
        return bool(subs)

    def _on_notify(self, _channel: str, payload: str) -> None:
        try:
            command_id = uuid.UUID(payload)
        except ValueError:
            return
        for sub in self._subs.get(command_id, ()):
            sub.notify()

    async def _on_reconnect(self) -> None:
        for subs in self._subs.values():
            for sub in subs:
                sub.notify(force=True)

    @contextlib.asynccontextmanager
    async def subscribe(self, command_id: uuid.UUID) -> AsyncIterator[Subscription]:
        """Subscribe before reading the current state, so no change slips between read and wait."""
        sub = Subscription()
        self._subs[command_id].add(sub)
        try:
            yield sub
        finally:
            self._subs[command_id].discard(sub)
            if not self._subs[command_id]:
                del self._subs[command_id]
