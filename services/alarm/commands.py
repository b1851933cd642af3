"""Sending an alarm's proposed command through CommandService's gRPC API, as the caller.

The alarm domain does not import the command domain (commands are stored, validated, rate-limited and
relayed there alone); it calls CreateCommand with the operator's own authorization, so the command is
checked and audited exactly as one the operator created directly, and a VIEWER is refused by
CommandService as well as by this service's policy.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Any

import grpc
from emma.alarm.v1 import alarm_pb2 as pb
from emma.command.v1 import command_pb2, command_pb2_grpc
from emma.common.v1 import errors_pb2
from google.rpc import status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.errors import ApiError, error_info_of, invalid_field
from services.names import parse_channel

_DETAILS = "grpc-status-details-bin"
TIMEOUT_S = 10.0
COMMAND_SERVICE = command_pb2.DESCRIPTOR.services_by_name["CommandService"].full_name
# How long one candidate address may take to answer the health check while the own server is looked for.
_PROBE_TIMEOUT_S = 2.0
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column


def _listening_addresses(proc: Path = Path("/proc")) -> list[str]:
    """The host:port of every TCP socket this process listens on, wildcard binds as loopback.

    Read from /proc (Linux, where EMMA runs): the sockets among this process's file descriptors that
    /proc/net/tcp{,6} lists in LISTEN state. Elsewhere, or when /proc is not readable, none."""
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in (proc / "self" / "fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    found: list[str] = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            lines = (proc / "self" / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 10 or cols[3] != _LISTEN or cols[9] not in inodes:
                continue
            hex_host, hex_port = cols[1].split(":")
            # The kernel prints the address as 32-bit words in host (little-endian) order.
            raw = b"".join(bytes.fromhex(hex_host[i : i + 8])[::-1] for i in range(0, len(hex_host), 8))
            host = socket.inet_ntop(family, raw)
            if host.startswith("::ffff:") and "." in host:  # an IPv4 address on a dual-stack socket
                host = host.removeprefix("::ffff:")
            if host in ("0.0.0.0", "::"):  # bound to every address: this process reaches it on loopback
                host = "127.0.0.1" if family == socket.AF_INET else "::1"
            found.append(f"[{host}]:{int(hex_port, 16)}" if ":" in host else f"{host}:{int(hex_port, 16)}")
    return found


async def own_server_serving(service: str, proc: Path = Path("/proc")) -> str | None:
    """The address of this process's own gRPC server if its health service reports `service` as
    SERVING; None when the process serves it nowhere. The server's bound port is not known when the
    servicer is built (a configured port 0 is chosen at bind time), so it is looked up here."""
    for address in _listening_addresses(proc):
        with contextlib.suppress(grpc.aio.AioRpcError, OSError):
            async with grpc.aio.insecure_channel(address) as channel:
                answer = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=_PROBE_TIMEOUT_S
                )
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return address
    return None


def command_of(alarm: pb.Alarm, proposed: pb.ProposedCommand) -> tuple[str, command_pb2.Command]:
    """(the edge's resource name, the command) for a proposed command of an alarm on a channel."""
    try:
        source = parse_channel(alarm.source, "name")
    except ApiError:
        raise invalid_field(
            "name", f"{alarm.name} is not about a device's channel; it has no device to command"
        ) from None
    address = proposed.channel if "/" in proposed.channel else f"{source.address.split('/')[0]}/{proposed.channel}"
    command = command_pb2.Command(channel=address, value=proposed.value)
    if proposed.HasField("ttl"):
        command.ttl.CopyFrom(proposed.ttl)
    return str(source.edge), command


def _passed_on(e: grpc.aio.AioRpcError) -> ApiError:
    """CommandService's error as this call's own, with its reason and metadata kept."""
    reason = errors_pb2.ERROR_REASON_UNSPECIFIED
    metadata: dict[str, str] = {}
    trailers: Any = e.trailing_metadata() or ()
    for key, value in trailers:
        if key == _DETAILS and isinstance(value, bytes):
            info = error_info_of(status_pb2.Status.FromString(value))
            if info is not None:
                metadata = dict(info.metadata)
                with contextlib.suppress(ValueError):  # a reason this contract does not know
                    reason = errors_pb2.ErrorReason.Value("ERROR_REASON_" + info.reason)
    return ApiError(e.code(), reason, f"CommandService: {e.details()}", metadata=metadata)


class CommandClient:
    """One channel to CommandService for the process, opened on first use: at `target`, or when that is
    empty at this process's own server, wherever it was bound."""

    def __init__(self, target: str) -> None:
        self._target = target
        self._channel: grpc.aio.Channel | None = None

    async def _open(self) -> grpc.aio.Channel:
        if self._channel is None:
            target = self._target or await own_server_serving(COMMAND_SERVICE)
            if not target:
                raise ApiError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    errors_pb2.ERROR_REASON_STATE_CONFLICT,
                    "this process serves no CommandService to send the command through; "
                    "set EMMA_ALARM_COMMAND_TARGET to where it runs",
                )
            self._channel = grpc.aio.insecure_channel(target)
        return self._channel

    async def create(
        self, edge: str, command: command_pb2.Command, request_id: str, authorization: str
    ) -> command_pb2.Command:
        channel = await self._open()
        stub = command_pb2_grpc.CommandServiceStub(channel)
        try:
            created: command_pb2.Command = await stub.CreateCommand(
                command_pb2.CreateCommandRequest(parent=edge, command=command, request_id=request_id),
                metadata=(("authorization", authorization),),
                timeout=TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as e:
            raise _passed_on(e) from None
        return created

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None
