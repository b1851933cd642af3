"""Command round trip: CreateCommand -> EXECUTED visible to the caller, open loop, p50/p99.

    python -m bench.commands [--quick] [--runs 3] [--samples 1000] [--rate 20] [--lines idle,two_calls,edge,load]
                             [--output FILE]

`emma serve edge command identity` runs as its own process, every edge as a process of its own
(bench.command_edge), the callers in this process. Each command is *due* at a fixed time (open loop:
`--rate` commands per second in total, spread evenly over `--callers` logged-in users so none passes
the 10 commands/s rate limit) and is started then, whether or not earlier ones have finished; its
latency runs from when it was due to when the caller sees EXECUTED, so a stall of the server (or of
this process) is counted for every command it delays (no coordinated omission). Commands are sent at
their due time to within the loop's turn (bench.harness.until_due), not up to a millisecond late as a
plain asyncio sleep would; each line reports how late this process sent (`sent_late_*`).

The caller sees the outcome one of two ways. "wait": one CreateCommand with `final_state_wait` (10 s),
whose answer is the final command. "two calls": CreateCommand, then WatchCommand until its first
message that shows a final state (the stream's end, its status, follows and is not waited for).

Four lines per run, each with `--samples` commands after 20 unmeasured warm-up commands:

- idle: a simulated edge that answers RECEIVED and EXECUTED at once (bench.command_edge), "wait";
- idle_two_calls: the same edge, "two calls". The two idle lines are measured together, their commands
  alternating on one schedule (`--rate` in total, half each), so both meet the same moments of this
  shared machine and their difference is the way of calling, not the minute they ran in;
- edge_daemon ("wait"): the real edge daemon (demo site) at a `--cycle` (100 ms) control cycle, `--edge-rate`
  (8) commands per second. Commands are applied at cycle boundaries, so this line includes the wait
  for the next cycle (half a cycle on average, by design); a command the next one superseded within
  the same cycle ends REJECTED_BY_EDGE and is counted under errors;
- under_1000_edge_load ("wait"): the simulated edge again while 1,000 simulated edge streams each send
  one 50-point batch per second (the ingest fleet load), after their connection storm (8 s).

Each line also gives CreateCommand's own latency (due -> response) and, from the command's stored
transitions, the median time between its waypoints (due -> QUEUED -> DELIVERED -> RECEIVED ->
EXECUTED -> seen by the caller), which is where the time goes. After the idle lines, the references:
health checks on the same server, channels and open loop (no database, no auth), from when each was
due to the first answer (the floor of one call, the "wait" line's) and to the second, sent after the
first (the floor of two calls, the two-call line's); then the command floor (bench.command_floor): the
same process hops and durable commits as a command (caller -> server, a row INSERTed and committed ->
the edge's stream -> its answer -> the row UPDATEd and committed -> the caller) with none of EMMA's logic,
on the same open loop, and each idle line over it (`over_floor_p50`, run by run). Every run starts a
fresh cloud process; `--runs` runs give the spread (median, min, max of each run's p50 and p99 at the top).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from emma.command.v1 import command_pb2, command_pb2_grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from bench.harness import (
    BENCH_ENV,
    cloud_process,
    database,
    login,
    migrate,
    percentile,
    print_and_write,
    stop_processes,
    summary,
    until_due,
    write_result,
)
from bench.ingest import provision, run_generators
from bench.machine import describe

S = command_pb2
WARM_UP = 20
STAGES = ("QUEUED", "DELIVERED", "RECEIVED", "EXECUTED")
# CreateCommand's final_state_wait on the "wait" lines: far above any round trip here, so a command that
# is not EXECUTED in the answer counts as an error, not as a latency.
FINAL_STATE_WAIT_S = 10
FINAL = {S.COMMAND_STATE_EXECUTED, S.COMMAND_STATE_REJECTED_BY_EDGE, S.COMMAND_STATE_FAILED, S.COMMAND_STATE_CANCELLED}


@contextlib.asynccontextmanager
async def edge_process(port: int, edge: str, key: str, daemon_period_s: float | None) -> AsyncIterator[None]:
    """bench.command_edge in a process of its own, until it said "ready"."""
    extra = ["--daemon", str(daemon_period_s)] if daemon_period_s else []
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.command_edge",
        "--port",
        str(port),
        "--edge",
        edge,
        "--key",
        key,
        *extra,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(60):  # its imports take a while
            line = await proc.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"the edge did not start: {line!r}")
        yield
    finally:
        await stop_processes([proc])


async def fresh_limits(dsn: str, edge: str, timeout_s: float = 60) -> None:
    """Wait until the cloud holds the edge's battery limits, stamped within the last 5 s."""
    edge_id = edge.rsplit("/", 1)[1]
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            fresh = await conn.fetchval(
                """SELECT count(*) FROM telemetry.latest l JOIN telemetry.series s ON s.id = l.series_id
                   JOIN app.edges e ON e.pk = s.edge_pk
                   WHERE e.edge_id = $1 AND s.channel LIKE 'battery_1/Max%Power'
                     AND l.time > now() - interval '5 seconds'""",
                edge_id,
            )
            if fresh == 2:
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"no fresh battery limits from {edge} within {timeout_s:.0f} s")
    finally:
        await conn.close()


def error_reason(exc: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a refused call ("" when it has none)."""
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


Outcome = tuple[dict[str, list[float]], collections.Counter[str], list[tuple[uuid.UUID, float, float]]]


async def each_then_close(
    one: Callable[[int], Awaitable[None]], count: int, channels: Sequence[grpc.aio.Channel]
) -> None:
    """one(0), …, one(count - 1) side by side (each waits for its own due time), then the channels closed."""
    try:
        await asyncio.gather(*(one(i) for i in range(count)))
    finally:
        for c in channels:
            await c.close(None)


async def open_loop(
    port: int, edge: str, callers: list[list[tuple[str, str]]], samples: int, rate: float, modes: tuple[bool, ...]
) -> list[Outcome]:
    """`samples` commands per mode, all due every 1/rate s, command i in mode `modes[i % len(modes)]`: the
    outcome seen by waiting in CreateCommand (True) or by WatchCommand after it (False). Interleaved, so
    both modes meet the same moments of the machine. Per mode: (latencies, errors, (command id, due unix
    time, seen unix time))."""
    loop = asyncio.get_running_loop()
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in callers]
    stubs = [command_pb2_grpc.CommandServiceStub(c) for c in channels]
    outcomes: list[Outcome] = [
        ({"round_trip": [], "create": [], "sent_late": []}, collections.Counter(), []) for _ in modes
    ]
    total = WARM_UP + samples * len(modes)
    t0 = loop.time() + 0.5
    wall0 = time.time() + (t0 - loop.time())

    async def one(i: int) -> None:
        due = t0 + i / rate
        wait = modes[i % len(modes)]
        latencies, errors, seen = outcomes[i % len(modes)]
        sent_late = await until_due(due)
        stub, auth = stubs[i % len(stubs)], callers[i % len(callers)]
        request = S.CreateCommandRequest(
            parent=edge,
            request_id=str(uuid.uuid4()),
            command=S.Command(channel="battery_1/SetActivePower", value=float(-100 - i % 50)),
        )
        if wait:
            request.final_state_wait.FromSeconds(FINAL_STATE_WAIT_S)
        try:
            created = await stub.CreateCommand(request, metadata=auth)
            t_created = loop.time()
            final: command_pb2.Command | None = created if wait else None
            t_done = t_created
            if not wait:
                async for update in stub.WatchCommand(S.WatchCommandRequest(name=created.name), metadata=auth):
                    if final is None or final.state not in FINAL:
                        # Shown at this message; the stream's end (its status) follows and is not waited for.
                        t_done = loop.time()
                    final = update.command
        except grpc.aio.AioRpcError as exc:
            if i >= WARM_UP:
                errors[f"{exc.code().name} {error_reason(exc)}".strip()] += 1
            return
        if final is None or final.state != S.COMMAND_STATE_EXECUTED:
            if i >= WARM_UP:
                state = "none" if final is None else S.CommandState.Name(final.state)
                errors[f"{state} {final.state_reason if final else ''}".strip()] += 1
            return
        if i >= WARM_UP:
            latencies["round_trip"].append((t_done - due) * 1000)
            latencies["create"].append((t_created - due) * 1000)
            latencies["sent_late"].append(sent_late)
            seen.append((uuid.UUID(created.name.rsplit("/", 1)[1]), wall0 + (due - t0), wall0 + (t_done - t0)))

    await each_then_close(one, total, channels)
    return outcomes


async def reference(port: int, callers: int, samples: int, rate: float) -> dict[str, float]:
    """The floor of a round trip of one call and of two: two health checks in a row (no database, no
    auth, the same server, channels and open loop), from when each pair was due to the first answer
    and to the second."""
    loop = asyncio.get_running_loop()
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(callers)]
    stubs = [health_pb2_grpc.HealthStub(c) for c in channels]
    firsts: list[float] = []
    trips: list[float] = []
    t0 = loop.time() + 0.5

    async def one(i: int) -> None:
        due = t0 + i / rate
        await until_due(due)
        stub = stubs[i % len(stubs)]
        await stub.Check(health_pb2.HealthCheckRequest())
        first = loop.time()
        await stub.Check(health_pb2.HealthCheckRequest())
        if i >= WARM_UP:
            firsts.append((first - due) * 1000)
            trips.append((loop.time() - due) * 1000)

    await each_then_close(one, WARM_UP + samples, channels)
    return {
        "one_p50_ms": percentile(firsts, 0.5),
        "one_p99_ms": percentile(firsts, 0.99),
        "two_p50_ms": percentile(trips, 0.5),
        "two_p99_ms": percentile(trips, 0.99),
    }


@contextlib.asynccontextmanager
async def floor_processes(dsn: str) -> AsyncIterator[int]:
    """bench.command_floor's server and edge, each a process of its own; yields the server's port."""
    procs: list[asyncio.subprocess.Process] = []

    async def started(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.command_floor", *args, stdout=subprocess.PIPE
        )
        procs.append(proc)
        assert proc.stdout is not None
        async with asyncio.timeout(60):
            return (await proc.stdout.readline()).decode().strip()

    try:
        line = await started("serve", "--dsn", dsn)
        if not line.startswith("port "):
            raise RuntimeError(f"the floor's server did not start: {line!r}")
        port = int(line.split()[1])
        if (line := await started("edge", "--port", str(port))) != "ready":
            raise RuntimeError(f"the floor's edge did not start: {line!r}")
        yield port
    finally:
        await stop_processes(list(reversed(procs)))


async def floor(dsn: str, edge: str, callers: int, samples: int, rate: float) -> dict[str, float]:
    """The floor of the command round trip (bench.command_floor: the same process hops and durable
    commits as a command, none of EMMA's logic), on the same open loop: from when each command was due
    to its answer, which says it is EXECUTED."""
    loop = asyncio.get_running_loop()
    trips: list[float] = []
    late: list[float] = []
    async with floor_processes(dsn) as port:
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(callers)]
        calls = [
            c.unary_unary(
                "/emma.bench.v1.CommandFloor/Create",
                request_serializer=S.CreateCommandRequest.SerializeToString,
                response_deserializer=S.Command.FromString,
            )
            for c in channels
        ]
        t0 = loop.time() + 0.5

        async def one(i: int) -> None:
            due = t0 + i / rate
            sent_late = await until_due(due)
            request = S.CreateCommandRequest(
                parent=edge,
                request_id=str(uuid.uuid4()),
                command=S.Command(channel="battery_1/SetActivePower", value=float(-100 - i % 50)),
            )
            answer = await calls[i % len(calls)](request)
            if answer.state != S.COMMAND_STATE_EXECUTED:
                raise RuntimeError(f"the floor answered {answer}")
            if i >= WARM_UP:
                trips.append((loop.time() - due) * 1000)
                late.append(sent_late)

        await each_then_close(one, WARM_UP + samples, channels)
    return {
        "p50_ms": percentile(trips, 0.5),
        "p99_ms": percentile(trips, 0.99),
        "max_ms": max(trips, default=float("nan")),
        "commands": len(trips),
        "sent_late_p50_ms": percentile(late, 0.5),
    }


async def stage_medians(dsn: str, seen: list[tuple[uuid.UUID, float, float]]) -> dict[str, float]:
    """Median ms between a command's waypoints, from its stored transitions (one clock: this machine's)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """SELECT command_id, to_state, extract(epoch FROM event_time)::float8 AS t
               FROM app.command_events WHERE command_id = ANY($1::uuid[])""",
            [c for c, _, _ in seen],
        )
    finally:
        await conn.close()
    times: dict[uuid.UUID, dict[str, float]] = collections.defaultdict(dict)
    for r in rows:
        times[r["command_id"]][r["to_state"]] = r["t"]
    steps: dict[str, list[float]] = collections.defaultdict(list)
    for command_id, due, done in seen:
        t = times[command_id]
        if not all(s in t for s in STAGES):
            continue
        points = [("due", due), *((s, t[s]) for s in STAGES), ("seen by the caller", done)]
        for (a, ta), (b, tb) in itertools.pairwise(points):
            steps[f"{a} -> {b}"].append((tb - ta) * 1000)
    return {k: round(statistics.median(v), 2) for k, v in steps.items()}


async def lines(
    dsn: str,
    port: int,
    edge: str,
    callers: list[list[tuple[str, str]]],
    samples: int,
    rate: float,
    modes: tuple[bool, ...] = (True,),
) -> list[dict[str, object]]:
    """One line per mode (see open_loop), measured together."""
    out: list[dict[str, object]] = []
    for latencies, errors, seen in await open_loop(port, edge, callers, samples, rate, modes):
        trip, create = latencies["round_trip"], latencies["create"]
        out.append(
            {
                "p50_ms": percentile(trip, 0.5),
                "p99_ms": percentile(trip, 0.99),
                "max_ms": max(trip, default=float("nan")),
                "commands": len(trip),
                "errors": dict(errors),
                "create_p50_ms": percentile(create, 0.5),
                "create_p99_ms": percentile(create, 0.99),
                # This process's own lateness in sending (part of every figure above; see until_due).
                "sent_late_p50_ms": percentile(latencies["sent_late"], 0.5),
                "sent_late_p99_ms": percentile(latencies["sent_late"], 0.99),
                "median_ms_between_waypoints": await stage_medians(dsn, seen),
            }
        )
    return out


async def one_run(
    dsn: str, keys: list[dict[str, str]], fleet_keys: Any, args: argparse.Namespace, callers_n: int
) -> dict[str, object]:
    result: dict[str, object] = {}
    async with cloud_process(dsn, "edge command identity", env=BENCH_ENV) as (port, _pid, _stats):
        callers = [await login(dsn, port, "bench") for _ in range(callers_n)]
        names = [name for name in ("idle", "two_calls") if name in args.lines]
        if names:
            modes = tuple(name == "idle" for name in names)
            async with edge_process(port, keys[0]["edge"], keys[0]["key"], None):
                measured = await lines(dsn, port, keys[0]["edge"], callers, args.samples, args.rate, modes)
            for name, figures in zip(names, measured, strict=True):
                result["idle" if name == "idle" else "idle_two_calls"] = figures
            result["reference_health_checks"] = await reference(port, len(callers), args.samples, args.rate)
            result["reference_floor"] = await floor(dsn, keys[0]["edge"], len(callers), args.samples, args.rate)
        if "edge" in args.lines:
            async with edge_process(port, keys[1]["edge"], keys[1]["key"], args.cycle):
                await fresh_limits(dsn, keys[1]["edge"])
                result["edge_daemon"] = {
                    "cycle_s": args.cycle,
                    "rate_per_s": args.edge_rate,
                    **(await lines(dsn, port, keys[1]["edge"], callers, args.samples, args.edge_rate))[0],
                }
        if "load" in args.lines:
            async with edge_process(port, keys[0]["edge"], keys[0]["key"], None):
                duration = args.samples / args.rate + WARM_UP / args.rate + 15
                load = asyncio.create_task(
                    run_generators(
                        port, fleet_keys, 1000, 4, ["--points", "50", "--rate", "1", "--duration", str(duration)]
                    )
                )
                await asyncio.sleep(8)  # past the fleet's connection storm
                (result["under_1000_edge_load"],) = await lines(
                    dsn, port, keys[0]["edge"], callers, args.samples, args.rate
                )
                # Whether the machine kept up with the fleet meanwhile: its telemetry acks, from when
                # each batch was due, after the connection storm.
                acks = [ms for g in await load for t, ms in g["latencies_ms"] if t > 8]
                result["under_1000_edge_load"]["fleet_ack_p50_ms"] = percentile(acks, 0.5)  # type: ignore[index]
                result["under_1000_edge_load"]["fleet_ack_p99_ms"] = percentile(acks, 0.99)  # type: ignore[index]
    return result


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    # At most 5 commands/s per caller: the rate limit is 10/s, and a stall that bunches a caller's
    # commands must not make the benchmark trip it.
    callers_n = max(1, int(-(-args.rate // 5)))
    with database() as dsn:
        version = await migrate(dsn)
        keys = json.loads((await provision(dsn, 2, "cmd")).read_text())
        fleet_keys = await provision(dsn, 1000, "cmdload") if "load" in args.lines else None
        command = "python -m bench.commands " + " ".join(args.argv)
        runs = [await one_run(dsn, keys, fleet_keys, args, callers_n) for _ in range(args.runs)]
    result: dict[str, object] = {
        "machine": describe(version),
        "command": command.strip(),
        "rate_per_s": args.rate,
        "callers": callers_n,
        "runs": runs,
    }
    for name in ("idle", "idle_two_calls", "edge_daemon", "under_1000_edge_load"):
        per_run: list[Any] = [r[name] for r in runs if name in r]
        if per_run:
            # Top-level figures (what bench.run_all reads): the median run's, with the spread.
            result[name] = {
                "p50_ms": statistics.median(r["p50_ms"] for r in per_run),
                "p99_ms": statistics.median(r["p99_ms"] for r in per_run),
                "p50_spread": summary([r["p50_ms"] for r in per_run]),
                "p99_spread": summary([r["p99_ms"] for r in per_run]),
                "commands_per_run": [r["commands"] for r in per_run],
            }
    references: list[Any] = [r["reference_health_checks"] for r in runs if "reference_health_checks" in r]
    if references:
        result["reference_health_checks"] = {
            f"{key}_spread": summary([r[key] for r in references])
            for key in ("one_p50_ms", "one_p99_ms", "two_p50_ms", "two_p99_ms")
        }
    floors: list[Any] = [r["reference_floor"] for r in runs if "reference_floor" in r]
    if floors:
        result["reference_floor"] = {
            "p50_spread": summary([r["p50_ms"] for r in floors]),
            "p99_spread": summary([r["p99_ms"] for r in floors]),
        }
        # EMMA's idle line against the floor, run by run (the same minute of the machine).
        for name in ("idle", "idle_two_calls"):
            pairs = [(r[name], r["reference_floor"]) for r in runs if name in r and "reference_floor" in r]
            if pairs:
                result[name]["over_floor_p50"] = summary([e["p50_ms"] / f["p50_ms"] for e, f in pairs])  # type: ignore[index]
                result[name]["over_floor_p99"] = summary([e["p99_ms"] / f["p99_ms"] for e, f in pairs])  # type: ignore[index]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one run of 300 commands per line (what `make bench` uses)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--samples", type=int, default=1000, help="measured commands per line and run")
    p.add_argument("--rate", type=float, default=20.0, help="commands due per second, all callers together")
    p.add_argument("--cycle", type=float, default=0.1, help="the real edge daemon's control cycle (s)")
    # A second command for the same channel within one cycle supersedes the first (REJECTED by the
    # edge, by design), so the daemon's line stays under one command per cycle.
    p.add_argument("--edge-rate", type=float, default=8.0, help="commands due per second for the real daemon")
    p.add_argument("--lines", default="idle,two_calls,edge,load", help="which of idle, two_calls, edge, load to run")
    p.add_argument("--output", type=Path, help="where to write the result (default bench/results/commands.json)")
    argv = sys.argv[1:]
    args = p.parse_args(argv)
    args.argv = argv
    if args.quick:
        args.runs, args.samples = 1, 300
    args.lines = set(args.lines.split(","))
    result = asyncio.run(main_async(args))
    if args.output is not None:
        print_and_write(result, args.output)
    else:
        print(json.dumps(result, indent=2, default=str))
        print(f"written to {write_result('commands', result)}")


if __name__ == "__main__":
    main()
