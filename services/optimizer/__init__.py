"""The optimizer: schedules for every battery, PV array, EV charger and flexible load of a site or a
community over 15-minute slots, solved with pyomo + HiGHS (docs/optimizer.md). The model (inputs.py,
checks.py, model.py, baseline.py, solve.py, plan.py) is pure: no I/O, no clock.
"""

from __future__ import annotations

from typing import Any

from emma.optimizer.v1 import optimizer_pb2, optimizer_pb2_grpc

from services.identity import Access
from services.optimizer.relay import ScheduleRelay, ScheduleSink
from services.platform.registration import ServiceSpec, Worker, service_spec
from services.platform.runtime import Runtime

# What other packages may use of optimizer; everything else in services/optimizer/ is private.
__all__ = ["DEPENDS_ON", "POLICY", "SERVICES", "TABLES", "ScheduleRelay", "ScheduleSink"]

# The services this domain may import (their package faces); see docs/architecture.md. The registry
# for a run's sites and their devices, telemetry for the measured state (state of charge, EV sessions,
# the grid exchange realised), the market for prices and the forecasts for load and PV.
DEPENDS_ON: tuple[str, ...] = ("identity", "registry", "telemetry", "market", "forecast")
# The tables this domain alone reads and writes (services/migrations/0013_optimizer.sql and
# 0017_optimizer_schedules.sql). EdgeLink delivers the plans through ScheduleRelay, as it delivers
# commands through the command domain's relay: the optimizer sits below EdgeLink.
TABLES: tuple[str, ...] = ("optimizer.runs", "optimizer.schedule_deliveries")


def _optimizer(runtime: Runtime) -> Any:
    from services.optimizer.servicer import OptimizerServicer

    return OptimizerServicer(runtime)


def _horizon(runtime: Runtime) -> Worker:
    # The receding horizon runs wherever the optimizer service runs; EMMA_OPTIMIZER_SCHEDULER=off leaves
    # it idle. Replicas take turns per set of sites through an advisory lock (horizon.py).
    from services.optimizer.horizon import horizon_of

    return horizon_of(runtime)


# The gRPC services this domain serves (services/catalog.py hosts them) and their background worker.
SERVICES: tuple[ServiceSpec, ...] = (
    service_spec(
        "optimizer",
        optimizer_pb2,
        "OptimizerService",
        optimizer_pb2_grpc.add_OptimizerServiceServicer_to_server,
        _optimizer,
        workers=(_horizon,),
    ),
)

_OPT = "/emma.optimizer.v1.OptimizerService/"
# Runs and schedules are their organization's data: members read them (VIEWER); a run costs CPU and
# a schedule steers devices, so running or replaying one is an operator's action.
POLICY: dict[str, Access] = {
    _OPT + "RunOptimization": Access.OPERATOR,
    _OPT + "GetOptimizationRun": Access.VIEWER,
    _OPT + "ListOptimizationRuns": Access.VIEWER,
    _OPT + "ReplayOptimizationRun": Access.OPERATOR,
    _OPT + "GetActiveSchedule": Access.VIEWER,
    _OPT + "GetRealisedSavings": Access.VIEWER,
}
