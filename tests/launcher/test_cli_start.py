"""`emma` builds every subcommand's parser on each start, so the parsers (launcher/*_args.py) import
nothing but argparse and each other: the gRPC stubs, the database driver, numpy and the services are
imported by the subcommand that runs. Before, building the parser imported all of them (0.8-1.0 s of
every `emma` invocation on a slow 2-core machine, `emma --help` included)."""

from __future__ import annotations

import json
import subprocess
import sys

from launcher import forecast_args, forecast_cli, service_account_args, service_account_cli

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
