"""OptimizerService: runs solved from explicit inputs and stored with them, read back, replayed to the
same objective, and the schedule an edge follows now. Parses, checks access, delegates; the solve runs
in a worker thread so the event loop keeps serving."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import uuid

import grpc
from emma.common.v1 import errors_pb2
from emma.optimizer.v1 import optimizer_pb2 as pb
from emma.optimizer.v1 import optimizer_pb2_grpc

from services.errors import ApiError, invalid_field, not_found
from services.identity import Access, caller, note_audit
from services.names import parse_edge, parse_organization, parse_site
from services.optimizer import convert, store
from services.optimizer.errors import InfeasibleError, OptimizerInputError, SolverError
from services.optimizer.inputs import SLOT, Problem
from services.optimizer.plan import Plan
from services.optimizer.solve import solve
from services.pagination import Page
from services.platform.idempotency import MAX_REQUEST_ID_CHARS
from services.platform.rpc import Context
from services.platform.runtime import Runtime
from services.registry import site_profile

MAX_SITES = 200
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


def _message(stored: store.StoredRun, full: bool = True) -> pb.OptimizationRun:
    run = pb.OptimizationRun()
    run.CopyFrom(stored.result)
    if full:
        run.inputs.CopyFrom(stored.inputs)
    else:
        del run.schedules[:]
    return run


class OptimizerServicer(optimizer_pb2_grpc.OptimizerServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._pool = runtime.pool

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
            raise invalid_field(
                "inputs", "required in this release (assembling them from registry, market and forecasts comes later)"
            )
        inputs = pb.OptimizationInputs()
        inputs.CopyFrom(request.inputs)
        if request.objective:
            inputs.objective = request.objective
        if request.HasField("horizon") and request.horizon.ToTimedelta() != SLOT * inputs.slot_count:
            raise invalid_field("horizon", "must equal inputs.slot_count x 15 minutes when inputs are given")
        if sorted({s.site for s in inputs.sites}) != sorted(set(request.sites)):
            raise invalid_field("inputs.sites", "must describe exactly the request's sites")
        inputs.step.FromTimedelta(SLOT)
        problem = _problem(inputs)
        me = caller(context)
        me.require_org(org, Access.OPERATOR, resource=request.parent)
        note_audit(request.parent)
        async with self._pool.acquire() as conn:
            if request_id is not None:
                previous = await store.run_of_request(conn, me.actor, request_id)
                if previous is not None:
                    return self._same_request(previous, inputs, request_id)
            for s in sites:
                if await site_profile(conn, s) is None:
                    raise not_found(str(s))
        return await self._run(org, list(request.sites), inputs, problem, None, me.actor, request_id)

    @staticmethod
    def _same_request(previous: store.StoredRun, inputs: pb.OptimizationInputs, request_id: str) -> pb.OptimizationRun:
        if previous.inputs != inputs:
            raise ApiError(
                grpc.StatusCode.ALREADY_EXISTS,
                errors_pb2.ERROR_REASON_REQUEST_ID_REUSED,
                f"request_id {request_id!r} was used for a different optimization",
                metadata={"request_id": request_id},
            )
        return _message(previous)

    async def _run(
        self,
        org: str,
        sites: list[str],
        inputs: pb.OptimizationInputs,
        problem: Problem,
        replay_of: uuid.UUID | None,
        creator: str,
        request_id: str | None,
    ) -> pb.OptimizationRun:
        run_id = uuid.uuid4()
        run = pb.OptimizationRun(name=f"organizations/{org}/optimizationRuns/{run_id}", sites=sites)
        run.create_time.FromDatetime(dt.datetime.now(dt.UTC))
        if replay_of is not None:
            run.replay_of = f"organizations/{org}/optimizationRuns/{replay_of}"
        failure: ApiError | None = None
        try:
            plan: Plan = await asyncio.to_thread(solve, problem)
            convert.fill_run(run, plan)
        except InfeasibleError as e:
            run.state = pb.OPTIMIZATION_RUN_STATE_FAILED
            run.failure_message = str(e)
            run.conflicts.extend(e.conflicts)
            failure = ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                errors_pb2.ERROR_REASON_STATE_CONFLICT,
                f"the inputs admit no schedule: {e}",
                metadata={"run": run.name, "conflicts": str(e)[:1000]},
            )
        except SolverError as e:
            run.state = pb.OPTIMIZATION_RUN_STATE_FAILED
            run.failure_message = str(e)
        async with self._pool.acquire() as conn:
            await store.save_run(
                conn,
                run,
                inputs,
                run_id=run_id,
                org=org,
                start=problem.start,
                end=problem.start + SLOT * problem.slots,
                replay_of=replay_of,
                creator=creator,
                request_id=request_id,
            )
            still_valid = problem.start + SLOT * problem.slots > dt.datetime.now(dt.UTC)
            if run.state == pb.OPTIMIZATION_RUN_STATE_SUCCEEDED and still_valid:
                # The edges of these sites follow the new plan from now on (ScheduleRelay).
                await store.announce_schedules(conn, sites)
        if failure is not None:
            raise failure
        run.inputs.CopyFrom(inputs)
        return run

    async def GetOptimizationRun(self, request: pb.GetOptimizationRunRequest, context: Context) -> pb.OptimizationRun:
        org, run_id = _run_name(request.name)
        caller(context).require_org(org, resource=request.name)
        async with self._pool.acquire() as conn:
            found = await store.get_run(conn, org, run_id)
        if found is None:
            raise not_found(request.name)
        return _message(found)

    async def ListOptimizationRuns(
        self, request: pb.ListOptimizationRunsRequest, context: Context
    ) -> pb.ListOptimizationRunsResponse:
        org = parse_organization(request.parent, "parent")
        page = Page.of("ListOptimizationRuns", request)
        site = str(parse_site(request.site, "site")) if request.site else None
        caller(context).require_org(org, resource=request.parent)
        async with self._pool.acquire() as conn:
            rows = await store.list_runs(conn, org, site, page.offset, page.limit)
        full = request.view == pb.OPTIMIZATION_RUN_VIEW_FULL
        return pb.ListOptimizationRunsResponse(
            optimization_runs=[_message(r, full) for r in page.rows(rows)], next_page_token=page.next_token(rows)
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
        return out
