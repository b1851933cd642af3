"""Gateway throughput: GET latest values (50 channels) through the REST gateway at 50 clients.

    python -m bench.gateway [--quick] [--deployment split|up|both] [--workers 1,2] [--gateway-connections 1,4]
                            [--runs 3] [--profile DIR]

Two deployments, as users run them:
- split: `emma serve all` and `emma gateway` as processes of their own;
- up: `emma up` (embedded demo, simulated edges, replays and all) on the benchmark's database.
One simulated edge reports 50 channels; its site's latest values are read. `--workers 1,2` runs each
deployment once per count of gRPC service processes sharing the port (EMMA_GRPC_WORKERS, SO_REUSEPORT);
the gateway is always one process (`emma gateway` has no workers of its own); `--gateway-connections`
likewise runs each count of the gateway's gRPC connections (EMMA_GATEWAY_CONNECTIONS). Every result
names its configuration: deployment, service workers, gateway connections, the pid of each process.

The load comes from processes of their own: bench.http_load with 50 keep-alive HTTP/1.1 clients, and,
as the reference in the same run, the same ListLatestValues over gRPC directly from 50 callers on
several client connections (`python -m bench.gateway grpc-load`). Each run measures both at the goal's
rate open loop (latency from each request's due time: no coordinated omission; every p99 rests on
thousands of samples), then both closed loop (each client sends when its last answer arrived) for
the most either path gives at 50 clients. With --profile, py-spy records the services' and the
gateway's processes during an extra open-loop measurement of each deployment that is not reported
(py-spy on PATH or in the venv; raw stacks, read them with `python -m bench.gateway top FILE`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
from emma.edge.v1 import edge_link_pb2, edge_link_pb2_grpc
from emma.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc

from bench.edge_load import BatchFactory, hello
from bench.harness import (
    BENCH_ENV,
    EMMA,
    cloud_process,
    cpu_seconds,
    database,
    login,
    migrate,
    percentile,
    summary,
    write_result,
)
from bench.ingest import provision
from bench.machine import describe
from gateway.config import GatewayConfig

CLIENTS = 50
GRPC_CONNECTIONS = 4
GOAL_RATE = {"split": 1500.0, "up": 1000.0}
GOAL_P99_MS = 50.0
# A running deployment: (gateway base URL, gRPC target, pid of each process by name).
Deployed = tuple[str, str, dict[str, int]]


async def report_once(port: int, edge: str, key: str) -> None:
    """One batch of 50 channels through a real EdgeLink stream, so latest values exist."""
    out: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def requests():  # type: ignore[no-untyped-def]
        while (item := await out.get()) is not None:
            yield item

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(
            "/emma.edge.v1.EdgeLinkService/Connect",
            request_serializer=None,
            response_deserializer=edge_link_pb2.ConnectResponse.FromString,
        )(requests())
        await out.put(hello(edge, key, 50))
        await call.read()
        await out.put(BatchFactory(channels=50, points=50).make(1))
        await call.read()
        await out.put(None)
        call.cancel()
    _ = edge_link_pb2_grpc  # the stub module registers the service's types


# --- the gRPC reference client (a process of its own) --------------------------------------------


async def grpc_load(
    target: str, parent: str, token: str, clients: int, connections: int, seconds: float, rate: float | None
) -> dict[str, object]:
    """Like bench.http_load, over gRPC: `clients` callers spread over `connections` channels."""
    auth = (("authorization", f"Bearer {token}"),)
    # A local subchannel pool per channel: each is its own TCP connection, not one shared underneath.
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(connections)
    ]
    stubs = [telemetry_pb2_grpc.TelemetryServiceStub(c) for c in channels]
    request = telemetry_pb2.ListLatestValuesRequest(parent=parent)
    latencies: list[float] = []
    errors: list[str] = []
    for ch in channels:
        await ch.channel_ready()
    cpu0 = time.process_time()
    t0 = time.perf_counter() + 0.2
    stop = t0 + seconds
    period = clients / rate if rate else None

    async def caller(c: int) -> None:
        stub = stubs[c % len(stubs)]
        due = t0 + c / rate if rate else None
        while True:
            if due is not None and period is not None:
                # Requests due after the window are not sent, nor are those still unsent when it
                # closes: a server that fell behind shows as a lower rate and a higher p99.
                if due >= stop or time.perf_counter() >= stop:
                    return
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                started = due
                due += period
            else:
                started = time.perf_counter()
                if started >= stop:
                    return
            try:
                reply = await stub.ListLatestValues(request, metadata=auth)
            except grpc.aio.AioRpcError as exc:
                errors.append(exc.code().name)
                continue
            if len(reply.values) != 50:
                errors.append(f"{len(reply.values)} values")
            latencies.append((time.perf_counter() - started) * 1000)

    try:
        await asyncio.gather(*(caller(c) for c in range(clients)))
    finally:
        for ch in channels:
            await ch.close()
    elapsed = time.perf_counter() - t0
    return {
        "mode": f"open loop at {rate:g} req/s" if rate else "closed loop",
        "requests": len(latencies),
        "errors": len(errors),
        "elapsed_s": elapsed,
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies, default=float("nan")),
        "client_cpu_s": time.process_time() - cpu0,
    }


# --- one measurement: a load process ---------------------------------------------------------------


async def _json_process(argv: list[str]) -> dict[str, object]:
    out = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{argv[:4]} failed: {out.stderr[-2000:]}")
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


async def http_run(url: str, token: str, seconds: float, rate: float | None) -> dict[str, object]:
    argv = [sys.executable, "-m", "bench.http_load", url, "--clients", str(CLIENTS), "--seconds", str(seconds)]
    return await _json_process([*argv, "--token", token, "--rate", str(rate or 0)])


async def grpc_run(target: str, parent: str, token: str, seconds: float, rate: float | None) -> dict[str, object]:
    argv = [sys.executable, "-m", "bench.gateway", "grpc-load", "--target", target, "--parent", parent]
    argv += ["--token", token, "--seconds", str(seconds), "--rate", str(rate or 0)]
    return await _json_process(argv)


def py_spy() -> str | None:
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def profiling(pids: dict[str, int], seconds: float, folder: Path | None) -> Iterator[None]:
    """py-spy record on each process for `seconds` (raw collapsed stacks in `folder`)."""
    spy = py_spy()
    procs = []
    if folder is not None and spy is not None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, pid in pids.items():
            out = folder / f"{name}.txt"
            argv = [spy, "record", "--format", "raw", "--rate", "200", "-d", str(int(seconds)), "-p", str(pid)]
            procs.append(
                subprocess.Popen([*argv, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
    try:
        yield
    finally:
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def machine_busy_s() -> float:
    """CPU seconds all cores spent not idle since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


async def postmaster_pid(dsn: str) -> int | None:
    """The database server's main process (the parent of a backend), when it runs on this machine."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
        # While the connection is open: its backend ends with it.
        status = Path(f"/proc/{backend}/status").read_text()
    except OSError:
        return None  # another machine's server
    finally:
        await conn.close()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def _postgres_cpu(postmaster: int) -> float:
    """CPU seconds of the server and its current backends (a backend that ended meanwhile is missed;
    the services' pools keep theirs)."""
    total = 0.0
    for pid in [postmaster, *_children(postmaster)]:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


def process_cpu(pids: dict[str, int], postmaster: int | None = None) -> dict[str, float]:
    out = {"machine": machine_busy_s()}
    for name, pid in pids.items():
        try:
            out[name] = cpu_seconds(pid)
        except OSError:
            out[name] = float("nan")
    if postmaster is not None:
        out["postgres"] = _postgres_cpu(postmaster)
    return out


async def measure(
    url: str,
    target: str,
    parent: str,
    token: str,
    seconds: float,
    rate: float,
    pids: dict[str, int],
    postmaster: int | None,
) -> dict[str, object]:
    """One run: gateway and gRPC open loop at `rate`, then both closed loop; CPU of each process, the
    database server's (all its processes) and the whole machine's ("machine", every process on it)."""
    run: dict[str, object] = {}
    for kind, load in (
        ("gateway_open", lambda: http_run(url, token, seconds, rate)),
        ("grpc_open", lambda: grpc_run(target, parent, token, seconds, rate)),
        ("gateway_closed", lambda: http_run(url, token, seconds, None)),
        ("grpc_closed", lambda: grpc_run(target, parent, token, seconds, None)),
    ):
        before, wall = process_cpu(pids, postmaster), time.perf_counter()
        run[kind] = await load()
        after, wall = process_cpu(pids, postmaster), time.perf_counter() - wall
        # Cores each process used meanwhile (the load process's start-up included: a small understatement).
        cores = {k: round((after[k] - before[k]) / wall, 2) for k in after}
        # The gRPC serving processes together (`up` is worker 0 under `emma up`).
        cores["services_all"] = round(sum(v for k, v in cores.items() if k.startswith(("services", "up"))), 2)
        run[f"{kind}_cpu_cores"] = cores
    return run


def _runs_summary(runs: list[dict[str, object]], rate: float) -> dict[str, object]:
    def values(kind: str, key: str) -> list[float]:
        return [float(r[kind][key]) for r in runs]  # type: ignore[index]

    out: dict[str, object] = {}
    for kind in ("gateway_open", "grpc_open", "gateway_closed", "grpc_closed"):
        out[kind] = {
            "requests_per_s": summary(values(kind, "requests_per_s")),
            "p50_ms": summary(values(kind, "p50_ms")),
            "p99_ms": summary(values(kind, "p99_ms")),
            "samples_per_run_min": min(values(kind, "requests")),
        }
    # CPU milliseconds each process spent per answered request, closed loop (the machine's share is of
    # every process on it: postgres, the load process, the kernel's network work, anything else running).
    for kind in ("gateway_closed", "grpc_closed"):
        per_request: dict[str, object] = {}
        names = runs[0][f"{kind}_cpu_cores"]  # type: ignore[union-attr]
        for name in names:  # type: ignore[union-attr]
            ms = [
                1000 * float(r[f"{kind}_cpu_cores"][name]) / float(r[kind]["requests_per_s"])  # type: ignore[index]
                for r in runs
            ]
            per_request[name] = summary(ms)
        out[f"{kind}_cpu_ms_per_request"] = per_request
    gw = values("gateway_closed", "requests_per_s")
    direct = values("grpc_closed", "requests_per_s")
    out["closed_loop_gateway_to_grpc_ratio"] = summary([g / d for g, d in zip(gw, direct, strict=True)])
    open_rates = values("gateway_open", "requests_per_s")
    open_p99 = values("gateway_open", "p99_ms")
    out["goal"] = f">= {rate:g} req/s (open loop at that rate, 50 clients) with p99 < {GOAL_P99_MS:g} ms"
    # The load generator offers the goal's rate; the goal holds when every run got it served in time.
    out["goal_met_in_runs"] = sum(
        1 for r, p in zip(open_rates, open_p99, strict=True) if r >= 0.98 * rate and p < GOAL_P99_MS
    )
    return out


# --- the deployments -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def split_deployment(dsn: str, workers: int, gateway_env: dict[str, str]) -> AsyncIterator[Deployed]:
    """`emma serve all` (`workers` processes on one port) + `emma gateway`: yields (gateway base URL,
    gRPC target, pids)."""
    env = {**BENCH_ENV, "EMMA_TRUST_FORWARDED_FOR": "1", "EMMA_GRPC_WORKERS": str(workers)}
    async with cloud_process(dsn, "all", env=env) as (port, pid, _s):
        gateway = subprocess.Popen(
            [EMMA, "--log-level", "WARNING", "gateway", "--target", f"127.0.0.1:{port}", "--port", "0"],
            env={**os.environ, "EMMA_GATEWAY_WRITE_RATE_PER_S": "0", **gateway_env},
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert gateway.stdout is not None
            line = await asyncio.to_thread(gateway.stdout.readline)
            base = "http://" + line.split("http://", 1)[1].split()[0]
            pids = {"services": pid, **_service_workers(pid, workers), "gateway": gateway.pid}
            yield base, f"127.0.0.1:{port}", pids
        finally:
            gateway.send_signal(signal.SIGINT)
            gateway.wait(20)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _service_workers(first: int, workers: int) -> dict[str, int]:
    """The further `serve` workers the first one started (its children): services-1, services-2, ..."""
    found = [c for c in _children(first) if " serve " in _cmdline(c)]
    if len(found) != workers - 1:
        raise RuntimeError(f"expected {workers - 1} further service workers of pid {first}, found {found}")
    return {f"services-{i}": pid for i, pid in enumerate(sorted(found), start=1)}


@contextlib.asynccontextmanager
async def up_deployment(dsn: str, workers: int, gateway_env: dict[str, str]) -> AsyncIterator[Deployed]:
    """`emma up --workers N` on the benchmark's database: yields (gateway base URL, gRPC target, pids)."""
    with tempfile.TemporaryDirectory(prefix="emma-bench-up-") as state:
        env = {
            **os.environ,
            **BENCH_ENV,
            "DATABASE_URL": dsn,
            "EMMA_GATEWAY_WRITE_RATE_PER_S": "0",
            **gateway_env,
        }
        ports = ["--port", "0", "--gateway-port", "0", "--workers", str(workers)]
        proc = subprocess.Popen(
            [EMMA, "--log-level", "WARNING", "up", "--state-dir", state, *ports],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            assert proc.stdout is not None
            base = target = ""
            deadline = time.monotonic() + 180
            seen = []
            while time.monotonic() < deadline:
                line = await asyncio.to_thread(proc.stdout.readline)
                if not line:
                    raise RuntimeError("emma up stopped:\n" + "".join(seen[-30:]))
                seen.append(line)
                if "gRPC services on " in line:
                    target = line.split("gRPC services on ", 1)[1].split()[0]
                if "REST gateway on " in line:
                    base = line.split("REST gateway on ", 1)[1].split()[0]
                if "emma up: ready" in line:
                    break
            if not (base and target):
                raise RuntimeError("emma up did not start:\n" + "".join(seen[-30:]))

            def drain() -> None:
                for _ in proc.stdout:  # type: ignore[union-attr]
                    pass

            drainer = asyncio.create_task(asyncio.to_thread(drain))
            pids = {"up": proc.pid, **_service_workers(proc.pid, workers)}
            for child in _children(proc.pid):
                if " gateway" in _cmdline(child):
                    pids["gateway"] = child
            if "gateway" not in pids:
                raise RuntimeError("emma up: no gateway process of its own found")
            try:
                yield base, target, pids
            finally:
                drainer.cancel()
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.to_thread(proc.wait, 60)
            except subprocess.TimeoutExpired:
                proc.kill()


async def bench_deployment(
    name: str, workers: int, connections: int | None, dsn: str, seconds: float, runs: int, profile: Path | None
) -> dict[str, object]:
    keys = json.loads((await provision(dsn, 1, f"gw{name}{workers}")).read_text())
    edge, key = keys[0]["edge"], keys[0]["key"]
    site = edge.rsplit("/edges/", 1)[0]
    # The gateway's gRPC connections: its default unless --gateway-connections gives a count.
    gateway_env = {} if connections is None else {"EMMA_GATEWAY_CONNECTIONS": str(connections)}
    deployment = (split_deployment if name == "split" else up_deployment)(dsn, workers, gateway_env)
    postmaster = await postmaster_pid(dsn)
    async with deployment as (base, target, pids):
        configuration = {
            "deployment": name,
            "service_workers": workers,
            "gateway_processes": 1,
            "gateway_connections": connections or GatewayConfig.connections,
            "pids": pids,
        }
        print(f"configuration: {json.dumps(configuration)}", file=sys.stderr, flush=True)
        port = int(target.rsplit(":", 1)[1])
        auth = await login(dsn, port, "bench")
        token = auth[0][1].removeprefix("Bearer ")
        await report_once(port, edge, key)
        url = f"{base}/v1/{site}/latestValues"
        rate = GOAL_RATE[name]
        # Warm up both paths (first calls build caches, channels and encoders).
        await http_run(url, token, 2.0, None)
        await grpc_run(target, site, token, 1.0, None)
        if profile is not None:
            # A measurement of its own, not reported: py-spy's sampling slows the processes it watches.
            with profiling(pids, seconds, profile / f"{name}-w{workers}"):
                await http_run(url, token, seconds, rate)
        results = []
        for i in range(runs):
            results.append(await measure(url, target, site, token, seconds, rate, pids, postmaster))
            line = {k: results[-1][k]["requests_per_s"] for k in ("gateway_open", "gateway_closed", "grpc_closed")}  # type: ignore[index]
            p99 = results[-1]["gateway_open"]["p99_ms"]  # type: ignore[index]
            cores = results[-1]["gateway_closed_cpu_cores"]
            print(
                f"{name} workers={workers} run {i + 1}: req/s {line}, open p99 {p99:.1f} ms, cores {cores}",
                file=sys.stderr,
                flush=True,
            )
    for r in results:
        for kind in ("gateway_open", "grpc_open", "gateway_closed", "grpc_closed"):
            assert r[kind]["errors"] == 0, (kind, r[kind])  # type: ignore[index]
    summarized = _runs_summary(results, rate)
    return {**configuration, "rate": rate, "summary": summarized, "runs": results}


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    seconds = args.seconds or (8.0 if args.quick else 20.0)
    names = ["split", "up"] if args.deployment == "both" else [args.deployment]
    out: dict[str, object] = {}
    with database() as dsn:
        version = await migrate(dsn)
        out["machine"] = describe(version)
        out["command"] = "python -m bench.gateway " + " ".join(sys.argv[1:])
        out["clients"] = CLIENTS
        out["grpc_reference_connections"] = GRPC_CONNECTIONS
        out["seconds_per_measurement"] = seconds
        for name in names:
            for workers in args.workers:
                for connections in args.gateway_connections or [None]:
                    key = name if len(args.workers) == 1 else f"{name}-workers-{workers}"
                    if connections is not None:
                        key += f"-connections-{connections}"
                    out[key] = await bench_deployment(name, workers, connections, dsn, seconds, args.runs, args.profile)
    return out


# --- reading a py-spy raw profile ----------------------------------------------------------------


def top(path: Path, count: int = 30, within: str = "run_forever") -> str:
    """The functions with the most samples in a py-spy raw file, self and inclusive, counting only stacks
    through `within` (the event loop: the other threads' samples are mostly waits py-spy cannot tell
    from work)."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        k = int(n)
        frames = stack.split(";")
        if within and not any(within in f for f in frames):
            continue
        samples += k
        own[frames[-1]] += k
        for f in set(frames):
            total[f] += k
    lines = [f"{samples} samples through {within!r} in {path}", "self %  | function"]
    lines += [f"{100 * v / samples:6.1f}  | {f}" for f, v in own.most_common(count)]
    lines += ["inclusive %  | function"]
    lines += [f"{100 * v / samples:6.1f}  | {f}" for f, v in total.most_common(count)]
    return "\n".join(lines)


def _worker_counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of counts like 1,2") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: counts are 1 or more")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    load = sub.add_parser("grpc-load", help="the gRPC reference client (run by the benchmark)")
    load.add_argument("--target", required=True)
    load.add_argument("--parent", required=True)
    load.add_argument("--token", required=True)
    load.add_argument("--clients", type=int, default=CLIENTS)
    load.add_argument("--connections", type=int, default=GRPC_CONNECTIONS)
    load.add_argument("--seconds", type=float, default=8.0)
    load.add_argument("--rate", type=float, default=0.0)
    show = sub.add_parser("top", help="the top functions of a py-spy raw profile")
    show.add_argument("file", type=Path)
    show.add_argument("--count", type=int, default=30)
    show.add_argument("--within", default="run_forever", help="count only stacks through this frame")
    parser.add_argument("--quick", action="store_true", help="8 s per measurement instead of 20 s")
    parser.add_argument("--seconds", type=float, default=0.0, help="seconds per measurement (overrides --quick)")
    parser.add_argument("--deployment", choices=["split", "up", "both"], default="both")
    parser.add_argument(
        "--workers",
        type=_worker_counts,
        default=[1],
        help="gRPC service processes on the port (EMMA_GRPC_WORKERS), a comma list runs each: 1,2 (default 1)",
    )
    parser.add_argument(
        "--gateway-connections",
        type=_worker_counts,
        help="the gateway's gRPC connections (EMMA_GATEWAY_CONNECTIONS), a comma list runs each (default: its own)",
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="py-spy each process during the first run into this folder")
    args = parser.parse_args()
    if args.command == "grpc-load":
        result = asyncio.run(
            grpc_load(
                args.target, args.parent, args.token, args.clients, args.connections, args.seconds, args.rate or None
            )
        )
        sys.stdout.write(json.dumps(result) + "\n")
        return
    if args.command == "top":
        print(top(args.file, args.count, args.within))
        return
    result = asyncio.run(main_async(args))
    print(json.dumps(result, indent=2, default=str))
    print(f"written to {write_result('gateway', result)}")


if __name__ == "__main__":
    main()
