"""What machine a benchmark ran on: printed and stored next to every figure (`python -m bench.machine`)."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# A child that sends back every byte it reads, until "q" or the end of its input.
_ECHO = "import os\nwhile (b := os.read(0, 1)) not in (b'', b'q'):\n    os.write(1, b)\n"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def pipe_round_trip_us(rounds: int = 2_000) -> float:
    """Median µs of a one-byte round trip to another process on another CPU over two pipes: a wake-up
    of another process and of this one, which every latency figure here is built of. Machines of the
    same kind differ in it: session 16's (68-78 µs) answered a gRPC health check in 2.5-2.9 ms where
    session 15's took 0.9-1.1 ms, at the same CPU speed (docs/performance.md, session 16's `make
    bench`)."""
    cpus = sorted(os.sched_getaffinity(0))
    child = subprocess.Popen([sys.executable, "-c", _ECHO], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    assert child.stdin is not None and child.stdout is not None
    send, receive = child.stdin.fileno(), child.stdout.fileno()
    took: list[float] = []
    # Each on a CPU of its own: left to the scheduler, the two sometimes shared one and the round trip
    # took 3 µs, sometimes not and it took 60-70 µs (session 16's machine), so the figure said nothing.
    if len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[0]})
        os.sched_setaffinity(child.pid, {cpus[1]})
    try:
        for _ in range(rounds):
            start = time.perf_counter()
            os.write(send, b"x")
            os.read(receive, 1)
            took.append(time.perf_counter() - start)
    finally:
        os.sched_setaffinity(0, cpus)
        os.write(send, b"q")
        child.wait(10)
    return round(statistics.median(took) * 1e6, 1)


def _count_up(steps: int) -> int:
    total = 0
    for i in range(steps):
        total += i
    return total


def python_step_ns(steps: int = 2_000_000, rounds: int = 5) -> float:
    """Median ns of one step of a plain Python loop (an addition to a local): the speed of tight work
    that fits in the CPU's caches. It does not tell everything: on session 17's machine it was 39-63 ns,
    as fast as elsewhere, while a service or PostgreSQL needed 2-4 times the CPU per request of session
    15's (docs/performance.md, session 17's `make bench`); with the round trip above it places a
    machine on two of the axes the figures depend on."""
    took = []
    for _ in range(rounds):
        start = time.perf_counter()
        _count_up(steps)
        took.append(time.perf_counter() - start)
    return round(statistics.median(took) / steps * 1e9, 1)


def memory_step_ns(links: int = 4_000_000, steps: int = 1_000_000, rounds: int = 3) -> float:
    """Median ns of one step of a Python loop that follows a random chain through a list of 4 million
    integers (about 160 MB, far more than any CPU cache): each step waits for memory twice (the list's
    slot, then the integer), so this is the loop step above plus the machine's memory latency. Session
    18's machine took about 470 ns a step here against 32 in a chain that fits the cache: a service's
    or PostgreSQL's working set pays that latency, a tight loop does not (docs/performance.md)."""
    import numpy as np  # only here: `python -m bench.machine` stays light for the other probes

    order = np.random.default_rng(18).permutation(links)
    following = np.empty(links, dtype=np.int64)
    following[order] = np.roll(order, -1)  # one cycle through every link, in random order
    chain: list[int] = following.tolist()
    took = []
    for _ in range(rounds):
        link = 0
        start = time.perf_counter()
        for _ in range(steps):
            link = chain[link]
        took.append(time.perf_counter() - start)
    return round(statistics.median(took) / steps * 1e9, 1)


def steal_pct() -> float:
    """Share of this machine's CPU time since boot that the hypervisor gave to others ("steal" in
    /proc/stat), in %: on a shared host, time the figures here could not have."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0.0
    total = sum(fields[:8])  # user .. steal; guest time is already counted in user
    return round(100 * fields[7] / total, 1) if len(fields) > 7 and total else 0.0


def page_reclaimer(root: Path = Path("/sys/kernel/mm/damon/admin/kdamonds")) -> str:
    """The kernel's proactive page reclaim when one runs ("damon pageout"), else "". Session 18's
    machine ran DAMON with a pageout scheme: a kernel thread that samples which memory is used and
    pages out what was not, so files read again (a process's code and libraries, PostgreSQL's tables)
    come back from the disk. During one `make test` there it re-read 750 MB and took 6 s of CPU, small
    beside the suite's 13 minutes of CPU (docs/performance.md); a machine where it does more shows here."""
    actions = []
    for state in sorted(root.glob("*/state")):
        try:
            if state.read_text().strip() != "on":
                continue
            actions += [a.read_text().strip() for a in sorted(state.parent.glob("contexts/*/schemes/*/action"))]
        except OSError:
            continue
    return " ".join(f"damon {a}" for a in sorted(set(actions)))


def describe(postgres_version: str = "") -> dict[str, object]:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gib": memory_gib(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "postgres": postgres_version,
        "pipe_round_trip_us": pipe_round_trip_us(),
        "python_step_ns": python_step_ns(),
        "memory_step_ns": memory_step_ns(),
        "steal_pct": steal_pct(),
        "page_reclaimer": page_reclaimer(),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(describe()))
