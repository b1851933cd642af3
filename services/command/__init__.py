"""Commands: CommandService, fleet dispatch, and the relay of commands to the edge streams."""

from __future__ import annotations

from typing import Any

from emma.command.v1 import command_pb2, command_pb2_grpc

from services.command.relay import ACKS_PER_SECOND, CommandRelay, CommandSink, TokenBucket
from services.identity import Access
from services.platform.registration import ServiceSpec, service_spec
from services.platform.runtime import Runtime

# What other packages may use of commands; everything else in services/command/ is private.
__all__ = [
    "ACKS_PER_SECOND",
    "DEPENDS_ON",
    "POLICY",
    "SERVICES",
    "TABLES",
    "CommandRelay",
    "CommandSink",
    "TokenBucket",
]

# The services this domain may import (their package faces); see docs/architecture.md.
DEPENDS_ON = ("identity", "registry", "telemetry")
# The tables (and SQL functions) this domain alone reads and writes; other domains go through this package or its RPCs.
TABLES = (
    "app.commands",
    "app.command_events",
    "app.fleet_dispatches",
    "app.create_command",
    "app.deliver_commands",
    "app.apply_command_acks",
)


def _command(runtime: Runtime) -> Any:
    from services.command.servicer import CommandServicer

    return CommandServicer(runtime)


# The gRPC services this domain serves (services/catalog.py hosts them).
SERVICES: tuple[ServiceSpec, ...] = (
    service_spec(
        "command", command_pb2, "CommandService", command_pb2_grpc.add_CommandServiceServicer_to_server, _command
    ),
)


_CMD = "/emma.command.v1.CommandService/"
# The minimum role of each RPC (services.identity.Access); the catalog registers it with the interceptor.
POLICY: dict[str, Access] = {
    _CMD + "CreateCommand": Access.OPERATOR,
    _CMD + "GetCommand": Access.VIEWER,
    _CMD + "ListCommands": Access.VIEWER,
    _CMD + "WatchCommand": Access.VIEWER,
    _CMD + "CancelCommand": Access.OPERATOR,
    _CMD + "CreateFleetDispatch": Access.OPERATOR,
    _CMD + "GetFleetDispatch": Access.VIEWER,
    _CMD + "ListFleetDispatches": Access.VIEWER,
}
