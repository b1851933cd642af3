"""The `emma` command: one entry point for every role of the one distribution.

Each subcommand imports what it needs only when it runs, so `emma edge` on a site computer does not
load the cloud services and `emma --help` is instant. Errors a person can fix are printed as one line
(`emma <command>: error: ...`) with a non-zero exit code, never as a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from core.errors import ConfigError, EmmaError
from core.stop_with_parent import stop_with_parent
from launcher.task_args import add_task_group

EXIT_USAGE = 2
EXIT_FAILURE = 1


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that points at --help and names every unknown flag.

    argparse reports a missing required argument (the COMMAND, `--config`) before unrecognized ones,
    so `emma --bogus` would only say a COMMAND is required; the unknown flags are named first.
    """

    _argv: list[str] = []

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def _unknown_flags(self) -> list[str]:
        commands = {name for a in self._actions if isinstance(a, argparse._SubParsersAction) for name in a.choices}
        unknown: list[str] = []
        for token in self._argv:
            if token in commands or token == "--":
                break  # the rest is the subcommand's to judge
            flag = token.split("=", 1)[0]
            if flag.startswith("-") and len(flag) > 1 and flag not in self._option_string_actions:
                unknown.append(token)
        return unknown

    def error(self, message: str) -> NoReturn:
        unknown = self._unknown_flags()
        if "required" in message and unknown:
            message = f"unrecognized arguments: {' '.join(unknown)}; {message}"
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _add_server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="interface to listen on (EMMA_GRPC_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="gRPC port (EMMA_GRPC_PORT, default 50051)")
    p.add_argument(
        "--workers",
        type=int,
        help="processes serving the gRPC port together, each a full replica (EMMA_GRPC_WORKERS, default 1)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="emma",
        description="EMMA energy management: edge daemons, cloud gRPC services, REST gateway.",
        epilog="Configuration comes from EMMA_* environment variables; see docs/configuration.md.",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("EMMA_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    up = sub.add_parser(
        "up",
        help="run the whole stack on this machine (embedded PostgreSQL)",
        description="Start embedded PostgreSQL (unless DATABASE_URL is set), apply "
        "migrations and serve every cloud service. Ctrl-C stops everything.",
    )
    _add_server_flags(up)
    up.add_argument("--state-dir", help="where data and local secrets live (EMMA_STATE_DIR, default .emma)")
    up.add_argument("--gateway-port", type=int, help="REST gateway port, 0 picks one (EMMA_GATEWAY_PORT, default 8080)")

    serve = sub.add_parser(
        "serve",
        help="host the named cloud services in one gRPC server",
        description="Host cloud services in one grpc.aio server with health and reflection. Needs DATABASE_URL.",
    )
    serve.add_argument(
        "services",
        nargs="+",
        metavar="SERVICE",
        help="edge, telemetry, command, registry, identity, audit, or all",
    )
    _add_server_flags(serve)
    serve.add_argument("--migrate", action="store_true", help="apply pending migrations before serving")

    sub.add_parser(
        "migrate",
        help="apply pending database migrations",
        description="Apply pending SQL migrations in order under an advisory lock. Needs DATABASE_URL.",
    )

    gw = sub.add_parser(
        "gateway",
        help="serve the REST/JSON gateway for browsers",
        description="Serve REST/JSON generated from the contracts' HTTP annotations.",
    )
    # dest names differ from the server flags' so _apply_server_flags leaves EMMA_GRPC_* alone.
    gw.add_argument(
        "--target", help="gRPC address of the services, host:port (EMMA_GATEWAY_TARGET, default 127.0.0.1:50051)"
    )
    gw.add_argument("--host", dest="http_host", help="interface to listen on (EMMA_GATEWAY_HOST, default 127.0.0.1)")
    gw.add_argument(
        "--port", dest="http_port", type=int, help="HTTP port, 0 picks a free one (EMMA_GATEWAY_PORT, default 8080)"
    )

    edge = sub.add_parser(
        "edge",
        help="run an edge daemon for one site",
        description="Run the site daemon: devices, control cycle, outbox, uplink.",
    )
    # Not required by argparse: `emma edge init` needs neither; main() asks for one when running a site.
    src = edge.add_mutually_exclusive_group()
    src.add_argument("--config", help="the site's TOML file")
    src.add_argument("--simulate", action="store_true", help="run a ready-made simulated demo site")
    edge.add_argument(
        "--data-dir",
        default=".emma/edge-sim",
        help="where --simulate keeps its outbox (default .emma/edge-sim; `emma up`'s demo edge has .emma/edge-demo)",
    )
    edge.epilog = "To connect a new site to a cloud: `emma edge init --help` (docs/connect-a-site.md)."
    edge_sub = edge.add_subparsers(dest="edge_command", metavar="TASK", parser_class=_Parser)
    from launcher.edge_init_args import add_init_parser

    add_init_parser(edge_sub)
    from launcher.market_args import add_market_parser

    add_market_parser(sub)
    from launcher.forecast_args import add_forecast_parser

    add_forecast_parser(sub)
    from launcher.optimizer_args import add_optimize_parser

    add_optimize_parser(sub)
    from launcher.service_account_args import add_service_account_parser

    add_service_account_parser(sub)

    admin_sub = add_task_group(
        sub,
        "admin",
        help="administer organizations, users and edge keys",
        description="Administrative tasks against the database (DATABASE_URL).",
        dest="admin_command",
    )
    org = admin_sub.add_parser("create-org", help="create an organization", description="Create an organization.")
    org.add_argument("org_id")
    org.add_argument("--display-name", help="the name shown to people (default: the id)")
    user = admin_sub.add_parser(
        "create-user",
        help="create a user with a role in an organization",
        description="Create a user with a role in an organization.",
    )
    user.add_argument("email")
    user.add_argument("--org", required=True, help="the organization id the user joins")
    user.add_argument("--role", choices=["viewer", "operator", "admin"], default="viewer")
    user.add_argument("--display-name", help="the name shown to people")
    user.add_argument(
        "--platform-admin", action="store_true", help="may create and delete organizations (operators of EMMA only)"
    )
    user.epilog = (
        "The password comes from EMMA_ADMIN_PASSWORD, else a prompt on a terminal, else it is generated and "
        "printed once."
    )
    key = admin_sub.add_parser(
        "create-edge-key",
        help="create an API key for an edge",
        description="Create an API key for an edge; the secret is printed once.",
    )
    key.add_argument("edge", help="organizations/{org}/sites/{site}/edges/{edge}")
    key.add_argument("--display-name", help='where the key is used, for example "gateway pc in the basement"')
    return parser


def settings(args: argparse.Namespace) -> dict[str, str]:
    """The environment with the command line's flags on top: flags win, and the config dataclasses read
    this mapping (never os.environ directly), so no flag is passed by writing the process environment."""
    env = dict(os.environ)
    if getattr(args, "host", None):
        env["EMMA_GRPC_HOST"] = args.host
    if getattr(args, "port", None) is not None:
        env["EMMA_GRPC_PORT"] = str(args.port)
    if getattr(args, "workers", None) is not None:
        env["EMMA_GRPC_WORKERS"] = str(args.workers)
    if getattr(args, "state_dir", None):
        env["EMMA_STATE_DIR"] = args.state_dir
    if getattr(args, "gateway_port", None) is not None:
        env["EMMA_GATEWAY_PORT"] = str(args.gateway_port)
    return env


def _run(args: argparse.Namespace) -> int:
    from services.platform.config import PlatformConfig

    if args.command == "market":  # reads a file; needs no settings, so a bad EMMA_* cannot stop it
        from launcher.market_cli import run_market

        return run_market(args)
    env = settings(args)
    config = PlatformConfig.from_env(env)
    if args.command == "up":
        from launcher.up import run_up

        asyncio.run(run_up(config))
        return 0
    if args.command == "serve":
        from services import catalog
        from services.cloud import serve_until_signal
        from services.platform.server import check_port_free

        catalog.resolve(args.services)  # unknown names fail before anything starts
        if config.database.url is None:
            raise_config("DATABASE_URL is not set (or use `emma up` for an embedded PostgreSQL)")
        if config.server.worker_index == 0:  # the further workers join the port the first one bound
            # Before the services' background work starts (and logs), so a clash is the only line printed.
            check_port_free(config.server.host, config.server.port)

        def announce(hosted: object) -> None:
            port = getattr(hosted, "port", "?")
            # One write of the whole line (print() hands the text and the newline over apart): in one CI
            # run a log line on the shared pipe continued the announcement's line, so keep them whole.
            sys.stdout.write(f"emma serve: {', '.join(args.services)} on {config.server.host}:{port}\n")
            sys.stdout.flush()

        asyncio.run(
            serve_until_signal(
                args.services,
                config,
                apply_migrations=args.migrate,
                announce=announce,
                worker_argv=worker_command(args.log_level, args.services),
            )
        )
        return 0
    if args.command == "migrate":
        from services.cloud import run_migrations

        if config.database.url is None:
            raise_config("DATABASE_URL is not set")
        applied = asyncio.run(run_migrations(config))
        print(f"emma migrate: applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ""))
        return 0
    if args.command == "gateway":
        from gateway.config import GatewayConfig
        from gateway.server import serve as serve_gateway

        gateway_config = GatewayConfig.from_env(env, target=args.target, host=args.http_host, port=args.http_port)

        def announce_gateway(url: str) -> None:
            print(f"emma gateway: {url} (docs {url}/docs) -> gRPC {gateway_config.target}", flush=True)

        asyncio.run(serve_gateway(gateway_config, announce=announce_gateway))
        return 0
    if args.command == "edge" and args.edge_command == "init":
        from launcher.edge_init import run_init

        return asyncio.run(run_init(args, env))
    if args.command == "edge":
        from edge_daemon.main import run as run_edge

        return run_edge(args.config, args.simulate, args.data_dir)
    if args.command == "forecast":
        from launcher.forecast_cli import run_forecast_cli

        return asyncio.run(run_forecast_cli(args, env))
    if args.command == "optimize":
        from launcher.optimizer_cli import run_optimize_cli

        return asyncio.run(run_optimize_cli(args, env))
    if args.command == "service-account":
        from launcher.service_account_cli import run_service_account_cli

        return asyncio.run(run_service_account_cli(args, env))
    if args.command == "admin":
        from launcher.admin_cli import run_admin

        return asyncio.run(run_admin(args, config))
    raise AssertionError(args.command)


def worker_command(log_level: str, services: Sequence[str]) -> list[str]:
    """The command a further worker of `emma serve --workers N` runs (the port and its index come by
    EMMA_* variables from the first worker, services/cloud.py)."""
    return [sys.executable, "-m", "launcher.cli", "--log-level", log_level, "serve", *services]


def raise_config(message: str) -> NoReturn:
    raise ConfigError(message)


def main(argv: Sequence[str] | None = None) -> int:
    stop_with_parent()  # a process `emma up` started goes when it goes (core/stop_with_parent.py)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "edge" and args.edge_command is None and not (args.config or args.simulate):
        edge_parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["edge"]
        edge_parser.error("one of the arguments --config --simulate is required (or the task init)")
    if args.command != "edge":  # the edge daemon configures its own logging (with its site's fields)
        # One JSON object per line for every role, so logs of cloud and edge join on the same fields.
        from core.logs import configure_logging

        configure_logging(args.log_level, static={"process": "emma " + args.command})
    command = args.command + (f" {args.admin_command}" if args.command == "admin" else "")
    if args.command == "forecast":
        command += f" {args.forecast_command}"
    if args.command == "optimize":
        command += f" {args.optimize_command}"
    if args.command == "service-account":
        command += f" {args.service_account_command}"
    if args.command == "edge" and args.edge_command:
        command += f" {args.edge_command}"
    try:
        return _run(args)
    except EmmaError as exc:
        print(f"emma {command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
