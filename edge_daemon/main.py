"""Command-line entry of the edge daemon: `emma edge --config site.toml` / `emma edge --simulate`.

`launcher.cli` delegates its `edge` subcommand to `main(argv)`. When the configuration has a [cloud]
section, the uplink is created by `edge_daemon.uplink.create_uplink(config)` before the daemon starts,
so an unusable uplink setting (an unreadable key file) fails the start like any other config error.
Without a [cloud] section the daemon runs offline, still filling the outbox, and says so in one line
at start; `--simulate` is such a site. Its default data folder (`.emma/edge-sim`) is its own: the
demo edge of `emma up` keeps its outbox, key and site file in `.emma/edge-demo`, and two daemons on
one outbox would take each other's batch numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from core.logs import configure_logging
from edge_daemon.config import SiteConfig, demo_site_config, load_config
from edge_daemon.daemon import EdgeDaemon, Uplink
from edge_daemon.errors import SiteConfigError

log = logging.getLogger(__name__)

SIMULATE_DATA_DIR = ".emma/edge-sim"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emma edge", description="Run the EMMA edge daemon.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="site configuration (TOML)")
    source.add_argument("--simulate", action="store_true", help="run the ready-made simulated demo site")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(SIMULATE_DATA_DIR),
        help=f"where --simulate keeps its outbox (default: {SIMULATE_DATA_DIR})",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser


def offline_notice(config: SiteConfig, simulated: bool) -> str:
    why = "the simulated demo site has no cloud" if simulated else f"{config.source} has no [cloud] section"
    return (
        f"emma edge: running OFFLINE ({why}): nothing is sent; telemetry waits in the outbox "
        f"{config.outbox.path} (to connect a site to a cloud: docs/connect-a-site.md)"
    )


def load_uplink(config: SiteConfig) -> Uplink | None:
    if config.cloud is None:
        return None
    try:
        module = importlib.import_module("edge_daemon.uplink")
    except ModuleNotFoundError as exc:
        if exc.name != "edge_daemon.uplink":
            raise
        log.warning("no uplink available; running offline", extra={"endpoint": config.cloud.endpoint})
        return None
    uplink: Uplink = module.create_uplink(config)
    return uplink


async def run_edge(config: SiteConfig, uplink: Uplink | None = None) -> None:
    daemon = EdgeDaemon(config, uplink=uplink if uplink is not None else load_uplink(config))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, daemon.stop)
    try:
        await daemon.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level.upper())
    try:
        config = demo_site_config(args.data_dir) if args.simulate else load_config(args.config)
        uplink = load_uplink(config)
    except SiteConfigError as exc:
        print(f"emma edge: {exc}", file=sys.stderr)
        return 2
    if config.cloud is None:
        print(offline_notice(config, args.simulate), file=sys.stderr, flush=True)
    asyncio.run(run_edge(config, uplink))
    return 0


def run(config: str | Path | None, simulate: bool, data_dir: str | Path = SIMULATE_DATA_DIR) -> int:
    """What `emma edge --config PATH | --simulate` calls after parsing its own arguments."""
    argv = ["--simulate", "--data-dir", str(data_dir)] if simulate else ["--config", str(config)]
    return main(argv)
