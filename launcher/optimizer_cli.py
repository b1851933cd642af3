"""`emma optimize replay RUN`: solve a stored optimisation run again from its stored inputs and show
that it reproduces the stored objective. `emma optimize savings`: what the plans saved in fact, per
site and for all the sites together, per day and over the period (GetRealisedSavings, one call per day).

It goes through the API as `emma forecast run` does (a login as --email, the password from
EMMA_PASSWORD or a prompt), so the caller's role is checked (replaying is an operator's action) and the
replay is audited and stored as a run of its own (`replay_of` names the original). It prints the
original and the replay side by side; exit 0 when the objectives are equal to the last bit, 1 when they
differ, the replay failed or the cloud refused (one line naming the call and why).

`savings` reads (a viewer's right): for each UTC day of [--from, --to) one GetRealisedSavings of all the
sites, printed as one row per site and one for all of them ("all sites", the slots every site compared),
then the period's sums. EUR and kg CO2 are measured grid exchange priced as the plan in force priced
it, next to the self-consumption baseline on the same measured consumption; slots without a plan or a
measurement are counted as missing, never as zero (docs/optimizer.md, "What the plans saved").
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from emma.identity.v1 import identity_pb2, identity_pb2_grpc
from emma.optimizer.v1 import optimizer_pb2 as pb
from emma.optimizer.v1 import optimizer_pb2_grpc

from core.errors import ConfigError, EmmaError
from launcher.cloud_client import cloud_channel, failure_text, operator_password, tls_for

CALL_TIMEOUT_S = 120.0
_RUN = re.compile(r"organizations/[^/]+/optimizationRuns/[0-9a-f-]{36}")
_SITE = re.compile(r"organizations/([^/]+)/sites/[^/]+")
MAX_DAYS = 366  # one call per day: a year at most per command
ALL_SITES = "all sites"


class OptimizeCliError(EmmaError):
    """The cloud refused or could not be reached; the message says which call and why."""


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


@dataclass
class Row:
    """One site (or all sites) over one day or the period: sums of what GetRealisedSavings reported."""

    slots: int = 0
    missing: int = 0
    realised_eur: float = 0.0
    planned_eur: float = 0.0
    baseline_eur: float = 0.0
    realised_kg: float = 0.0
    planned_kg: float = 0.0
    baseline_kg: float = 0.0

    def add(self, s: pb.SiteSavings) -> None:
        self.slots += s.slot_count
        self.missing += s.missing_slot_count
        self.realised_eur += s.realised.cost_eur
        self.planned_eur += s.planned.cost_eur
        self.baseline_eur += s.baseline.cost_eur
        self.realised_kg += s.realised.co2_kg
        self.planned_kg += s.planned.co2_kg
        self.baseline_kg += s.baseline.co2_kg

    @property
    def saved_eur(self) -> float:
        return self.baseline_eur - self.realised_eur

    @property
    def saved_kg(self) -> float:
        return self.baseline_kg - self.realised_kg


HEADER = (
    f"{'day':<10}  {'site':<40}  {'slots':>5}  {'missing':>7}  {'realised EUR':>12}  {'planned EUR':>11}  "
    f"{'baseline EUR':>12}  {'saved EUR':>9}  {'realised kg':>11}  {'baseline kg':>11}  {'saved kg':>8}"
)


def row_line(day: str, site: str, r: Row) -> str:
    """One row of the savings table; amounts to 4 decimals (a tenth of a cent, a tenth of a gram)."""
    return (
        f"{day:<10}  {site:<40}  {r.slots:>5}  {r.missing:>7}  {r.realised_eur:>12.4f}  {r.planned_eur:>11.4f}  "
        f"{r.baseline_eur:>12.4f}  {r.saved_eur:>9.4f}  {r.realised_kg:>11.4f}  {r.baseline_kg:>11.4f}  "
        f"{r.saved_kg:>8.4f}"
    )


def _day(value: str, flag: str) -> dt.datetime:
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{flag} {value!r} is not a day (YYYY-MM-DD)") from None
    return dt.datetime.combine(day, dt.time(0), tzinfo=dt.UTC)


def savings_days(first: str, last: str | None) -> list[dt.datetime]:
    """The UTC midnights of [first, last); one day when last is not given."""
    start = _day(first, "--from")
    end = _day(last, "--to") if last else start + dt.timedelta(days=1)
    if end <= start:
        raise ConfigError(f"--to {last} must be after --from {first}")
    days = (end - start).days
    if days > MAX_DAYS:
        raise ConfigError(f"at most {MAX_DAYS} days per command, got {days}")
    return [start + dt.timedelta(days=i) for i in range(days)]


async def realised_savings(
    cloud: str,
    tls: bool,
    ca_file: Path | None,
    email: str,
    password: str,
    sites: list[str],
    days: list[dt.datetime],
    say: Callable[[str], None] = print,
) -> None:
    """Print the savings table: each day's rows, then the period's."""
    org = _SITE.fullmatch(sites[0])
    assert org is not None
    parent = f"organizations/{org.group(1)}"
    period = {site: Row() for site in [*sites, ALL_SITES]}
    step = f"logging in as {email}"
    async with cloud_channel(cloud, tls, ca_file) as channel:
        try:
            login = await identity_pb2_grpc.IdentityServiceStub(channel).Login(
                identity_pb2.LoginRequest(email=email, password=password), timeout=CALL_TIMEOUT_S
            )
            auth = (("authorization", f"Bearer {login.access_token}"),)
            stub = optimizer_pb2_grpc.OptimizerServiceStub(channel)
            # Printed once every day was read: a refusal half-way is one line, not half a table.
            out = [HEADER]
            for day in days:
                step = f"reading the savings of {day.date()}"
                request = pb.GetRealisedSavingsRequest(parent=parent, sites=sites)
                request.start_time.FromDatetime(day)
                request.end_time.FromDatetime(day + dt.timedelta(days=1))
                got = await stub.GetRealisedSavings(request, metadata=auth, timeout=CALL_TIMEOUT_S)
                for s in [*got.sites, got.total]:
                    name = s.site or ALL_SITES
                    row = Row()
                    row.add(s)
                    period[name].add(s)
                    out.append(row_line(str(day.date()), name, row))
        except grpc.aio.AioRpcError as exc:
            raise OptimizeCliError(failure_text(step, exc, cloud)) from None
    out.extend(row_line("period", name, row) for name, row in period.items())
    for line in out:
        say(line)


async def run_optimize_cli(args: argparse.Namespace, env: dict[str, str]) -> int:
    if args.optimize_command == "savings":
        orgs = set()
        for site in args.sites:
            m = _SITE.fullmatch(site)
            if m is None:
                raise ConfigError(f"--site {site!r} is not organizations/{{organization}}/sites/{{site}}")
            orgs.add(m.group(1))
        if len(orgs) != 1:
            raise ConfigError(f"the sites must be of one organization, got {sorted(orgs)}")
        if len(set(args.sites)) != len(args.sites):
            raise ConfigError("each --site once")
        days = savings_days(args.first, args.last)
        password = operator_password(env, args.email)
        await realised_savings(
            args.cloud, tls_for(args.cloud, args.tls), args.ca_file, args.email, password, args.sites, days
        )
        return 0
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
