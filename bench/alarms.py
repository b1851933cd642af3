"""Alarm benchmarks: sample to visible alarm at the fleet load, and ingest with 10,000 active rules.

    python -m bench.alarms [--quick] [--edges N] [--rules R] [--duration S] [--runs K] [--output FILE]

`emma serve edge alarm identity` runs as a process of its own (EMMA_ALARM_INTERVAL_S at its default,
1 s). Load: N edges (default 1,000) from bench/edge_load.py processes, one 50-point batch per second
each, as bench/ingest.py's fleet. Rules: R THRESHOLD rules (default 10,000, ten on channels of each
load edge) whose levels the load's values never reach, so the engine reads and judges every sample of
those channels on every pass without opening alarms; plus one rule per probe edge.

Latency: 10 probe edges in this process each send a sample every 2 s that alternately crosses the
probe rule's threshold and falls back, timed at its due time (the sample's own timestamp is the due
time, so a late send counts against the figure, no coordinated omission). An admin watches
WatchAlarms; a probe's latency is from its sample's due time to the RAISED or CLEARED change on that
stream. Goal: p99 under 2 s.

Ingest: each run is made twice on a fresh server, once with the R rules enabled and once with them
disabled (the probes' rules stay), and reports the points the load's acks confirmed per second and
its ack p99 from due time (judged after the first 15 s, as bench/ingest.py). The goal: ingest at
the offered rate (N x 50 points/s) with the rules as without.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
from emma.alarm.v1 import alarm_pb2 as pb
from emma.alarm.v1 import alarm_pb2_grpc
from emma.edge.v1 import edge_link_pb2, edge_link_pb2_grpc
from google.protobuf import timestamp_pb2

from bench.harness import BENCH_ENV, cloud_process, database, login, migrate, percentile, print_and_write, summary
from bench.ingest import STORM_S, provision, run_generators
from bench.machine import describe
from services.alarm import rules as alarm_rules
from services.identity import issue_edge_key
from services.names import EdgeName
from services.registry import ensure_edge

ROOT = Path(__file__).resolve().parents[1]
ORG = "bench"
PROBES = 10
PROBE_PERIOD_S = 2.0
PROBE_HIGH, PROBE_LOW, PROBE_LEVEL = 100.0, 0.0, 50.0
# The load's values are uniform in [-5000, 5000] (bench/edge_load.py): these levels are never reached.
QUIET_LEVEL = 1e12


async def provision_probes(dsn: str, run: str) -> list[tuple[EdgeName, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        out = []
        for i in range(PROBES):
            edge = EdgeName(ORG, f"probe-site-{run}", f"probe-{run}-{i}")
            pk = await ensure_edge(conn, edge)
            _, key = await issue_edge_key(conn, pk)
            out.append((edge, key))
        return out
    finally:
        await conn.close()


async def create_rules(
    dsn: str, load_edges: list[str], count: int, probes: list[tuple[EdgeName, str]], run: str
) -> None:
    """The quiet rules on the load edges' channels and one rule per probe, stored by the alarm domain's
    own code in one transaction (10,000 CreateAlarmRule calls would measure the API, not the engine)."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            for i in range(count):
                edge = load_edges[(i // 10) % len(load_edges)]
                rule = pb.AlarmRule(
                    display_name=f"quiet {i}",
                    kind=pb.ALARM_RULE_KIND_THRESHOLD,
                    channel=f"{edge}/devices/dev0/channels/Ch{i % 10}",
                    levels=pb.ThresholdLevels(warn_high=QUIET_LEVEL),
                    enabled=True,
                )
                await alarm_rules.create(conn, ORG, f"quiet-{run}-{i}", rule)
            for i, (probe_edge, _) in enumerate(probes):
                rule = pb.AlarmRule(
                    display_name=f"probe {i}",
                    kind=pb.ALARM_RULE_KIND_THRESHOLD,
                    channel=f"{probe_edge}/devices/probe/channels/Value",
                    levels=pb.ThresholdLevels(warn_high=PROBE_LEVEL),
                    enabled=True,
                )
                await alarm_rules.create(conn, ORG, f"probe-{run}-{i}", rule)
    finally:
        await conn.close()


async def set_quiet_rules(dsn: str, run: str, enabled: bool) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "UPDATE alarm.rules SET enabled = $2, update_time = now() WHERE org_id = $1 AND rule_id LIKE $3",
            ORG,
            enabled,
            f"quiet-{run}-%",
        )
    finally:
        await conn.close()


async def probe(port: int, edge: EdgeName, key: str, duration: float, due: dict[str, list[float]]) -> int:
    """One probe edge: a sample every PROBE_PERIOD_S at its due time, alternately above and below the
    probe rule's level; `due[source]` gets each sample's due time (Unix seconds). Returns errors."""
    source = f"{edge}/devices/probe/channels/Value"
    times = due.setdefault(source, [])
    errors = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        outbox: asyncio.Queue[edge_link_pb2.ConnectRequest | None] = asyncio.Queue()

        async def requests() -> AsyncIterator[edge_link_pb2.ConnectRequest]:
            while (item := await outbox.get()) is not None:
                yield item

        call = edge_link_pb2_grpc.EdgeLinkServiceStub(channel).Connect(requests())
        await outbox.put(
            edge_link_pb2.ConnectRequest(
                hello=edge_link_pb2.Hello(
                    edge=str(edge),
                    api_key=key,
                    agent_version="bench-probe",
                    protocol_version=1,
                    channel_table=[edge_link_pb2.ChannelDescriptor(index=0, channel="probe/Value", unit="")],
                )
            )
        )
        await call.read()  # Welcome
        start = time.time() + 1.0
        n = int(duration / PROBE_PERIOD_S)

        async def acks() -> None:
            nonlocal errors
            for _ in range(n):
                msg = await call.read()
                if msg is grpc.aio.EOF:  # type: ignore[attr-defined]
                    errors += 1
                    return

        reader = asyncio.create_task(acks())
        for seq in range(1, n + 1):
            at = start + (seq - 1) * PROBE_PERIOD_S
            await asyncio.sleep(max(0.0, at - time.time()))
            base = timestamp_pb2.Timestamp()
            base.FromNanoseconds(int(at * 1e9))
            value = PROBE_HIGH if seq % 2 else PROBE_LOW
            times.append(at)
            await outbox.put(
                edge_link_pb2.ConnectRequest(
                    telemetry_batch=edge_link_pb2.TelemetryBatch(
                        batch_seq=seq, base_time=base, channel_indexes=[0], time_offsets_ms=[0], values=[value]
                    )
                )
            )
        try:
            await asyncio.wait_for(reader, timeout=30)
        except TimeoutError:
            errors += 1
        await outbox.put(None)
        call.cancel()
    return errors


async def watch(
    port: int, metadata: list[tuple[str, str]], seen: list[tuple[str, float]], ready: asyncio.Event
) -> None:
    """WatchAlarms as an operator's screen: (source, arrival time) of every RAISED or CLEARED change."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = alarm_pb2_grpc.AlarmServiceStub(channel).WatchAlarms(
            pb.WatchAlarmsRequest(parent=f"organizations/{ORG}"), metadata=metadata
        )
        await call.initial_metadata()
        ready.set()
        async for change in call:
            if change.transition.kind in (pb.ALARM_TRANSITION_KIND_RAISED, pb.ALARM_TRANSITION_KIND_CLEARED):
                seen.append((change.alarm.source, time.time()))


def latencies(due: dict[str, list[float]], seen: list[tuple[str, float]]) -> tuple[list[float], int]:
    """Per probe, the i-th RAISED/CLEARED change belongs to its i-th sample (each one flips the level);
    ms from due time to arrival, and how many samples saw no change at all."""
    by_source: dict[str, list[float]] = {}
    for source, at in seen:
        by_source.setdefault(source, []).append(at)
    out: list[float] = []
    missing = 0
    for source, times in due.items():
        arrivals = by_source.get(source, [])
        for i, at in enumerate(times):
            if i < len(arrivals):
                out.append((arrivals[i] - at) * 1000)
            else:
                missing += 1
    return out, missing


async def one_run(dsn: str, edges: int, rules: int, duration: float, run: str, with_rules: bool) -> dict[str, object]:
    keys = await provision(dsn, edges, f"alarm{run}")
    import json

    load_edges = [k["edge"] for k in json.loads(keys.read_text())]
    probes = await provision_probes(dsn, run)
    await create_rules(dsn, load_edges, rules, probes, run)
    if not with_rules:
        await set_quiet_rules(dsn, run, False)
    processes = 4 if edges >= 400 else 2
    env = {**BENCH_ENV, "EMMA_INGEST_STATS_INTERVAL_S": "5"}
    async with cloud_process(dsn, "edge alarm identity", env=env) as (port, _pid, _stats):
        metadata = await login(dsn, port, ORG)
        seen: list[tuple[str, float]] = []
        ready = asyncio.Event()
        watcher = asyncio.create_task(watch(port, metadata, seen, ready))
        await asyncio.wait_for(ready.wait(), timeout=30)
        due: dict[str, list[float]] = {}
        load = asyncio.create_task(
            run_generators(port, keys, edges, processes, ["--points", "50", "--rate", "1", "--duration", str(duration)])
        )
        # The probes start once the load's connection storm is over, so they judge the steady fleet.
        await asyncio.sleep(STORM_S)
        probe_errors = await asyncio.gather(*(probe(port, e, k, duration - STORM_S, due) for e, k in probes))
        results = await load
        await asyncio.sleep(3.0)  # the last probe samples' changes may still be on their way
        watcher.cancel()
    ms, missing = latencies(due, seen)
    pairs = [(t, lat) for r in results for t, lat in r["latencies_ms"]]  # type: ignore[attr-defined]
    judged = [lat for t, lat in pairs if t >= STORM_S]
    acked_points = sum(int(r["points"]) for r in results)  # type: ignore[call-overload]
    return {
        "rules_enabled": rules if with_rules else 0,
        "alarm_latency_ms": {
            "samples": len(ms),
            "p50": percentile(ms, 0.5),
            "p99": percentile(ms, 0.99),
            "max": max(ms, default=float("nan")),
            "samples_without_change": missing,
            "probe_errors": sum(probe_errors),
        },
        "ingest": {
            "offered_points_per_s": edges * 50,
            "acked_points_per_s": acked_points / duration,
            "acked_batches": sum(int(r["acked"]) for r in results),  # type: ignore[call-overload]
            "expected_batches": edges * int(duration),
            "errors": sum(int(r["errors"]) for r in results),  # type: ignore[call-overload]
            "ack_p99_ms_after_storm": percentile(judged, 0.99),
        },
    }


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    edges = args.edges or (100 if args.quick else 1000)
    rules = args.rules if args.rules >= 0 else (1000 if args.quick else 10_000)
    duration = args.duration or (30.0 if args.quick else 60.0)
    with database() as dsn:
        version = await migrate(dsn)
        with_rules, without = [], []
        for run in range(args.runs):
            with_rules.append(await one_run(dsn, edges, rules, duration, f"r{run}", True))
            without.append(await one_run(dsn, edges, rules, duration, f"n{run}", False))

    def spread(runs: list[dict[str, object]], part: str, key: str) -> dict[str, float]:
        return summary([float(r[part][key]) for r in runs])  # type: ignore[index]

    p99 = spread(with_rules, "alarm_latency_ms", "p99")
    return {
        "machine": describe(version),
        "command": "python -m bench.alarms" + (" --quick" if args.quick else ""),
        "setup": f"{edges} edges x 50 points/s, {rules} quiet THRESHOLD rules, {PROBES} probe edges "
        f"(a flip every {PROBE_PERIOD_S:g} s), {duration:g} s per run, {args.runs} runs per variant",
        "with_rules": with_rules,
        "without_rules": without,
        "alarm_p99_ms": p99,
        "acked_points_per_s_with_rules": spread(with_rules, "ingest", "acked_points_per_s"),
        "acked_points_per_s_without_rules": spread(without, "ingest", "acked_points_per_s"),
        "ack_p99_ms_with_rules": spread(with_rules, "ingest", "ack_p99_ms_after_storm"),
        "ack_p99_ms_without_rules": spread(without, "ingest", "ack_p99_ms_after_storm"),
        "alarm_goal_met": p99["max"] < 2000,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="100 edges, 1,000 rules, 30 s runs")
    p.add_argument("--edges", type=int, default=0, help="load edges (default 1,000; --quick 100)")
    p.add_argument("--rules", type=int, default=-1, help="quiet rules (default 10,000; --quick 1,000)")
    p.add_argument("--duration", type=float, default=0.0, help="seconds per run (default 60; --quick 30)")
    p.add_argument("--runs", type=int, default=3, help="runs per variant (default 3)")
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "alarms.json")
    args = p.parse_args()
    print_and_write(asyncio.run(main_async(args)), args.output)


if __name__ == "__main__":
    main()
