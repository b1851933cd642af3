"""Alarm benchmarks: sample to visible alarm at the fleet load, and ingest with 10,000 active rules.

    python -m bench.alarms [--quick] [--edges N] [--rules R] [--duration S] [--runs K] [--storm S]
                           [--tail S] [--only-with-rules] [--raw] [--output FILE]

`emma serve edge alarm identity` runs as a process of its own (EMMA_ALARM_INTERVAL_S at its default,
1 s). Load: N edges (default 1,000) from bench/edge_load.py processes, one 50-point batch per second
each, as bench/ingest.py's fleet. Rules: R THRESHOLD rules (default 10,000, ten on channels of each
load edge) whose levels the load's values never reach, so the engine reads every sample of those
channels on every pass without opening alarms; plus one rule per probe edge. Every run creates its own
rules and disables those of the runs before it (each run judges R rules, not R times the run's number).

Latency: 10 probe edges in this process each send a sample every 2 s, from the load's start until
--tail seconds (default 5) before its end, that alternately crosses the probe rule's threshold and
falls back, timed at its due time (the sample's own timestamp is the due time, so a late send counts
against the figure, no coordinated omission). An admin watches WatchAlarms; a probe's latency is from
its sample's due time to the RAISED or CLEARED change on that stream. Goal: p99 under 2 s. As in
bench/ingest.py, samples due in the first --storm seconds (default 15, the connection storm) are
reported apart. Each latency is split at the probe's ack (the sample committed): due -> ack is ingest's
share, ack -> seen the engine's poll and pass, the NOTIFY and WatchAlarms. The probes stop before the
load does because the load's streams all close in the same second at its end, which keeps the server
busy for a second or two: a fleet-wide disconnect, not the steady load being judged. The server's
`alarm engine stats` lines (one per 5 s: passes, their median and slowest duration, judgements read
and stored) are kept per run as `engine_passes`: a pass's length is part of every alarm's latency.

Ingest: each run is made twice on a fresh server, once with the R rules enabled and once with them
disabled (the probes' rules stay; --only-with-rules skips this one), and reports the points the load's
acks confirmed per second and its ack p99 from due time (judged after --storm seconds, the storm's
apart, as bench/ingest.py), with the load generators' own send lag. The goal: ingest at the offered
rate (N x 50 points/s) with the rules as without.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
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
# The probes stop this long before the load (see one_run).
PROBE_TAIL_S = 5.0
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


async def disable_all_rules(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "UPDATE alarm.rules SET enabled = false, update_time = now() WHERE org_id = $1 AND enabled", ORG
        )
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


async def probe(
    port: int,
    edge: EdgeName,
    key: str,
    duration: float,
    due: dict[str, list[float]],
    acked: dict[str, dict[int, float]],
    start: float,
) -> int:
    """One probe edge: a sample every PROBE_PERIOD_S from `start` (Unix seconds) at its due time,
    alternately above and below the probe rule's level; `due[source]` gets each sample's due time and
    `acked[source][i]` when the ack of its i-th sample (0-based) arrived, that is after ingest committed
    it. Returns errors."""
    source = f"{edge}/devices/probe/channels/Value"
    times = due.setdefault(source, [])
    ack_times = acked.setdefault(source, {})
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
        n = int(duration / PROBE_PERIOD_S)

        async def acks() -> None:
            nonlocal errors
            for _ in range(n):
                msg = await call.read()
                if msg is grpc.aio.EOF:  # type: ignore[attr-defined]
                    errors += 1
                    return
                if msg.WhichOneof("message") == "telemetry_ack":
                    ack_times[msg.telemetry_ack.batch_seq - 1] = time.time()

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
            async with asyncio.timeout(30):
                await reader
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


@dataclass(frozen=True)
class ProbeSample:
    """One probe sample's way: due (its own timestamp) -> acked (ingest committed it; the probe saw the
    ack) -> seen (its RAISED or CLEARED change arrived on WatchAlarms), Unix seconds; `offset` is its due
    time's offset from the start of the load."""

    offset: float
    due: float
    acked: float | None
    seen: float | None


def probe_samples(
    due: dict[str, list[float]], acked: dict[str, dict[int, float]], seen: list[tuple[str, float]], load_start: float
) -> list[ProbeSample]:
    """Per probe, the i-th RAISED/CLEARED change belongs to its i-th sample (each one flips the level)."""
    by_source: dict[str, list[float]] = {}
    for source, at in seen:
        by_source.setdefault(source, []).append(at)
    out = []
    for source, times in due.items():
        arrivals = by_source.get(source, [])
        for i, at in enumerate(times):
            out.append(
                ProbeSample(
                    at - load_start, at, acked.get(source, {}).get(i), arrivals[i] if i < len(arrivals) else None
                )
            )
    return out


def engine_passes(stats: list[dict[str, object]], load_start: float) -> list[dict[str, object]]:
    """The server's `alarm engine stats` lines, each with the end of its window in seconds from the
    load's start (`until_s`) and without the log line's own fields."""
    out = []
    for line in stats:
        if line.get("message") != "alarm engine stats":
            continue
        until = dt.datetime.fromisoformat(str(line["time"])).timestamp() - load_start
        kept = {k: v for k, v in line.items() if k not in ("time", "level", "logger", "message")}
        out.append({"until_s": round(until, 1), **kept})
    return out


def window(values: list[float]) -> dict[str, float]:
    return {
        "samples": len(values),
        "p50": percentile(values, 0.5),
        "p99": percentile(values, 0.99),
        "max": max(values, default=float("nan")),
    }


def alarm_latency(samples: list[ProbeSample]) -> dict[str, object]:
    """Due -> seen, and where it went: due -> ack (ingest: the probe's own send, the commit, the ack's way
    back) and ack -> seen (the engine's poll and pass, the NOTIFY, WatchAlarms)."""
    return {
        **window([(x.seen - x.due) * 1000 for x in samples if x.seen is not None]),
        "samples_without_change": sum(1 for x in samples if x.seen is None),
        "due_to_ack_ms": window([(x.acked - x.due) * 1000 for x in samples if x.acked is not None]),
        "ack_to_seen_ms": window(
            [(x.seen - x.acked) * 1000 for x in samples if x.acked is not None and x.seen is not None]
        ),
    }


async def one_run(
    dsn: str, edges: int, rules: int, duration: float, storm: float, tail: float, run: str, with_rules: bool
) -> dict[str, object]:
    keys = await provision(dsn, edges, f"alarm{run}")
    load_edges = [k["edge"] for k in json.loads(keys.read_text())]
    probes = await provision_probes(dsn, run)
    # Earlier runs' rules stay in the database: disabled, so every run judges its own rules only.
    await disable_all_rules(dsn)
    await create_rules(dsn, load_edges, rules, probes, run)
    if not with_rules:
        await set_quiet_rules(dsn, run, False)
    processes = 4 if edges >= 400 else 2
    env = {**BENCH_ENV, "EMMA_INGEST_STATS_INTERVAL_S": "5", "EMMA_ALARM_STATS_INTERVAL_S": "5"}
    async with cloud_process(dsn, "edge alarm identity", env=env) as (port, _pid, stats):
        metadata = await login(dsn, port, ORG)
        seen: list[tuple[str, float]] = []
        ready = asyncio.Event()
        watcher = asyncio.create_task(watch(port, metadata, seen, ready))
        async with asyncio.timeout(30):
            await ready.wait()
        due: dict[str, list[float]] = {}
        acked: dict[str, dict[int, float]] = {}
        load_start = time.time()
        load = asyncio.create_task(
            run_generators(port, keys, edges, processes, ["--points", "50", "--rate", "1", "--duration", str(duration)])
        )
        # The probes run from the start, next to the load's connection storm; the storm's samples (due in
        # the first `storm` seconds) are reported apart, as bench/ingest.py does with the acks.
        probe_errors = await asyncio.gather(
            *(probe(port, e, k, duration - tail, due, acked, load_start + 1.0) for e, k in probes)
        )
        # The probes stop `tail` seconds before the load does: its 1,000 streams closing in the same
        # second keep the server busy for a second or two, which is not the steady fleet being judged.
        expected = sum(len(times) for times in due.values())
        for _ in range(100):  # the last probe samples' changes may still be on their way (10 s at most)
            if len(seen) >= expected:
                break
            await asyncio.sleep(0.1)
        results = await load
        keys.unlink()  # the edges' API keys: no file of them outlives the run
        watcher.cancel()
    samples = probe_samples(due, acked, seen, load_start)
    passes = engine_passes(stats, load_start)
    pairs = [(t, lat) for r in results for t, lat in r["latencies_ms"]]  # type: ignore[attr-defined]
    acked_points = sum(int(r["points"]) for r in results)  # type: ignore[call-overload]
    return {
        "rules_enabled": rules if with_rules else 0,
        "alarm_latency_ms": {
            "from_s": storm,
            **alarm_latency([x for x in samples if x.offset >= storm]),
            "probe_errors": sum(probe_errors),
        },
        "probe_samples": [(x.offset, x.due, x.acked, x.seen) for x in samples],
        "storm_alarm_latency_ms": {"until_s": storm, **alarm_latency([x for x in samples if x.offset < storm])},
        # The engine's own `alarm engine stats` lines (one per 5 s): a pass's length is part of every
        # alarm's latency. The slowest pass of the windows that ended after the storm.
        "engine_pass_ms_max_after_storm": max(
            (float(x["pass_ms_max"]) for x in passes if float(x["until_s"]) > storm),  # type: ignore[arg-type]
            default=float("nan"),
        ),
        "engine_passes": passes,
        "ingest": {
            "offered_points_per_s": edges * 50,
            "acked_points_per_s": acked_points / duration,
            "acked_batches": sum(int(r["acked"]) for r in results),  # type: ignore[call-overload]
            "expected_batches": edges * int(duration),
            "errors": sum(int(r["errors"]) for r in results),  # type: ignore[call-overload]
            "ack_p99_ms_after_storm": percentile([lat for t, lat in pairs if t >= storm], 0.99),
            "storm_ack_p99_ms": percentile([lat for t, lat in pairs if t < storm], 0.99),
            # How late the load generators themselves got to their sends (they share the two cores with
            # the server): part of every ack latency above, and not the server's doing.
            "generator_send_lag_ms": {
                "worst_p50": max(float(r["send_lag_ms"]["p50"]) for r in results),  # type: ignore[index]
                "worst_p99": max(float(r["send_lag_ms"]["p99"]) for r in results),  # type: ignore[index]
            },
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
            with_rules.append(await one_run(dsn, edges, rules, duration, args.storm, args.tail, f"r{run}", True))
            if not args.only_with_rules:
                without.append(await one_run(dsn, edges, rules, duration, args.storm, args.tail, f"n{run}", False))

    def spread(runs: list[dict[str, object]], part: str, key: str) -> dict[str, float] | None:
        return summary([float(r[part][key]) for r in runs]) if runs else None  # type: ignore[index]

    p99 = summary([float(r["alarm_latency_ms"]["p99"]) for r in with_rules])  # type: ignore[index]
    if not args.raw:
        for r in with_rules + without:
            r.pop("probe_samples")
    return {
        "machine": describe(version),
        "command": " ".join(["python -m bench.alarms", *sys.argv[1:]]),
        "setup": f"{edges} edges x 50 points/s, {rules} quiet THRESHOLD rules, {PROBES} probe edges "
        f"(a flip every {PROBE_PERIOD_S:g} s until {args.tail:g} s before the load ends), {duration:g} s per run, "
        f"{args.runs} runs per variant; latencies judged from {args.storm:g} s, the storm before apart",
        "with_rules": with_rules,
        "without_rules": without,
        "alarm_p99_ms": p99,
        "alarm_p99_ms_without_rules": spread(without, "alarm_latency_ms", "p99"),
        "storm_alarm_p99_ms": spread(with_rules, "storm_alarm_latency_ms", "p99"),
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
    p.add_argument(
        "--storm",
        type=float,
        default=STORM_S,
        help=f"seconds from the load's start reported apart as the connection storm (default {STORM_S:g})",
    )
    p.add_argument(
        "--tail",
        type=float,
        default=PROBE_TAIL_S,
        help=f"seconds before the load's end the probes stop (default {PROBE_TAIL_S:g})",
    )
    p.add_argument(
        "--only-with-rules", action="store_true", help="skip the runs without the rules (no ingest comparison)"
    )
    p.add_argument("--raw", action="store_true", help="keep every probe sample's times in the result")
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "alarms.json")
    args = p.parse_args()
    print_and_write(asyncio.run(main_async(args)), args.output)


if __name__ == "__main__":
    main()
