"""TelemetryService over real ingested data: latest values, history (raw, rollups, DST), live stream."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from zoneinfo import ZoneInfo

import asyncpg
import grpc
import pytest
from emma.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from google.protobuf import duration_pb2, timestamp_pb2
from grpc_status import rpc_status

from services.errors import error_info_of
from services.telemetry.maintenance import roll_up_closed_buckets
from tests.support.cloud import Host, new_edge
from tests.support.edge_client import EdgeStream, batch, hello
from tests.support.identity import authed_channel
from tests.support.telemetry_data import add_series, ingest_samples, raw_aggregates

UTC = dt.UTC
MADRID = ZoneInfo("Europe/Madrid")


def ts(t: dt.datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(t)
    return out


def minutes(n: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=60 * n)


async def _ingest(
    migrated_url: str, edge_pk: int, series_id: int, start: dt.datetime, count: int, step_s: int, seed: int = 1
) -> list[tuple[dt.datetime, float]]:
    pool = await asyncpg.create_pool(migrated_url, min_size=1, max_size=2, server_settings={"TimeZone": "UTC"})
    assert pool is not None
    try:
        return await ingest_samples(pool, edge_pk, series_id, start, count, step_s, seed)
    finally:
        await pool.close()


def _channel(edge: object, address: str) -> str:
    device, ch = address.split("/")
    return f"{edge}/devices/{device}/channels/{ch}"


async def test_history_from_rollups_equals_aggregates_of_raw_rows(
    host: Host, db: asyncpg.Connection, migrated_url: str, token: str
) -> None:
    edge, pk, _ = await new_edge(db, "history", time_zone="UTC")
    sid = await add_series(db, pk, "meter/GridPower")
    start = (dt.datetime.now(UTC) - dt.timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
    await _ingest(migrated_url, pk, sid, start, count=3 * 24 * 60, step_s=60)  # 3 days at 1 min
    channel = _channel(edge, "meter/GridPower")
    end = start + dt.timedelta(days=2)

    async with (
        host(["telemetry"], rollup_interval_s=0.1) as (server, _),
        authed_channel(server.port, token) as ch,
    ):
        stub = telemetry_pb2_grpc.TelemetryServiceStub(ch)
        # Before the rollup worker ran, answers come from raw rows and are already right.
        for width, agg, sql in [
            (15, telemetry_pb2.AGGREGATION_AVERAGE, "avg(value)"),
            (60, telemetry_pb2.AGGREGATION_MAXIMUM, "max(value)"),
            (60, telemetry_pb2.AGGREGATION_MINIMUM, "min(value)"),
            (45, telemetry_pb2.AGGREGATION_COUNT, "count(*)::float8"),
            (120, telemetry_pb2.AGGREGATION_LAST, "(array_agg(value ORDER BY time DESC))[1]"),
        ]:
            deadline = time.monotonic() + 30
            while (
                await db.fetchval(
                    "SELECT count(*) FROM telemetry.rollup_dirty WHERE edge_pk = $1 AND bucket < $2", pk, end
                )
                and time.monotonic() < deadline
            ):
                await asyncio.sleep(0.1)
            reply = await stub.QueryHistory(
                telemetry_pb2.QueryHistoryRequest(
                    site=str(edge.site_name),
                    channels=[channel],
                    start_time=ts(start),
                    end_time=ts(end),
                    interval=minutes(width),
                    aggregation=agg,
                )
            )
            series = reply.series[0]
            got = [(p.time.ToDatetime(UTC), p.value, p.sample_count) for p in series.points]
            want = await raw_aggregates(db, sid, start, end, width * 60, sql)
            assert len(got) == len(want) == (2 * 24 * 60) // width + (1 if (2 * 24 * 60) % width else 0)
            for (gt, gv, gn), (wt, wv, wn) in zip(got, want, strict=True):
                assert gt == wt
                assert gn == wn
                assert gv == pytest.approx(wv, rel=1e-12, abs=1e-9)
            expected_source = (
                telemetry_pb2.HISTORY_SOURCE_ROLLUP_1_HOUR
                if width % 60 == 0
                else telemetry_pb2.HISTORY_SOURCE_ROLLUP_15_MINUTES
            )
            assert series.source == expected_source
    # The worker really filled the rollups for the closed buckets.
    assert await db.fetchval("SELECT count(*) FROM telemetry.rollup_15m WHERE series_id = $1", sid) == 3 * 24 * 4
    assert await db.fetchval("SELECT count(*) FROM telemetry.rollup_1h WHERE series_id = $1", sid) == 3 * 24


async def test_rollups_are_recomputed_when_late_data_arrives(db: asyncpg.Connection, migrated_url: str) -> None:
    _, pk, _ = await new_edge(db, "late-data", time_zone="UTC")
    sid = await add_series(db, pk, "battery_1/Soc", "%")
    start = (dt.datetime.now(UTC) - dt.timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    await _ingest(migrated_url, pk, sid, start, count=30, step_s=60, seed=1)
    while await roll_up_closed_buckets(db, grace_s=0):
        pass
    first = await db.fetchrow("SELECT count, max_value FROM telemetry.rollup_1h WHERE series_id = $1", sid)
    assert first["count"] == 30
    # A late batch for the same hour (an edge coming back online) marks the buckets dirty again.
    late = await _ingest(migrated_url, pk, sid, start + dt.timedelta(seconds=30), count=30, step_s=60, seed=2)
    assert await db.fetchval("SELECT count(*) FROM telemetry.rollup_dirty WHERE edge_pk = $1", pk) >= 1
    while await roll_up_closed_buckets(db, grace_s=0):
        pass
    second = await db.fetchrow("SELECT count, max_value FROM telemetry.rollup_1h WHERE series_id = $1", sid)
    assert second["count"] == 60
    assert second["max_value"] >= max(v for _, v in late)


async def test_dst_days_in_madrid_have_23_and_25_hourly_buckets(
    host: Host, db: asyncpg.Connection, migrated_url: str, token: str
) -> None:
    edge, pk, _ = await new_edge(db, "madrid-dst", time_zone="Europe/Madrid")
    sid = await add_series(db, pk, "meter/GridPower")
    channel = _channel(edge, "meter/GridPower")
    # 2024's transitions: 31 March (02:00 -> 03:00, 23 h) and 27 October (03:00 -> 02:00, 25 h).
    for day, hours in ((dt.date(2024, 3, 31), 23), (dt.date(2024, 10, 27), 25)):
        await db.execute(
            "SELECT telemetry.ensure_partitions($1, $2)", day - dt.timedelta(days=1), day + dt.timedelta(days=1)
        )
        local_start = dt.datetime.combine(day, dt.time(), MADRID).astimezone(UTC)
        local_end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), MADRID).astimezone(UTC)
        assert local_end - local_start == dt.timedelta(hours=hours)
        await _ingest(migrated_url, pk, sid, local_start, count=hours * 4, step_s=900)
        # A long retention so the maintenance loop leaves 2024's partitions alone during the test.
        async with (
            host(["telemetry"], retention_days=5000) as (server, _),
            authed_channel(server.port, token) as ch,
        ):
            stub = telemetry_pb2_grpc.TelemetryServiceStub(ch)
            for interval, expected in (
                (60, [(local_start + dt.timedelta(hours=h), 4) for h in range(hours)]),
                (24 * 60, [(local_start, hours * 4)]),
            ):
                reply = await stub.QueryHistory(
                    telemetry_pb2.QueryHistoryRequest(
                        site=str(edge.site_name),
                        channels=[channel],
                        start_time=ts(local_start),
                        end_time=ts(local_end),
                        interval=minutes(interval),
                        aggregation=telemetry_pb2.AGGREGATION_COUNT,
                        align_to_site_time_zone=True,
                    )
                )
                points = [(p.time.ToDatetime(UTC), p.sample_count) for p in reply.series[0].points]
                assert points == expected
                assert {p.value for p in reply.series[0].points} == {float(n) for _, n in expected}


async def test_latest_values_live_stream_channels_and_bad_requests(
    host: Host, db: asyncpg.Connection, token: str
) -> None:
    edge, _, key = await new_edge(db, "live")
    async with host(["edge", "telemetry"], live_poll_interval_s=0.1) as (server, _):
        stream = EdgeStream(server.port)
        await stream.send(hello(str(edge), key))
        await stream.recv()
        now = time.time()
        await stream.send(batch(1, now - 1, [(0, 0, 55.0), (1, 0, -1200.0), (2, 0, 300.0)]))
        await stream.recv_ack()
        async with authed_channel(server.port, token) as ch:
            stub = telemetry_pb2_grpc.TelemetryServiceStub(ch)
            latest = await stub.ListLatestValues(telemetry_pb2.ListLatestValuesRequest(parent=str(edge.site_name)))
            assert {(v.channel.rsplit("/devices/", 1)[1], v.value, v.unit) for v in latest.values} == {
                ("battery_1/channels/Soc", 55.0, "%"),
                ("battery_1/channels/ActivePower", -1200.0, "W"),
                ("meter/channels/GridPower", 300.0, "W"),
            }
            assert all(abs(v.sample_time.ToDatetime(UTC).timestamp() - (now - 1)) < 0.01 for v in latest.values)
            device = await stub.ListLatestValues(
                telemetry_pb2.ListLatestValuesRequest(parent=f"{edge}/devices/battery_1", channel_ids=["Soc"])
            )
            assert [v.value for v in device.values] == [55.0]

            live = stub.StreamLiveValues(telemetry_pb2.StreamLiveValuesRequest(site=str(edge.site_name)))
            first = await asyncio.wait_for(live.read(), 10)
            assert len(first.values) == 3
            await stream.send(batch(2, time.time(), [(0, 0, 56.0)]))
            await stream.recv_ack()
            update = await asyncio.wait_for(live.read(), 10)
            assert [(v.channel.endswith("/Soc"), v.value) for v in update.values] == [(True, 56.0)]
            live.cancel()

            page1 = await stub.ListChannels(telemetry_pb2.ListChannelsRequest(parent=str(edge), page_size=2))
            page2 = await stub.ListChannels(
                telemetry_pb2.ListChannelsRequest(parent=str(edge), page_size=2, page_token=page1.next_page_token)
            )
            assert len(page1.channels) == 2
            assert len(page2.channels) == 1
            assert page2.next_page_token == ""
            assert page1.channels[0].HasField("first_sample_time")

            for request, code, reason in [
                (
                    telemetry_pb2.ListLatestValuesRequest(parent="organizations/acme/sites/nope"),
                    grpc.StatusCode.NOT_FOUND,
                    "RESOURCE_NOT_FOUND",
                ),
                (
                    telemetry_pb2.ListLatestValuesRequest(parent="sites/x"),
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "FIELD_INVALID",
                ),
                (
                    telemetry_pb2.ListChannelsRequest(parent=str(edge), page_token="garbage"),
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "PAGE_TOKEN_INVALID",
                ),
                (
                    telemetry_pb2.QueryHistoryRequest(
                        site=str(edge.site_name),
                        channels=[_channel(edge, "meter/GridPower")],
                        start_time=ts(dt.datetime(2020, 1, 1, tzinfo=UTC)),
                        end_time=ts(dt.datetime(2024, 1, 1, tzinfo=UTC)),
                        interval=minutes(1),
                    ),
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "HISTORY_TOO_MANY_POINTS",
                ),
                (
                    telemetry_pb2.QueryHistoryRequest(
                        site=str(edge.site_name),
                        channels=[_channel(edge, "meter/GridPower")],
                        start_time=ts(dt.datetime(2020, 1, 1, tzinfo=UTC)),
                        end_time=ts(dt.datetime(2020, 1, 2, tzinfo=UTC)),
                        interval=duration_pb2.Duration(seconds=90),
                    ),
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "HISTORY_INTERVAL_INVALID",
                ),
                (
                    telemetry_pb2.QueryHistoryRequest(
                        site=str(edge.site_name),
                        channels=[_channel(edge, "meter/Nope")],
                        start_time=ts(dt.datetime(2020, 1, 1, tzinfo=UTC)),
                        end_time=ts(dt.datetime(2020, 1, 2, tzinfo=UTC)),
                    ),
                    grpc.StatusCode.NOT_FOUND,
                    "RESOURCE_NOT_FOUND",
                ),
            ]:
                method = getattr(stub, type(request).__name__.removesuffix("Request"))
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await method(request)
                assert caught.value.code() == code
                status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
                assert status is not None
                info = error_info_of(status)
                assert info is not None
                assert info.reason == reason
        await stream.close()


async def test_latest_values_read_together_show_a_value_ingested_through_another_replica_at_once(
    host: Host, db: asyncpg.Connection, token: str
) -> None:
    """Calls of one site share reads (services/platform/shared_reads.py), never one older than the call:
    while a replica is kept busy with the site's latest values, a value acked by another replica's
    EdgeLink is in every answer to a call made after the ack, and likewise on the ingesting replica."""
    edge, _, key = await new_edge(db, "shared")
    parent = str(edge.site_name)
    request = telemetry_pb2.ListLatestValuesRequest(parent=parent, channel_ids=["Soc"])
    async with host(["edge", "telemetry"]) as (ingesting, _), host(["telemetry"]) as (reading, _):
        stream = EdgeStream(ingesting.port)
        await stream.send(hello(str(edge), key))
        await stream.recv()
        async with authed_channel(reading.port, token) as far, authed_channel(ingesting.port, token) as near:
            stubs = [telemetry_pb2_grpc.TelemetryServiceStub(c) for c in (far, near)]
            stop = asyncio.Event()

            async def keep_reading(stub: telemetry_pb2_grpc.TelemetryServiceStub) -> int:
                calls = 0
                while not stop.is_set():
                    await stub.ListLatestValues(request)
                    calls += 1
                return calls

            busy = [asyncio.ensure_future(keep_reading(s)) for s in stubs for _ in range(10)]
            try:
                for seq in range(1, 6):
                    soc = 50.0 + seq
                    await stream.send(batch(seq, time.time(), [(0, 0, soc)]))
                    assert (await stream.recv_ack()).batch_seq == seq
                    answers = await asyncio.gather(*(s.ListLatestValues(request) for s in stubs for _ in range(10)))
                    assert [[v.value for v in a.values] for a in answers] == [[soc]] * 20
            finally:
                stop.set()
                calls = await asyncio.gather(*busy)
            assert min(calls) > 0
        await stream.close()
