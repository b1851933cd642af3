"""One run, solved and stored: what RunOptimization, ReplayOptimizationRun and the receding-horizon
worker share. The solve runs in a worker thread so the event loop keeps serving."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

from emma.optimizer.v1 import optimizer_pb2 as pb

from core.metrics import record_solve
from services.optimizer import convert, store
from services.optimizer.errors import InfeasibleError, SolverError
from services.optimizer.inputs import SLOT, Problem
from services.optimizer.plan import Plan
from services.optimizer.solve import solve
from services.platform.migrations import Conn


async def solve_run(
    org: str,
    sites: list[str],
    inputs: pb.OptimizationInputs,
    problem: Problem,
    *,
    replay_of: uuid.UUID | None = None,
    assembled: bool = False,
    trigger_reason: str = "",
    created: dt.datetime | None = None,
) -> tuple[uuid.UUID, pb.OptimizationRun, InfeasibleError | None]:
    """Solve `problem` into a run message (not stored yet): SUCCEEDED with its plan, or FAILED with
    why. The solver's time is recorded as emma_optimizer_solve_duration_seconds{scope}. `created`: the
    run's create_time (default now; the receding horizon passes its own clock)."""
    run_id = uuid.uuid4()
    run = pb.OptimizationRun(name=f"organizations/{org}/optimizationRuns/{run_id}", sites=sites)
    run.create_time.FromDatetime(created or dt.datetime.now(dt.UTC))
    run.inputs_assembled = assembled
    run.trigger_reason = trigger_reason
    if replay_of is not None:
        run.replay_of = f"organizations/{org}/optimizationRuns/{replay_of}"
    infeasible: InfeasibleError | None = None
    try:
        plan: Plan = await asyncio.to_thread(solve, problem)
        convert.fill_run(run, plan)
        record_solve("community" if len(sites) > 1 else "site", plan.solve_s)
    except InfeasibleError as e:
        run.state = pb.OPTIMIZATION_RUN_STATE_FAILED
        run.failure_message = str(e)
        run.conflicts.extend(e.conflicts)
        infeasible = e
    except SolverError as e:
        run.state = pb.OPTIMIZATION_RUN_STATE_FAILED
        run.failure_message = str(e)
    return run_id, run, infeasible


async def store_run(
    conn: Conn,
    run_id: uuid.UUID,
    run: pb.OptimizationRun,
    inputs: pb.OptimizationInputs,
    problem: Problem,
    *,
    org: str,
    creator: str,
    request_id: str | None = None,
    replay_of: uuid.UUID | None = None,
) -> None:
    """Store the run (its inputs apart) and, when it succeeded and its horizon has not ended, tell the
    relay that its sites have a new plan (delivered when the caller's transaction commits)."""
    result = pb.OptimizationRun()
    result.CopyFrom(run)
    result.ClearField("inputs")
    end = problem.start + SLOT * problem.slots
    await store.save_run(
        conn,
        result,
        inputs,
        run_id=run_id,
        org=org,
        start=problem.start,
        end=end,
        replay_of=replay_of,
        creator=creator,
        request_id=request_id,
        assembled=run.inputs_assembled,
    )
    if run.state == pb.OPTIMIZATION_RUN_STATE_SUCCEEDED and end > dt.datetime.now(dt.UTC):
        # The edges of these sites follow the new plan from now on (ScheduleRelay).
        await store.announce_schedules(conn, list(run.sites))
