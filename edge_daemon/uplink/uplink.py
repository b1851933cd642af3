"""GrpcUplink: the daemon's link to the cloud, run beside the control cycle (see daemon.Uplink).

Three things run for as long as the daemon does:
- the batch producer, which turns samples into outbox batches whether or not the cloud is reachable;
- the command-ack pump, which moves controllers' final acks into the command journal;
- the connection loop: one Session (stream) at a time, and between two of them a pause:
  * after a healthy session (welcomed and up for HEALTHY_SESSION_S) the backoff starts over;
  * UNAUTHENTICATED / PERMISSION_DENIED (bad, revoked or foreign key) and an unsupported protocol
    version are logged as errors on every attempt and retried every ~`auth_retry_s`: only an
    operator can fix them, by replacing the key file, which is re-read before each attempt;
  * everything else (UNAVAILABLE, SESSION_REPLACED, a dead connection, no Welcome in time) waits a
    jittered exponential backoff between `reconnect_min_s` and `reconnect_max_s`.

On shutdown (cancellation) the samples taken since the last batch are flushed into the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Final

import grpc

from core.tasks import stop_tasks
from edge_daemon.config import CloudConfig, SiteConfig
from edge_daemon.errors import EdgeError, SiteConfigError
from edge_daemon.uplink.backoff import Backoff
from edge_daemon.uplink.batches import BatchProducer
from edge_daemon.uplink.commands import CommandHandler
from edge_daemon.uplink.connection import agent_version, read_api_key, read_root_certificates
from edge_daemon.uplink.journal import CommandJournal
from edge_daemon.uplink.session import Session, SessionEnd, UplinkStats

if TYPE_CHECKING:
    from edge_daemon.daemon import EdgeDaemon

log = logging.getLogger(__name__)

HEALTHY_SESSION_S: Final = 10.0
PRUNE_INTERVAL_S: Final = 3600.0
_REFUSED: Final = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})


class GrpcUplink:
    def __init__(self, config: SiteConfig, cloud: CloudConfig, api_key: str) -> None:
        self.config = config
        self.cloud = cloud
        self.api_key = api_key
        self.root_certificates = read_root_certificates(cloud, config.source)
        self.agent_version = agent_version()
        self.stats = UplinkStats()
        self.producer: BatchProducer | None = None
        self.commands: CommandHandler | None = None
        self._started_time = time.time()
        self._first_run = True

    async def run(self, daemon: EdgeDaemon) -> None:
        outbox, registry = daemon.outbox, daemon.registry
        if outbox is None or registry is None:
            raise EdgeError("the uplink needs an open outbox and channel registry")
        journal = await asyncio.to_thread(CommandJournal, self.config.outbox.path, clock=daemon.clock)
        producer = BatchProducer(daemon, outbox, started_time=self._started_time if self._first_run else None)
        commands = CommandHandler(daemon, journal, daemon.clock)
        self.producer, self.commands = producer, commands
        try:
            if self._first_run:
                await commands.fail_unfinished()
                self._first_run = False
            tasks = [
                asyncio.create_task(producer.run(), name="uplink-batches"),
                asyncio.create_task(commands.pump(), name="uplink-command-acks"),
                asyncio.create_task(self._connect_loop(daemon, producer, commands), name="uplink-connect"),
                asyncio.create_task(self._prune(journal), name="uplink-journal-prune"),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            finally:
                await stop_tasks(tasks)
        finally:
            # Also on cancellation (daemon shutdown): what was measured goes to disk, and final acks
            # still in the channel store go to the journal, to be sent after the next start.
            with contextlib.suppress(Exception):
                await producer.flush()
            with contextlib.suppress(Exception):
                await commands.drain_acks()
            await asyncio.to_thread(journal.close)

    async def _connect_loop(self, daemon: EdgeDaemon, producer: BatchProducer, commands: CommandHandler) -> None:
        assert daemon.outbox is not None and daemon.registry is not None
        backoff = Backoff(self.cloud.reconnect_min_s, self.cloud.reconnect_max_s)
        while True:
            self.stats.attempts += 1
            session = Session(
                daemon=daemon,
                outbox=daemon.outbox,
                registry=daemon.registry,
                cloud=self.cloud,
                api_key=self._current_key(),
                agent_version=self.agent_version,
                producer=producer,
                commands=commands,
                stats=self.stats,
                root_certificates=self.root_certificates,
            )
            try:
                end = await session.run()
            except (grpc.aio.AioRpcError, OSError, EdgeError):
                log.exception("uplink session failed", extra={"endpoint": self.cloud.endpoint})
                end = None
            await asyncio.sleep(self._pause(end, backoff))

    def _pause(self, end: SessionEnd | None, backoff: Backoff) -> float:
        if end is None:
            return backoff.next_delay()
        status = end.status
        self.stats.last_end = status
        fields = {
            "endpoint": self.cloud.endpoint,
            "code": status.code_name,
            "reason": status.reason or None,
            "details": status.details or None,
            "session_id": self.stats.session_id if end.welcomed else None,
        }
        if end.welcomed and end.duration_s >= HEALTHY_SESSION_S:
            backoff.reset()
        refused = status.code in _REFUSED or status.reason == "PROTOCOL_VERSION_UNSUPPORTED"
        if refused:
            self.stats.auth_failures += 1
            delay = backoff.slow_delay(self.cloud.auth_retry_s)
            log.error(
                "THE CLOUD REFUSES THIS EDGE (%s): check [cloud] edge and the API key in %s; "
                "telemetry keeps accumulating in the outbox; retrying in %.0f s",
                status.reason or status.code_name,
                self.cloud.key_file,
                delay,
                extra=fields,
            )
            return delay
        delay = backoff.next_delay()
        if status.reason == "SESSION_REPLACED":
            log.warning(
                "another stream of this edge took over (a second daemon with the same key?); reconnecting in %.1f s",
                delay,
                extra=fields,
            )
        elif end.welcomed:
            log.warning("cloud stream ended; reconnecting in %.1f s", delay, extra=fields)
        else:
            log.warning("cannot connect to the cloud; retrying in %.1f s", delay, extra=fields)
        return delay

    def _current_key(self) -> str:
        """Re-read the key file (an operator may have replaced it); keep the last good key otherwise."""
        try:
            self.api_key = read_api_key(self.cloud, self.config.source)
        except SiteConfigError as exc:
            log.error("%s; using the key read earlier", exc)
        return self.api_key

    async def _prune(self, journal: CommandJournal) -> None:
        while True:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(journal.prune)
            await asyncio.sleep(PRUNE_INTERVAL_S)


def create_uplink(config: SiteConfig) -> GrpcUplink:
    """The uplink for a site with a [cloud] section. Raises SiteConfigError (e.g. an unreadable key file)."""
    if config.cloud is None:
        raise SiteConfigError(config.source, "cloud", "the uplink needs a [cloud] section")
    return GrpcUplink(config, config.cloud, read_api_key(config.cloud, config.source))
