"""`emma optimize replay RUN`: solve a stored optimisation run again from its stored inputs and show
that it reproduces the stored objective.

It goes through the API as `emma forecast run` does (a login as --email, the password from
EMMA_PASSWORD or a prompt), so the caller's role is checked (replaying is an operator's action) and the
replay is audited and stored as a run of its own (`replay_of` names the original). It prints the
original and the replay side by side; exit 0 when the objectives are equal to the last bit, 1 when they
differ, the replay failed or the cloud refused (one line naming the call and why).
"""

from __future__ import annotations

import argparse
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from emma.identity.v1 import identity_pb2, identity_pb2_grpc
from emma.optimizer.v1 import optimizer_pb2 as pb
from emma.optimizer.v1 import optimizer_pb2_grpc

from core.errors import ConfigError, EmmaError
from launcher.cloud_client import cloud_channel, failure_text, operator_password, tls_for

CALL_TIMEOUT_S = 120.0
_RUN = re.compile(r"organizations/[^/]+/optimizationRuns/[0-9a-f-]{36}")


class OptimizeCliError(EmmaError):
    """The cloud refused or could not be reached; the message says which call and why."""


def add_optimize_parser(sub: Any) -> None:
    optimize = sub.add_parser(
        "optimize",
        help="check optimisation runs",
        description="Optimisation runs of the cloud's OptimizerService (docs/optimizer.md).",
    )
    optimize_sub = optimize.add_subparsers(dest="optimize_command", metavar="TASK", parser_class=type(optimize))
    optimize_sub.required = True
    replay = optimize_sub.add_parser(
        "replay",
        help="solve a stored run again from its stored inputs and compare the objectives",
        description="Ask the cloud's OptimizerService to replay RUN (an operator's action): the stored inputs are "
        "solved again and stored as a new run. Prints the original and the replay; exit code 0 when the replay "
        "reproduces the stored objective exactly, 1 otherwise. Logs in as --email; the password comes from "
        "EMMA_PASSWORD, else a prompt on a terminal.",
    )
    replay.add_argument("run", metavar="RUN", help="organizations/{org}/optimizationRuns/{uuid}")
    replay.add_argument("--cloud", default="127.0.0.1:50051", help="the cloud's gRPC address (default 127.0.0.1:50051)")
    replay.add_argument("--email", required=True, help="an operator of the run's organization")
    replay.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="TLS to the cloud (default: off for 127.0.0.1/localhost, on otherwise)",
    )
    replay.add_argument("--ca-file", type=Path, help="CA certificate to trust for TLS (default: the system's)")
    replay.add_argument(
        "--request-id", help="idempotency key: the same id again returns the same replay (default: a new UUID)"
    )


def _state(run: pb.OptimizationRun) -> str:
    return pb.OptimizationRunState.Name(run.state).removeprefix("OPTIMIZATION_RUN_STATE_").lower()


def run_line(label: str, run: pb.OptimizationRun) -> str:
    """One run as a person reads it: name, state, objective (full precision), solver and gap."""
    if run.state != pb.OPTIMIZATION_RUN_STATE_SUCCEEDED:
        return f"{label}: {run.name} {_state(run)}: {run.failure_message}"
    proof = "optimal" if run.optimal else "not proven optimal"
    return (
        f"{label}: {run.name} {_state(run)} objective {run.objective_value!r} "
        f"(expected cost {run.expected.cost_eur:.4f} EUR, baseline {run.baseline.cost_eur:.4f} EUR; "
        f"{run.solver} {run.solver_version}, gap {run.mip_gap:.4%}, {proof})"
    )


async def replay_run(
    cloud: str,
    tls: bool,
    ca_file: Path | None,
    email: str,
    password: str,
    run_name: str,
    request_id: str,
    say: Callable[[str], None] = print,
) -> bool:
    """Replay `run_name`; True when the replay's objective equals the stored one exactly."""
    step = f"logging in as {email}"
    async with cloud_channel(cloud, tls, ca_file) as channel:
        try:
            login = await identity_pb2_grpc.IdentityServiceStub(channel).Login(
                identity_pb2.LoginRequest(email=email, password=password), timeout=CALL_TIMEOUT_S
            )
            auth = (("authorization", f"Bearer {login.access_token}"),)
            stub = optimizer_pb2_grpc.OptimizerServiceStub(channel)
            step = f"reading {run_name}"
            original = await stub.GetOptimizationRun(
                pb.GetOptimizationRunRequest(name=run_name), metadata=auth, timeout=CALL_TIMEOUT_S
            )
            step = f"replaying {run_name}"
            replay = await stub.ReplayOptimizationRun(
                pb.ReplayOptimizationRunRequest(name=run_name, request_id=request_id),
                metadata=auth,
                timeout=CALL_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as exc:
            raise OptimizeCliError(failure_text(step, exc, cloud)) from None
    say(run_line("original", original))
    say(run_line("replay", replay))
    same = (
        original.state == replay.state == pb.OPTIMIZATION_RUN_STATE_SUCCEEDED
        and original.objective_value == replay.objective_value
    )
    if same:
        say("reproduced: the objective is identical")
    elif replay.state == pb.OPTIMIZATION_RUN_STATE_SUCCEEDED and original.state == replay.state:
        say(f"NOT reproduced: the objective differs by {replay.objective_value - original.objective_value!r}")
    else:
        say("NOT reproduced: the runs did not both succeed")
    return same


async def run_optimize_cli(args: argparse.Namespace, env: dict[str, str]) -> int:
    if args.optimize_command != "replay":
        raise AssertionError(args.optimize_command)
    if _RUN.fullmatch(args.run) is None:
        raise ConfigError(f"RUN {args.run!r} is not organizations/{{organization}}/optimizationRuns/{{uuid}}")
    password = operator_password(env, args.email)
    request_id = args.request_id or str(uuid.uuid4())
    same = await replay_run(
        args.cloud, tls_for(args.cloud, args.tls), args.ca_file, args.email, password, args.run, request_id
    )
    return 0 if same else 1
