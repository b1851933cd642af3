"""Sending an alarm's proposed command through CommandService's gRPC API, as the caller.

The alarm domain does not import the command domain (commands are stored, validated, rate-limited and
relayed there alone); it calls CreateCommand with the operator's own authorization, so the command is
checked and audited exactly as one the operator created directly, and a VIEWER is refused by
CommandService as well as by this service's policy.
"""

from __future__ import annotations

import contextlib
from typing import Any

import grpc
from emma.alarm.v1 import alarm_pb2 as pb
from emma.command.v1 import command_pb2, command_pb2_grpc
from emma.common.v1 import errors_pb2
from google.rpc import status_pb2

from services.errors import ApiError, error_info_of, invalid_field
from services.names import parse_channel

_DETAILS = "grpc-status-details-bin"
TIMEOUT_S = 10.0


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
    """One channel to CommandService for the process, opened on first use."""

    def __init__(self, target: str) -> None:
        self._target = target
        self._channel: grpc.aio.Channel | None = None

    async def create(
        self, edge: str, command: command_pb2.Command, request_id: str, authorization: str
    ) -> command_pb2.Command:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self._target)
        stub = command_pb2_grpc.CommandServiceStub(self._channel)
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
