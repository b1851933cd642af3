"""`emma` builds every subcommand's parser on each start, so the parsers (launcher/*_args.py) import
nothing but argparse and each other: the gRPC stubs, the database driver, numpy and the services are
imported by the subcommand that runs. Before, building the parser imported all of them (0.8-1.0 s of
every `emma` invocation on a slow 2-core machine, `emma --help` included)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from launcher import forecast_args, forecast_cli, service_account_args, service_account_cli
from tests.support.cli_process import run_emma

HEAVY = {"grpc", "asyncpg", "numpy", "pandas", "google", "emma", "services", "edge_daemon", "gateway", "opentelemetry"}

_PROBE = """
import json, sys
from launcher.cli import build_parser
build_parser()
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def test_building_the_parser_imports_none_of_the_heavy_packages() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True)
    imported = set(json.loads(out.stdout))
    assert "launcher" in imported and "argparse" in imported
    assert imported & HEAVY == set()


def test_every_choice_the_parsers_offer_is_one_the_commands_map() -> None:
    assert sorted(forecast_args.KIND_NAMES) == sorted(forecast_cli.KINDS)
    assert sorted(service_account_args.ROLE_NAMES) == sorted(service_account_cli.ROLES)


def test_a_process_whose_starter_is_already_gone_stops_at_once() -> None:
    """EMMA_STOP_WITH_PARENT names the `emma up` that started this process (core/stop_with_parent.py);
    when this process's parent is not that one any more, it says so and stops before doing anything."""
    gone = run_emma("--help", env={"EMMA_STOP_WITH_PARENT": "1"})  # pid 1 never started this test's child
    assert gone.returncode == 1 and gone.stdout == ""
    assert gone.stderr.strip() == "emma: the process that started this one (pid 1) has exited; stopping"
    ours = run_emma("--help", env={"EMMA_STOP_WITH_PARENT": str(os.getpid())})  # started by this process
    assert ours.returncode == 0 and "usage: emma" in ours.stdout
