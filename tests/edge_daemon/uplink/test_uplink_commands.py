"""Commands and schedules over a real grpc.aio stream. The cloud's CommandService does not exist yet,
so a scriptable EdgeLink servicer (tests/support/uplink.py) sends EdgeCommand and Schedule
messages and records the edge's acks; the edge side is the real daemon with simulated devices."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from emma.common.v1 import types_pb2
from emma.edge.v1 import edge_link_pb2

from edge_daemon.daemon import EdgeDaemon
from edge_daemon.devices.battery import SimBattery
from edge_daemon.uplink import GrpcUplink, create_uplink
from edge_daemon.uplink.wire import timestamp
from tests.support.uplink import SETPOINT, FakeEdgeLink, fake_cloud, site_config, until

RECEIVED = edge_link_pb2.COMMAND_ACK_STATUS_RECEIVED
EXECUTED = edge_link_pb2.COMMAND_ACK_STATUS_EXECUTED
REJECTED = edge_link_pb2.COMMAND_ACK_STATUS_REJECTED
FAILED = edge_link_pb2.COMMAND_ACK_STATUS_FAILED
EDGE = "organizations/acme/sites/demo/edges/gw"


@dataclass
class Linked:
    fake: FakeEdgeLink
    daemon: EdgeDaemon
    uplink: GrpcUplink

    @property
    def battery(self) -> SimBattery:
        battery = self.daemon.devices.by_id["battery_1"]
        assert isinstance(battery, SimBattery)
        return battery

    def setpoint(self) -> object:
        cv = self.daemon.store.get(SETPOINT)
        return None if cv is None else cv.value

    async def command(self, name: str, value: float, *, channel: str = SETPOINT, ttl_s: float = 60) -> None:
        now = time.time()
        await self.fake.send(
            edge_link_pb2.ConnectResponse(
                command=edge_link_pb2.EdgeCommand(
                    name=f"{EDGE}/commands/{name}",
                    channel=channel,
                    value=value,
                    expire_time=timestamp(now + ttl_s),
                    create_time=timestamp(now),
                )
            )
        )

    def acks(self, name: str) -> list[edge_link_pb2.CommandAck]:
        return [a for _, a in self.fake.command_acks(f"{EDGE}/commands/{name}")]

    async def final_ack(self, name: str) -> edge_link_pb2.CommandAck:
        await until(lambda: any(a.status != RECEIVED for a in self.acks(name)), what=f"final ack of {name}")
        return next(a for a in self.acks(name) if a.status != RECEIVED)

    async def cycles(self, n: int) -> None:
        target = self.daemon.cycle.stats.cycles + n
        await until(lambda: self.daemon.cycle.stats.cycles >= target, what=f"{n} cycles")


@pytest.fixture
async def linked(tmp_path: Path) -> AsyncIterator[Linked]:
    fake = FakeEdgeLink()
    async with fake_cloud(fake) as server:
        config = site_config(tmp_path, endpoint=f"127.0.0.1:{server.port}", edge=EDGE, key="emma_test_key")
        uplink = create_uplink(config)
        daemon = EdgeDaemon(config, uplink=uplink)
        runner = asyncio.create_task(daemon.run())
        try:
            await until(lambda: fake.sessions == 1 and uplink.stats.connected, what="connected")
            yield Linked(fake, daemon, uplink)
        finally:
            daemon.stop()
            await asyncio.gather(runner, return_exceptions=True)


@pytest.fixture
def submissions() -> Iterator[list[str]]:
    """command_id of every submit_command that reached the daemon's request channels."""
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "command received":
                seen.append(str(getattr(record, "command_id", "")))

    handler = Keep()
    logger = logging.getLogger("edge_daemon.daemon")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)


async def test_command_reaches_the_device_and_the_final_ack_reports_the_applied_value(linked: Linked) -> None:
    await linked.command("c1", -1_000.0)
    final = await linked.final_ack("c1")
    assert [a.status for a in linked.acks("c1")] == [RECEIVED, EXECUTED]
    assert final.applied_value == -1_000.0 and final.reason == ""
    assert final.reason_code == edge_link_pb2.COMMAND_ACK_REASON_UNSPECIFIED
    assert final.HasField("ack_time")
    assert linked.setpoint() == -1_000.0
    await until(lambda: linked.battery.power_w == -1_000.0, what="battery charging at 1 kW")


async def test_out_of_limit_unknown_and_expired_commands_are_refused_with_reasons(linked: Linked) -> None:
    await linked.command("too-much", -20_000.0)
    final = await linked.final_ack("too-much")
    assert [a.status for a in linked.acks("too-much")] == [RECEIVED, REJECTED]
    assert final.reason == "VALUE_OUT_OF_RANGE"
    assert final.reason_code == edge_link_pb2.COMMAND_ACK_REASON_VALUE_OUT_OF_RANGE
    assert "outside limits" in final.message

    await linked.command("nowhere", 10.0, channel="battery_1/NoSuchChannel")
    final = await linked.final_ack("nowhere")
    assert [a.status for a in linked.acks("nowhere")] == [REJECTED]  # refused before RECEIVED
    assert final.reason == "CHANNEL_NOT_FOUND"
    assert final.reason_code == edge_link_pb2.COMMAND_ACK_REASON_CHANNEL_NOT_FOUND

    await linked.command("read-only", 10.0, channel="battery_1/Soc")
    assert (await linked.final_ack("read-only")).reason == "CHANNEL_NOT_WRITABLE"

    await linked.command("late", -500.0, ttl_s=-5)
    final = await linked.final_ack("late")
    assert [a.status for a in linked.acks("late")] == [FAILED]
    assert final.reason == "expired"
    assert final.reason_code == edge_link_pb2.COMMAND_ACK_REASON_EXPIRED
    await linked.cycles(3)
    assert linked.setpoint() != -500.0  # neither the expired nor the refused ones were applied


async def test_a_redelivered_command_is_answered_but_applied_once(linked: Linked, submissions: list[str]) -> None:
    await linked.command("first", -1_000.0)
    assert (await linked.final_ack("first")).status == EXECUTED
    await linked.command("second", -2_000.0)
    assert (await linked.final_ack("second")).status == EXECUTED
    await until(lambda: linked.setpoint() == -2_000.0, what="second applied")

    await linked.command("first", -1_000.0)  # the cloud missed the ack and delivers "first" again
    await until(lambda: len(linked.acks("first")) == 3, what="answer to the redelivery")
    assert [a.status for a in linked.acks("first")] == [RECEIVED, EXECUTED, EXECUTED]
    assert linked.acks("first")[-1].applied_value == -1_000.0
    await linked.cycles(5)
    assert linked.setpoint() == -2_000.0  # "first" did not come back
    assert submissions.count(f"{EDGE}/commands/first") == 1


async def test_a_final_ack_that_could_not_be_sent_goes_out_after_the_reconnect(linked: Linked) -> None:
    fake, journal = linked.fake, linked.uplink.commands
    assert journal is not None
    name = f"{EDGE}/commands/offline"

    # The stream dies right after RECEIVED arrives, and the cloud stays away for a while.
    def is_received(request: edge_link_pb2.ConnectRequest) -> bool:
        ack = request.command_ack
        return request.WhichOneof("message") == "command_ack" and ack.command == name and ack.status == RECEIVED

    fake.end_stream_when(is_received)
    fake.refuse = True
    await linked.command("offline", -1_500.0)
    await until(lambda: not linked.uplink.stats.connected, what="stream ended")

    async def settled() -> bool:
        record = await asyncio.to_thread(journal.journal.get, name)
        return record is not None and record.final

    await until(settled, what="final status journaled while offline")
    record = await asyncio.to_thread(journal.journal.get, name)
    assert record is not None and record.status == EXECUTED
    fake.refuse = False
    await until(lambda: fake.sessions >= 2, what="reconnected")
    if not record.final_unsent:
        # The ack was written to the dying stream just before it broke; the cloud, which never saw
        # it, redelivers the command (at least once), and the edge answers with the final status.
        await linked.command("offline", -1_500.0)
    await until(lambda: any(s >= 2 and a.status == EXECUTED for s, a in fake.command_acks(name)), what="ack")
    assert [a.status for s, a in fake.command_acks(name) if s == 1] == [RECEIVED]


async def test_schedule_is_accepted_and_followed_an_invalid_one_refused(linked: Linked) -> None:
    now = time.time()

    def schedule(schedule_id: str, value: float, **interval: object) -> edge_link_pb2.ConnectResponse:
        fields = {"start_time": timestamp(now - 1), "end_time": timestamp(now + 600), **interval}
        return edge_link_pb2.ConnectResponse(
            schedule=edge_link_pb2.Schedule(
                schedule_id=schedule_id,
                source="optimizer",
                expire_time=timestamp(now + 3600),
                intervals=[
                    edge_link_pb2.ScheduleInterval(
                        setpoints=[edge_link_pb2.ScheduleSetpoint(channel=SETPOINT, value=value)],
                        **fields,  # type: ignore[arg-type]
                    )
                ],
            )
        )

    await linked.fake.send(schedule("plan-1", -1_500.0))
    await until(lambda: linked.fake.schedule_acks("plan-1"), what="schedule ack")
    assert linked.fake.schedule_acks("plan-1")[0].accepted
    await until(lambda: linked.battery.power_w == -1_500.0, what="the follower applying the plan")

    await linked.fake.send(schedule("plan-2", 99_999.0))
    await until(lambda: linked.fake.schedule_acks("plan-2"), what="refusal")
    ack = linked.fake.schedule_acks("plan-2")[0]
    assert not ack.accepted and "outside the static limits" in ack.reason

    await linked.fake.send(schedule("plan-3", -100.0, end_time=timestamp(now - 10)))
    await until(lambda: linked.fake.schedule_acks("plan-3"), what="refusal")
    ack = linked.fake.schedule_acks("plan-3")[0]
    assert not ack.accepted and "start_time must be before end_time" in ack.reason

    await linked.cycles(3)
    assert linked.battery.power_w == -1_500.0  # the refused plans replaced nothing
    follower = linked.daemon.schedule_follower
    assert follower is not None and follower.schedule is not None
    assert follower.schedule.schedule_id == "plan-1"


async def test_hello_inventory_channel_table_and_heartbeats(linked: Linked) -> None:
    fake = linked.fake

    def seen(kind: str) -> bool:
        return any(r.WhichOneof("message") == kind for _, r in fake.received)

    await until(lambda: seen("heartbeat") and seen("telemetry_batch"), what="a heartbeat and a batch")
    hello = fake.hellos[0]
    assert (hello.edge, hello.api_key, hello.protocol_version) == (EDGE, "emma_test_key", 1)
    assert hello.agent_version and hello.HasField("edge_time")
    kinds = {d.device_id: types_pb2.DeviceKind.Name(d.kind) for d in hello.devices}
    assert kinds["battery_1"] == "DEVICE_KIND_BATTERY" and kinds["grid_1"] == "DEVICE_KIND_GRID_METER"
    battery = next(d for d in hello.devices if d.device_id == "battery_1")
    setpoint = next(c for c in battery.channels if c.name == "SetActivePower")
    assert (setpoint.min_value, setpoint.max_value, setpoint.unit) == (-5_000, 5_000, "W")
    assert setpoint.dynamic_max_channel == "MaxDischargePower"

    # Every batch only uses channels the session's table already had (Hello + earlier appends).
    table = {c.index: c.channel for c in hello.channel_table}
    batches = 0
    for _, request in fake.received:
        kind = request.WhichOneof("message")
        if kind == "channel_table_append":
            table.update({c.index: c.channel for c in request.channel_table_append.channels})
        elif kind == "telemetry_batch":
            batches += 1
            assert set(request.telemetry_batch.channel_indexes) <= set(table)
    assert batches > 0
    assert "edge.cycle/LatenessMs" in table.values() and "battery_1/Soc" in table.values()
    assert all(not c.startswith("_") for c in table.values())

    heartbeat = next(r.heartbeat for _, r in fake.received if r.WhichOneof("message") == "heartbeat")
    assert heartbeat.HasField("edge_time") and heartbeat.cycle_lateness_p99_ms >= 0

    # A reconnect announces the whole table and the last seq in Hello, and starts after the last stored.
    fake.end_stream_when(lambda r: r.WhichOneof("message") == "heartbeat")
    await until(lambda: fake.sessions >= 2, what="second session")
    second = fake.hellos[1]
    # The whole table so far, with the same indexes (channels appended in session 1 included).
    assert table.items() <= {c.index: c.channel for c in second.channel_table}.items()
    await until(lambda: any(s == 2 and r.telemetry_batch.batch_seq for s, r in fake.received), what="batch")
    resent = [r.telemetry_batch.batch_seq for s, r in fake.received if s == 2 and r.telemetry_batch.batch_seq]
    first = [r.telemetry_batch.batch_seq for s, r in fake.received if s == 1 and r.telemetry_batch.batch_seq]
    assert second.last_batch_seq >= max(first)
    # The Welcome said "stored up to max(first)": nothing is sent twice, nothing skipped, in order.
    assert resent == list(range(max(first) + 1, max(first) + 1 + len(resent)))
    assert first == list(range(1, len(first) + 1))
