"""OptimizerService: runs solved from explicit inputs and stored with them, read back, replayed to the
same objective, and the schedule an edge follows now. Parses, checks access, delegates; the solve runs
in a worker thread so the event loop keeps serving."""

from __future__ import annotations

import datetime as dt
import os
import re
import uuid

import grpc
from emma.common.v1 import errors_pb2
from emma.optimizer.v1 import optimizer_pb2 as pb
from emma.optimizer.v1 import optimizer_pb2_grpc

from services.errors import ApiError, invalid_field, not_found
from services.identity import Access, caller, note_audit
from services.names import SiteName, parse_edge, parse_organization, parse_site
from services.optimizer import convert, store
from services.optimizer.assemble import assemble, fill_carbon, missing_inputs, quarter_hour
from services.optimizer.config import AssemblyConfig
from services.optimizer.errors import OptimizerInputError
from services.optimizer.inputs import SLOT, Problem
from services.optimizer.runs import solve_run, store_run
from services.optimizer.savings import realised_savings
from services.pagination import Page
from services.platform.idempotency import MAX_REQUEST_ID_CHARS
from services.platform.rpc import Context
from services.platform.runtime import Runtime
from services.registry import site_profile

MAX_SITES = 200
DEFAULT_HORIZON = dt.timedelta(hours=24)
MAX_HORIZON = dt.timedelta(hours=72)
MAX_SAVINGS_PERIOD = dt.timedelta(days=31)
_RUN = re.compile(r"organizations/([^/]+)/optimizationRuns/([0-9a-f-]{36})")


def _run_name(name: str, field: str = "name") -> tuple[str, uuid.UUID]:
    m = _RUN.fullmatch(name)
    if m is None:
        raise invalid_field(field, f"{name!r} is not organizations/{{organization}}/optimizationRuns/{{run}}")
    try:
        return m.group(1), uuid.UUID(m.group(2))
    except ValueError:
        raise invalid_field(field, f"{name!r} does not end in a run id") from None


def _request_id(value: str) -> str | None:
    if len(value) > MAX_REQUEST_ID_CHARS:
        raise invalid_field("request_id", f"at most {MAX_REQUEST_ID_CHARS} characters")
    return value or None


def _problem(inputs: pb.OptimizationInputs) -> Problem:
    try:
        return convert.problem(inputs)
    except OptimizerInputError as e:
        field = e.field if e.field.startswith("inputs.") else "inputs"
        raise invalid_field(field, str(e) if field == "inputs" else e.message) from None


def _message(
    stored: store.StoredRun, deliveries: dict[uuid.UUID, list[pb.ScheduleDelivery]] | None = None
) -> pb.OptimizationRun:
    """The run as the API shows it: the FULL view with `deliveries` (store.deliveries of it), else BASIC."""
    run = pb.OptimizationRun()
    run.CopyFrom(stored.result)
    if deliveries is not None:
        run.inputs.CopyFrom(stored.inputs)
        run.deliveries.extend(deliveries.get(stored.run_id, ()))
    else:
        del run.schedules[:]
    return run


class OptimizerServicer(optimizer_pb2_grpc.OptimizerServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._pool = runtime.pool
        self._assembly = AssemblyConfig.from_env(runtime.config.env or os.environ)

    async def RunOptimization(self, request: pb.RunOptimizationRequest, context: Context) -> pb.OptimizationRun:
        org = parse_organization(request.parent, "parent")
        if not 1 <= len(request.sites) <= MAX_SITES:
            raise invalid_field("sites", f"1 to {MAX_SITES} sites")
        sites = [parse_site(s, f"sites[{i}]") for i, s in enumerate(request.sites)]
        for i, s in enumerate(sites):
            if s.org != org:
                raise invalid_field(f"sites[{i}]", f"must be a site of {request.parent}")
        request_id = _request_id(request.request_id)
        if not request.HasField("inputs"):
            return await self._assembled_run(request, org, sites, request_id, context)
        inputs = pb.OptimizationInputs()
        inputs.CopyFrom(request.inputs)
        if request.objective:
            inputs.objective = request.objective
        if request.HasField("horizon") and request.horizon.ToTimedelta() != SLOT * inputs.slot_count:
            raise invalid_field("horizon", "must equal inputs.slot_count x 15 minutes when inputs are given")
        if sorted({s.site for s in inputs.sites}) != sorted(set(request.sites)):
            raise invalid_field("inputs.sites", "must describe exactly the request's sites")
        inputs.step.FromTimedelta(SLOT)
        # Inputs without a carbon intensity get the configured average of their sites (below, it needs
        # the registry); everything else is refused before any access check or query.
        carbon_later = (
            not inputs.prices.carbon_intensity_g_per_kwh
            and inputs.objective == pb.OPTIMIZATION_OBJECTIVE_COST_AND_CARBON
        )
        if not carbon_later:
            _problem(inputs)
        me = caller(context)
        me.require_org(org, Access.OPERATOR, resource=request.parent)
        note_audit(request.parent)
        async with self._pool.acquire() as conn:
            for s in sites:
                if await site_profile(conn, s) is None:
                    raise not_found(str(s))
            unfilled = await fill_carbon(conn, inputs, sites, self._assembly)
            if unfilled is not None:
                raise invalid_field("inputs.prices.carbon_intensity_g_per_kwh", unfilled)
            problem = _problem(inputs)
            if request_id is not None:
                previous = await store.run_of_request(conn, me.actor, request_id)
                if previous is not None:
                    return self._same_request(previous, inputs, request_id)
        return await self._run(org, list(request.sites), inputs, problem, None, me.actor, request_id)

    async def _assembled_run(
        self,
        request: pb.RunOptimizationRequest,
        org: str,
        sites: list[SiteName],
        request_id: str | None,
        context: Context,
    ) -> pb.OptimizationRun:
        """A run that names only its sites: its inputs come from the platform (assemble.py), from the
        current quarter hour on; anything the platform lacks is FAILED_PRECONDITION listing it."""
        horizon = request.horizon.ToTimedelta() if request.HasField("horizon") else DEFAULT_HORIZON
        if not SLOT <= horizon <= MAX_HORIZON or horizon % SLOT:
            raise invalid_field("horizon", "a whole number of 15-minute slots, 15 minutes to 72 hours")
        if request.objective not in convert.OBJECTIVES:
            raise invalid_field("objective", "unknown objective")
        me = caller(context)
        me.require_org(org, Access.OPERATOR, resource=request.parent)
        note_audit(request.parent)
        now = dt.datetime.now(dt.UTC)
        async with self._pool.acquire() as conn:
            if request_id is not None:
                previous = await store.run_of_request(conn, me.actor, request_id)
                if previous is not None:
                    if not previous.result.inputs_assembled or list(previous.result.sites) != list(request.sites):
                        raise ApiError(
                            grpc.StatusCode.ALREADY_EXISTS,
                            errors_pb2.ERROR_REASON_REQUEST_ID_REUSED,
                            f"request_id {request_id!r} was used for a different optimization",
                            metadata={"request_id": request_id},
                        )
                    return _message(previous, {})  # as the first answer: the run as made, before any delivery
            for s in sites:
                if await site_profile(conn, s) is None:
                    raise not_found(str(s))
            assembled = await assemble(
                conn,
                sites,
                start=quarter_hour(now),
                slots=horizon // SLOT,
                now=now,
                config=self._assembly,
                objective=request.objective,
            )
        if assembled.missing:
            raise missing_inputs(assembled.missing)
        try:
            problem = convert.problem(assembled.inputs)
        except OptimizerInputError as e:
            # Not the caller's input: what the platform holds (a forecast, a device's declaration) is
            # not usable as it is.
            raise missing_inputs([f"usable platform data: the assembled {e}"]) from None
        return await self._run(
            org, list(request.sites), assembled.inputs, problem, None, me.actor, request_id, assembled=True
        )

    @staticmethod
    def _same_request(previous: store.StoredRun, inputs: pb.OptimizationInputs, request_id: str) -> pb.OptimizationRun:
        if previous.inputs != inputs:
            raise ApiError(
                grpc.StatusCode.ALREADY_EXISTS,
                errors_pb2.ERROR_REASON_REQUEST_ID_REUSED,
                f"request_id {request_id!r} was used for a different optimization",
                metadata={"request_id": request_id},
            )
        return _message(previous, {})  # as the first answer: the run as made, before any delivery

    async def _run(
        self,
        org: str,
        sites: list[str],
        inputs: pb.OptimizationInputs,
        problem: Problem,
        replay_of: uuid.UUID | None,
        creator: str,
        request_id: str | None,
        *,
        assembled: bool = False,
    ) -> pb.OptimizationRun:
        run_id, run, infeasible = await solve_run(org, sites, inputs, problem, replay_of=replay_of, assembled=assembled)
        async with self._pool.acquire() as conn:
            await store_run(
                conn, run_id, run, inputs, problem, org=org, creator=creator, request_id=request_id, replay_of=replay_of
            )
        if infeasible is not None:
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                errors_pb2.ERROR_REASON_STATE_CONFLICT,
                f"the inputs admit no schedule: {infeasible}",
                metadata={"run": run.name, "conflicts": str(infeasible)[:1000]},
            )
        run.inputs.CopyFrom(inputs)
        return run

    async def GetOptimizationRun(self, request: pb.GetOptimizationRunRequest, context: Context) -> pb.OptimizationRun:
        org, run_id = _run_name(request.name)
        caller(context).require_org(org, resource=request.name)
        async with self._pool.acquire() as conn:
            found = await store.get_run(conn, org, run_id)
            sent = await store.deliveries(conn, [run_id]) if found is not None else {}
        if found is None:
            raise not_found(request.name)
        return _message(found, sent)

    async def ListOptimizationRuns(
        self, request: pb.ListOptimizationRunsRequest, context: Context
    ) -> pb.ListOptimizationRunsResponse:
        org = parse_organization(request.parent, "parent")
        page = Page.of("ListOptimizationRuns", request)
        site = str(parse_site(request.site, "site")) if request.site else None
        caller(context).require_org(org, resource=request.parent)
        full = request.view == pb.OPTIMIZATION_RUN_VIEW_FULL
        async with self._pool.acquire() as conn:
            rows = await store.list_runs(conn, org, site, page.offset, page.limit)
            shown = page.rows(rows)
            sent = await store.deliveries(conn, [r.run_id for r in shown]) if full else None
        return pb.ListOptimizationRunsResponse(
            optimization_runs=[_message(r, sent) for r in shown], next_page_token=page.next_token(rows)
        )

    async def ReplayOptimizationRun(
        self, request: pb.ReplayOptimizationRunRequest, context: Context
    ) -> pb.OptimizationRun:
        org, run_id = _run_name(request.name)
        request_id = _request_id(request.request_id)
        me = caller(context)
        me.require_org(org, Access.OPERATOR, resource=request.name)
        note_audit(request.name)
        async with self._pool.acquire() as conn:
            original = await store.get_run(conn, org, run_id)
            if original is None:
                raise not_found(request.name)
            if request_id is not None:
                previous = await store.run_of_request(conn, me.actor, request_id)
                if previous is not None:
                    return self._same_request(previous, original.inputs, request_id)
        problem = _problem(original.inputs)
        return await self._run(org, list(original.result.sites), original.inputs, problem, run_id, me.actor, request_id)

    async def GetActiveSchedule(self, request: pb.GetActiveScheduleRequest, context: Context) -> pb.ActiveSchedule:
        edge = parse_edge(request.edge, "edge")
        caller(context).require_org(edge.org, resource=request.edge)
        async with self._pool.acquire() as conn:
            found = await store.active_run(conn, str(edge.site_name), dt.datetime.now(dt.UTC))
            sent = await store.deliveries(conn, [found.run_id], request.edge) if found is not None else {}
        if found is None:
            raise not_found(f"{request.edge}: a valid schedule")
        inputs = found.inputs
        prefix = f"{request.edge}/devices/"
        out = pb.ActiveSchedule(
            edge=request.edge, run=found.result.name, start_time=inputs.start_time, step=inputs.step
        )
        out.valid_until_time.FromDatetime(inputs.start_time.ToDatetime(dt.UTC) + SLOT * inputs.slot_count)
        for s in found.result.schedules:
            if s.asset.startswith(prefix) or (s.kind == pb.ASSET_KIND_GRID and s.asset == str(edge.site_name)):
                out.schedules.append(s)
        (delivery,) = sent.get(found.run_id) or [
            pb.ScheduleDelivery(edge=request.edge, state=pb.SCHEDULE_DELIVERY_STATE_PENDING)
        ]
        out.delivery.CopyFrom(delivery)
        return out

    async def GetRealisedSavings(self, request: pb.GetRealisedSavingsRequest, context: Context) -> pb.RealisedSavings:
        org = parse_organization(request.parent, "parent")
        if not 1 <= len(request.sites) <= MAX_SITES:
            raise invalid_field("sites", f"1 to {MAX_SITES} sites")
        sites = [parse_site(s, f"sites[{i}]") for i, s in enumerate(request.sites)]
        for i, s in enumerate(sites):
            if s.org != org:
                raise invalid_field(f"sites[{i}]", f"must be a site of {request.parent}")
        if len(set(request.sites)) != len(request.sites):
            raise invalid_field("sites", "each site once")
        for field, has in (("start_time", request.HasField("start_time")), ("end_time", request.HasField("end_time"))):
            if not has:
                raise invalid_field(field, "required")
        start, end = request.start_time.ToDatetime(dt.UTC), request.end_time.ToDatetime(dt.UTC)
        for field, when in (("start_time", start), ("end_time", end)):
            if when != quarter_hour(when):
                raise invalid_field(field, "must be on a 15-minute boundary")
        if end <= start:
            raise invalid_field("end_time", "must be after start_time")
        if end - start > MAX_SAVINGS_PERIOD:
            raise invalid_field("end_time", f"the period is at most {MAX_SAVINGS_PERIOD.days} days")
        caller(context).require_org(org, resource=request.parent)
        async with self._pool.acquire() as conn:
            for s in sites:
                if await site_profile(conn, s) is None:
                    raise not_found(str(s))
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return await realised_savings(conn, sites, start, end, dt.datetime.now(dt.UTC), self._assembly)
