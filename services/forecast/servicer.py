"""ForecastService: the latest forecast, past forecasts by issue time, a run on demand (idempotent by
request_id) and the accuracy of scored forecasts. Parses, checks access, delegates."""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg
import grpc
from emma.common.v1 import errors_pb2
from emma.forecast.v1 import forecast_pb2, forecast_pb2_grpc
from google.protobuf import duration_pb2

from services.errors import ApiError, invalid_field, not_found
from services.forecast import queries
from services.forecast.errors import ForecastInputError, MissingSiteData
from services.forecast.model import MAX_HORIZON_SLOTS, SLOT
from services.forecast.runner import run_site
from services.forecast.weather import SharedWeather, WeatherConfig
from services.identity import Access, caller, note_audit
from services.names import SiteName, parse_site
from services.pagination import Page
from services.platform.idempotency import MAX_REQUEST_ID_CHARS
from services.platform.migrations import Conn
from services.platform.rpc import Context
from services.platform.runtime import Runtime
from services.registry import site_profile

DEFAULT_SLOTS = 4 * 48
MAX_ACCURACY_RANGE = dt.timedelta(days=366)
DEFAULT_ACCURACY_RANGE = dt.timedelta(days=30)


def horizon_slots(horizon: duration_pb2.Duration, field: str) -> int:
    """A horizon as a number of slots: whole 15-minute slots, 900 s..72 h, else FIELD_INVALID."""
    seconds = horizon.ToTimedelta().total_seconds()
    slots = seconds / SLOT.total_seconds()
    if not (1 <= slots <= MAX_HORIZON_SLOTS) or slots != int(slots):
        raise invalid_field(field, f"must be a multiple of 900s from 900s to {MAX_HORIZON_SLOTS * 900}s (72 hours)")
    return int(slots)


def kind_of(kind: forecast_pb2.ForecastKind.ValueType, field: str = "kind") -> str:
    if kind not in queries.KINDS:
        raise invalid_field(field, "required: PV_POWER, SITE_LOAD or NET_LOAD")
    return queries.KINDS[kind]


def missing(exc: MissingSiteData, site: SiteName) -> ApiError:
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        errors_pb2.ERROR_REASON_STATE_CONFLICT,
        f"{exc}: set it with RegistryService.UpdateSite, or ask for SITE_LOAD alone",
        metadata={"site": str(site), "missing": exc.missing},
    )


class ForecastServicer(forecast_pb2_grpc.ForecastServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._pool = runtime.pool
        # Read once: a bad EMMA_WEATHER_* value stops the start-up instead of the first run.
        self._weather = WeatherConfig.from_env(runtime.config.env)
        # One HTTP client for every run of this process, closed when the process stops.
        self._source = SharedWeather.of(runtime, self._weather)

    async def GetLatestForecast(
        self, request: forecast_pb2.GetLatestForecastRequest, context: Context
    ) -> forecast_pb2.Forecast:
        site = parse_site(request.site, "site")
        kind = kind_of(request.kind)
        horizon = SLOT * horizon_slots(request.horizon, "horizon") if request.HasField("horizon") else None
        as_of = request.as_of_time.ToDatetime(dt.UTC) if request.HasField("as_of_time") else dt.datetime.now(dt.UTC)
        caller(context).require_org(site.org, resource=request.site)
        async with self._pool.acquire() as conn:
            if await site_profile(conn, site) is None:
                raise not_found(request.site)
            found = await queries.latest(conn, site, kind, as_of, horizon)
        if found is None:
            raise not_found(f"{request.site}: a {kind} forecast issued at or before {as_of.isoformat()}")
        return found

    async def ListForecasts(
        self, request: forecast_pb2.ListForecastsRequest, context: Context
    ) -> forecast_pb2.ListForecastsResponse:
        site = parse_site(request.parent, "parent")
        page = Page.of("ListForecasts", request)
        kind = kind_of(request.kind) if request.kind else None
        start = request.start_time.ToDatetime(dt.UTC) if request.HasField("start_time") else None
        end = request.end_time.ToDatetime(dt.UTC) if request.HasField("end_time") else None
        caller(context).require_org(site.org, resource=request.parent)
        async with self._pool.acquire() as conn:
            if await site_profile(conn, site) is None:
                raise not_found(request.parent)
            rows = await queries.list_forecasts(
                conn,
                site,
                kind,
                start,
                end,
                request.view == forecast_pb2.FORECAST_VIEW_FULL,
                page.offset,
                page.limit,
            )
        return forecast_pb2.ListForecastsResponse(forecasts=page.rows(rows), next_page_token=page.next_token(rows))

    async def RunForecast(self, request: forecast_pb2.RunForecastRequest, context: Context) -> forecast_pb2.ForecastRun:
        site = parse_site(request.site, "site")
        if not request.request_id:
            raise invalid_field("request_id", "required: a unique id (for example a UUID) per request")
        if len(request.request_id) > MAX_REQUEST_ID_CHARS:
            raise invalid_field("request_id", f"at most {MAX_REQUEST_ID_CHARS} characters")
        if len(request.kinds) > len(queries.KINDS):
            raise invalid_field("kinds", f"at most {len(queries.KINDS)} kinds")
        kinds = {kind_of(k, "kinds") for k in request.kinds} or set(queries.KINDS.values())
        slots = horizon_slots(request.horizon, "horizon") if request.HasField("horizon") else DEFAULT_SLOTS
        me = caller(context)
        me.require_org(site.org, Access.OPERATOR, resource=request.site)
        note_audit(request.site)
        async with self._pool.acquire() as conn:
            previous = await queries.run_of_request(conn, me.actor, request.request_id)
            if previous is not None:
                return await self._replay(conn, previous, site, kinds, slots, request.request_id)
            profile = await site_profile(conn, site)
        if profile is None:
            raise not_found(request.site)
        try:
            # No connection is held here: the run reads history, waits for the weather and runs the
            # models with connections of its own, each only as long as its query.
            run_id = await run_site(
                self._pool,
                profile,
                kinds,
                slots,
                self._weather,
                issue_time=dt.datetime.now(dt.UTC),
                trigger="on_demand",
                creator=me.actor,
                request_id=request.request_id,
                weather=self._source,
            )
        except MissingSiteData as exc:
            raise missing(exc, site) from None
        except ForecastInputError as exc:
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                errors_pb2.ERROR_REASON_STATE_CONFLICT,
                f"{request.site}: the site's description cannot be forecast: {exc}",
                metadata={"site": request.site, "missing": exc.field},
            ) from None
        except asyncpg.UniqueViolationError:
            # A concurrent call with the same request_id stored its run first: answer with that one.
            async with self._pool.acquire() as conn:
                previous = await queries.run_of_request(conn, me.actor, request.request_id)
                if previous is None:
                    raise
                return await self._replay(conn, previous, site, kinds, slots, request.request_id)
        async with self._pool.acquire() as conn:
            return await queries.run_message(conn, run_id)

    @staticmethod
    async def _replay(
        conn: Conn, run_id: uuid.UUID, site: SiteName, kinds: set[str], slots: int, request_id: str
    ) -> forecast_pb2.ForecastRun:
        """The stored run of a repeated request_id, or ALREADY_EXISTS REQUEST_ID_REUSED when the
        request asked for another site, other kinds or another horizon (the command domain's rule)."""
        stored = await queries.run_request(conn, run_id)
        if stored != (site, kinds, slots):
            raise ApiError(
                grpc.StatusCode.ALREADY_EXISTS,
                errors_pb2.ERROR_REASON_REQUEST_ID_REUSED,
                f"request_id {request_id!r} was used for a different forecast run",
                metadata={"request_id": request_id},
            )
        return await queries.run_message(conn, run_id)

    async def GetForecastAccuracy(
        self, request: forecast_pb2.GetForecastAccuracyRequest, context: Context
    ) -> forecast_pb2.ForecastAccuracy:
        site = parse_site(request.site, "site")
        kind = kind_of(request.kind)
        end = request.end_time.ToDatetime(dt.UTC) if request.HasField("end_time") else dt.datetime.now(dt.UTC)
        if request.HasField("start_time"):
            start = request.start_time.ToDatetime(dt.UTC)
        elif end - dt.datetime.min.replace(tzinfo=dt.UTC) < DEFAULT_ACCURACY_RANGE:
            # The default range would start before year 1, which a datetime cannot hold.
            raise invalid_field("end_time", "without start_time must be at least 30 days after 0001-01-01")
        else:
            start = end - DEFAULT_ACCURACY_RANGE
        if not start < end or end - start > MAX_ACCURACY_RANGE:
            raise invalid_field("end_time", "must be after start_time and at most 366 days after it")
        caller(context).require_org(site.org, resource=request.site)
        async with self._pool.acquire() as conn:
            if await site_profile(conn, site) is None:
                raise not_found(request.site)
            bands = await queries.accuracy_bands(conn, site, kind, start, end)
        response = forecast_pb2.ForecastAccuracy(site=request.site, kind=request.kind, bands=bands)
        response.start_time.FromDatetime(start)
        response.end_time.FromDatetime(end)
        return response
