"""A benchmark script of bench/ run as a process of its own, as its tests do (tests never import bench/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# Tiny sizes finish in well under a minute; the limit only keeps a hung benchmark from hanging the suite.
TIMEOUT_S = 240


def bench_argv(module: str, *args: str) -> list[str]:
    """The command line of `python -m bench.<module> ARGS`, to be run in ROOT (which puts bench/ on
    the path)."""
    return [sys.executable, "-m", f"bench.{module}", *args]


def bench_stdout(module: str, args: Sequence[str], env: dict[str, str] | None = None) -> str:
    """`python -m bench.<module> ARGS` run to its end; what it printed. A failed run fails the test
    with the end of the benchmark's own error output."""
    done = subprocess.run(
        bench_argv(module, *args),
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def run_bench(module: str, args: Sequence[str], database_url: str, output: Path) -> Any:
    """`python -m bench.<module> ARGS --output OUTPUT` against `database_url`; its JSON result."""
    bench_stdout(module, [*args, "--output", str(output)], {"DATABASE_URL": database_url})
    return json.loads(output.read_text())
