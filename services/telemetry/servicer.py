"""TelemetryService: latest values, history, the live stream and the channel list of a site."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import grpc
from emma.common.v1 import errors_pb2
from emma.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc

from services.errors import ApiError, invalid_field, not_found
from services.identity import auth_state_for, caller
from services.names import (
    EdgeName,
    Scope,
    SiteName,
    channel_resource,
    parse_channel,
    parse_scope,
    parse_site,
)
from services.pagination import Page
from services.platform.rpc import Context, set_timestamp, timestamp
from services.platform.runtime import Runtime
from services.platform.shared_reads import SharedReads
from services.registry import edge_pk, edges_of_site, site_location, site_time_zone
from services.telemetry import history
from services.telemetry.latest import SiteLatest
from services.telemetry.latest_answer import LatestAnswers
from services.telemetry.maintenance import TelemetryMaintenance
from services.telemetry.series import channels_of_edges, series_of_channel, series_of_edges

MAX_HISTORY_POINTS = 100_000
MAX_HISTORY_CHANNELS = 100
EXPORT_MIN_INTERVAL = dt.timedelta(minutes=15)
EXPORT_MAX_PERIOD = dt.timedelta(days=366)
# The widest bucket: a year of calendar days. Wider ones would start or end outside the years 1 to
# 9999 that datetimes (and protobuf Timestamps) can hold.
MAX_HISTORY_INTERVAL = dt.timedelta(days=366)


def _channel_resource(row: Any) -> str:
    """A latest-value or channel row (with its edge's ids) -> the channel's resource name."""
    return channel_resource(EdgeName(row["org_id"], row["site_id"], row["edge_id"]), row["channel"])


class TelemetryServicer(telemetry_pb2_grpc.TelemetryServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._pool = runtime.pool
        self.maintenance = TelemetryMaintenance(runtime.pool, runtime.config.ingest, rollups=True, retention=True)
        # Latest values in one query per call once a site's edges are known (services/telemetry/latest.py).
        self._site_latest = SiteLatest()
        # ListLatestValues calls of one parent that arrive together share one read, never one that
        # started before them (services/platform/shared_reads.py).
        self._latest_reads: SharedReads[Scope, _LatestRead] = SharedReads()
        self._latest_answers = LatestAnswers()

    async def start(self) -> None:
        await self.maintenance.start()

    async def stop(self) -> None:
        await self._latest_reads.stop()
        await self.maintenance.stop()

    async def _site_exists(self, org: str, site: str) -> str:
        """The site's time zone; NOT_FOUND when the site does not exist."""
        async with self._pool.acquire() as conn:
            tz = await site_time_zone(conn, SiteName(org, site))
        if tz is None:
            raise not_found(f"organizations/{org}/sites/{site}")
        return tz

    async def _latest(self, scope: Scope, channel_ids: set[str] | None = None) -> list[dict[str, Any]]:
        async with self._pool.acquire() as conn:
            edges, rows = await self._site_latest.read(conn, SiteName(scope.org, scope.site), scope.edge, scope.device)
        out = [{**dict(r), **_edge_columns(edges[r["edge_pk"]])} for r in rows]
        if channel_ids:
            out = [r for r in out if r["channel"].split("/", 1)[1] in channel_ids]
        return out

    @staticmethod
    def _latest_value(row: dict[str, Any]) -> telemetry_pb2.LatestValue:
        value = telemetry_pb2.LatestValue(channel=_channel_resource(row), value=row["value"], unit=row["unit"])
        set_timestamp(value.sample_time, row["time"])
        return value

    async def ListLatestValues(
        self, request: telemetry_pb2.ListLatestValuesRequest, context: Context
    ) -> telemetry_pb2.ListLatestValuesResponse:
        scope = parse_scope(request.parent)
        caller(context).require_org(scope.org, resource=request.parent)
        read = await self._latest_reads.get(scope, lambda: self._read_latest(scope))
        response = read.response
        if request.channel_ids:
            response = _only_channels(read, set(request.channel_ids))
        if not response.values:  # values prove the site exists; only an empty answer needs the check
            await self._site_exists(scope.org, scope.site)
        return response

    async def _read_latest(self, scope: Scope) -> _LatestRead:
        """One read of the parent's latest values, with the whole answer built once for every call that
        shares it (from the rows, or copied from the parent's previous answer when the rows are the same:
        services/telemetry/latest_answer.py), as this is the gateway's most frequent read. The calls
        sharing it are answered with this one message, which nobody changes afterwards."""
        async with self._pool.acquire() as conn:
            edges, rows = await self._site_latest.read(conn, SiteName(scope.org, scope.site), scope.edge, scope.device)
        # The server's clock once the values are read: every call sharing the read arrived before it.
        return _LatestRead(rows, self._latest_answers.answer(scope, edges, rows, dt.datetime.now(dt.UTC)))

    async def ListChannels(
        self, request: telemetry_pb2.ListChannelsRequest, context: Context
    ) -> telemetry_pb2.ListChannelsResponse:
        scope = parse_scope(request.parent)
        caller(context).require_org(scope.org, resource=request.parent)
        await self._site_exists(scope.org, scope.site)
        page = Page.of("ListChannels", request, default=100)
        async with self._pool.acquire() as conn:
            edges = await edges_of_site(conn, SiteName(scope.org, scope.site), scope.edge)
            found = await channels_of_edges(conn, list(edges), scope.device, page.offset, page.limit)
        rows = [{**dict(r), **_edge_columns(edges[r["edge_pk"]])} for r in found]
        channels = []
        for r in page.rows(rows):
            ch = telemetry_pb2.Channel(name=_channel_resource(r), unit=r["unit"])
            if r["first_time"] is not None:
                ch.first_sample_time.CopyFrom(timestamp(r["first_time"]))
            if r["last_time"] is not None:
                ch.last_sample_time.CopyFrom(timestamp(r["last_time"]))
            channels.append(ch)
        token = page.next_token(rows)
        return telemetry_pb2.ListChannelsResponse(channels=channels, next_page_token=token)

    async def QueryHistory(
        self, request: telemetry_pb2.QueryHistoryRequest, context: Context
    ) -> telemetry_pb2.QueryHistoryResponse:
        site = parse_site(request.site, "site")
        caller(context).require_org(site.org, resource=request.site)
        if not request.channels:
            raise invalid_field("channels", "name at least one channel")
        if len(request.channels) > MAX_HISTORY_CHANNELS:
            raise invalid_field("channels", f"at most {MAX_HISTORY_CHANNELS} channels per query")
        start, end, width = _period(request)
        if width and (
            width < dt.timedelta(minutes=1) or width % dt.timedelta(minutes=1) or width > MAX_HISTORY_INTERVAL
        ):
            raise ApiError(
                grpc.StatusCode.INVALID_ARGUMENT,
                errors_pb2.ERROR_REASON_HISTORY_INTERVAL_INVALID,
                f"interval must be a whole number of minutes, at most {MAX_HISTORY_INTERVAL.days} days "
                "(or unset for raw samples)",
                metadata={"interval_s": str(width.total_seconds())},
            )
        if width and (end - start) // width * len(request.channels) > MAX_HISTORY_POINTS:
            # Refused before the buckets are planned: a calendar plan lists every boundary, and a
            # century of minutes is not a list to build before counting it.
            raise _too_many((end - start) // width * len(request.channels))
        tz_name = await self._site_exists(site.org, site.site)
        channels = [parse_channel(c) for c in request.channels]
        for name, ch in zip(request.channels, channels, strict=True):
            if ch.edge.site_name != site:
                raise invalid_field("channels", f"{name} is not a channel of {request.site}")
        tz = ZoneInfo(tz_name) if request.align_to_site_time_zone else None
        p = _plan(start, end, width, tz) if width else None
        if p is not None and p.bucket_count * len(channels) > MAX_HISTORY_POINTS:
            raise _too_many(p.bucket_count * len(channels))

        response = telemetry_pb2.QueryHistoryResponse()
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            pks: dict[EdgeName, int | None] = {}
            for name, ch in zip(request.channels, channels, strict=True):
                if ch.edge not in pks:
                    pks[ch.edge] = await edge_pk(conn, ch.edge)
                pk = pks[ch.edge]
                found = None if pk is None else await series_of_channel(conn, pk, ch.address)
                if pk is None or found is None:
                    raise not_found(name)
                series_id, unit = found
                series = response.series.add(channel=name, unit=unit)
                if p is None:
                    points = await history.raw_points(conn, series_id, start, end, MAX_HISTORY_POINTS + 1)
                    if len(points) > MAX_HISTORY_POINTS:
                        raise _too_many(len(points))
                    for t, v in points:
                        series.points.add(time=timestamp(t), value=v, sample_count=1)
                    series.source = telemetry_pb2.HISTORY_SOURCE_RAW
                    continue
                buckets, source = await history.query_series(conn, series_id, pk, p, request.aggregation)
                for b in buckets:
                    series.points.add(time=timestamp(b.start), value=b.value, sample_count=b.count)
                series.source = source  # type: ignore[assignment]
        return response

    async def StreamLiveValues(
        self, request: telemetry_pb2.StreamLiveValuesRequest, context: Context
    ) -> AsyncIterator[telemetry_pb2.StreamLiveValuesResponse]:
        site = parse_site(request.site, "site")
        caller(context).require_org(site.org, resource=request.site)
        await self._site_exists(site.org, site.site)
        wanted = set(request.channels)
        seen: dict[int, dt.datetime] = {}
        interval = self._runtime.config.ingest.live_poll_interval_s
        first = True
        while True:
            rows = await self._latest(Scope(site.org, site.site))
            fresh = []
            for r in rows:
                value = self._latest_value(r)
                if wanted and value.channel not in wanted:
                    continue
                if seen.get(r["series_id"]) != r["time"]:
                    seen[r["series_id"]] = r["time"]
                    fresh.append(value)
            if fresh or first:
                yield telemetry_pb2.StreamLiveValuesResponse(values=fresh)
            first = False
            await asyncio.sleep(interval)

    async def ExportSiteTelemetry(
        self, request: telemetry_pb2.ExportSiteTelemetryRequest, context: Context
    ) -> AsyncIterator[telemetry_pb2.ExportSiteTelemetryResponse]:
        """Per-interval averages of every channel of the site; pseudonymized on request (GDPR)."""
        site = parse_site(request.site, "site")
        caller(context).require_org(site.org, resource=request.site)
        start, end, width = _period(request)
        if width < EXPORT_MIN_INTERVAL or width % dt.timedelta(minutes=1) or width > MAX_HISTORY_INTERVAL:
            raise invalid_field(
                "interval",
                f"must be a whole number of minutes, at least 15 minutes, at most {MAX_HISTORY_INTERVAL.days} days",
            )
        if end - start > EXPORT_MAX_PERIOD:
            raise invalid_field("end_time", f"export at most {EXPORT_MAX_PERIOD.days} days per call")
        async with self._pool.acquire() as conn:
            location = await site_location(conn, site)
            if location is None:
                raise not_found(request.site)
            edges = await edges_of_site(conn, site)
            series = [
                {**dict(r), "pk": r["edge_pk"], "edge_id": edges[r["edge_pk"]].edge}
                for r in await series_of_edges(conn, list(edges))
            ]
        pseudo = request.pseudonymize
        key = auth_state_for(self._runtime).config.pseudonym_key
        site_id = pseudonym(key, "site", str(site)) if pseudo else site.site
        lat, lon = location
        if pseudo:  # about 11 km: a region, not a house
            lat, lon = round(lat, 1), round(lon, 1)
        p = _plan(start, end, width, None)
        for s in series:
            device, channel_id = s["channel"].split("/", 1)
            if pseudo:
                device_ref = f"organizations/{site.org}/sites/{site.site}/edges/{s['edge_id']}/devices/{device}"
                channel = f"{pseudonym(key, 'device', device_ref)}/{channel_id}"
            else:
                channel = f"{s['edge_id']}/{s['channel']}"
            async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
                buckets, _ = await history.query_series(conn, s["id"], s["pk"], p, telemetry_pb2.AGGREGATION_AVERAGE)
            for b in buckets:
                yield telemetry_pb2.ExportSiteTelemetryResponse(
                    site_id=site_id,
                    latitude_deg=lat,
                    longitude_deg=lon,
                    channel=channel,
                    interval_start_time=timestamp(b.start),
                    average_value=b.value,
                    unit=s["unit"],
                )


@dataclass(frozen=True)
class _LatestRead:
    """A parent's latest-value rows and the answer with all of them, in the same order."""

    rows: list[Any]
    response: telemetry_pb2.ListLatestValuesResponse


def _only_channels(read: _LatestRead, wanted: set[str]) -> telemetry_pb2.ListLatestValuesResponse:
    """The answer narrowed to the channel ids asked for (ListLatestValuesRequest.channel_ids)."""
    response = telemetry_pb2.ListLatestValuesResponse()
    for r, value in zip(read.rows, read.response.values, strict=True):
        if r["channel"].split("/", 1)[1] in wanted:
            response.values.append(value)
    response.read_time.CopyFrom(read.response.read_time)
    return response


def _edge_columns(edge: EdgeName) -> dict[str, str]:
    return {"org_id": edge.org, "site_id": edge.site, "edge_id": edge.edge}


def pseudonym(key: bytes, kind: str, name: str) -> str:
    """A stable pseudonymous id: HMAC-SHA256 with the deployment's pseudonym key, so the same site or
    device gets the same id in every export while the id cannot be reversed without the key."""
    digest = hmac.new(key, f"{kind}:{name}".encode(), hashlib.sha256).hexdigest()
    return f"{kind}-{digest[:20]}"


def _period(request: Any) -> tuple[dt.datetime, dt.datetime, dt.timedelta]:
    """start_time, end_time (required, ordered) and interval (zero when unset) of a history or export."""
    if not request.HasField("start_time") or not request.HasField("end_time"):
        raise invalid_field("start_time", "start_time and end_time are required")
    start = request.start_time.ToDatetime(dt.UTC)
    end = request.end_time.ToDatetime(dt.UTC)
    if end <= start:
        raise invalid_field("end_time", "must be after start_time")
    width = request.interval.ToTimedelta() if request.HasField("interval") else dt.timedelta()
    return start, end, width


def _plan(start: dt.datetime, end: dt.datetime, width: dt.timedelta, tz: ZoneInfo | None) -> history.Plan:
    """history.plan, with a period whose outer buckets fall outside the years 1 to 9999 (a start in
    year 1, an end in 9999, a local time zone ahead of either) refused instead of overflowing."""
    try:
        return history.plan(start, end, width, tz)
    except OverflowError:
        raise invalid_field(
            "start_time", "the period's buckets would begin before year 1 or end after year 9999; narrow the period"
        ) from None


def _too_many(points: int) -> ApiError:
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        errors_pb2.ERROR_REASON_HISTORY_TOO_MANY_POINTS,
        f"the query would return {points} points; at most {MAX_HISTORY_POINTS}: use a coarser interval "
        "or a shorter period",
        metadata={"points": str(points), "max_points": str(MAX_HISTORY_POINTS)},
    )
