"""Every request message is checked before any servicer or other interceptor sees it: a NUL byte in a
string, an enum number its enum does not define, or a Timestamp/Duration outside the well-known
types' range is refused with INVALID_ARGUMENT FIELD_INVALID naming the field path; the EdgeLink
bidi stream is left to its servicer (its messages keep unknown enum values).

Real grpc.aio servers on loopback with recording servicers (so the test can tell whether the
servicer ran), and the real identity service for the method that runs without credentials (Login).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from emma.command.v1 import command_pb2, command_pb2_grpc
from emma.edge.v1 import edge_link_pb2, edge_link_pb2_grpc
from emma.identity.v1 import identity_pb2, identity_pb2_grpc
from emma.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services.errors import error_info_of
from services.platform.config import ServerConfig
from services.platform.server import HostedServer, create_server, start_server
from services.platform.validation import TIMESTAMP_MIN_S
from tests.support.cloud import Host


class _Commands(command_pb2_grpc.CommandServiceServicer):
    def __init__(self) -> None:
        self.calls: list[Any] = []

    async def ListCommands(self, request: command_pb2.ListCommandsRequest, context: Any) -> Any:
        self.calls.append(request)
        return command_pb2.ListCommandsResponse()

    async def CreateFleetDispatch(self, request: command_pb2.CreateFleetDispatchRequest, context: Any) -> Any:
        self.calls.append(request)
        # Echoes the request's INPUT_ONLY ttl, as a careless servicer would.
        return command_pb2.FleetDispatch(name="organizations/o/fleetDispatches/f", ttl=request.fleet_dispatch.ttl)

    async def GetCommand(self, request: command_pb2.GetCommandRequest, context: Any) -> Any:
        self.calls.append(request)
        return command_pb2.Command(name=request.name, value=5.0, ttl=duration_pb2.Duration(seconds=60))


class _Telemetry(telemetry_pb2_grpc.TelemetryServiceServicer):
    def __init__(self) -> None:
        self.calls: list[Any] = []

    async def QueryHistory(self, request: telemetry_pb2.QueryHistoryRequest, context: Any) -> Any:
        self.calls.append(request)
        return telemetry_pb2.QueryHistoryResponse()

    async def StreamLiveValues(
        self, request: telemetry_pb2.StreamLiveValuesRequest, context: Any
    ) -> AsyncIterator[Any]:
        self.calls.append(request)
        yield telemetry_pb2.StreamLiveValuesResponse()


class _EdgeLink(edge_link_pb2_grpc.EdgeLinkServiceServicer):
    def __init__(self) -> None:
        self.received: list[edge_link_pb2.ConnectRequest] = []

    async def Connect(self, request_iterator: Any, context: Any) -> AsyncIterator[edge_link_pb2.ConnectResponse]:
        async for request in request_iterator:
            self.received.append(request)
            yield edge_link_pb2.ConnectResponse()


class _Servers:
    def __init__(self, hosted: HostedServer) -> None:
        self.hosted = hosted
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{hosted.port}")


@pytest.fixture
async def servers() -> AsyncIterator[tuple[_Servers, _Commands, _Telemetry, _EdgeLink]]:
    cfg = ServerConfig(port=0)
    server = create_server(cfg)
    commands, telemetry, edge = _Commands(), _Telemetry(), _EdgeLink()
    command_pb2_grpc.add_CommandServiceServicer_to_server(commands, server)
    telemetry_pb2_grpc.add_TelemetryServiceServicer_to_server(telemetry, server)
    edge_link_pb2_grpc.add_EdgeLinkServiceServicer_to_server(edge, server)
    hosted = await start_server(server, cfg, [])
    s = _Servers(hosted)
    try:
        yield s, commands, telemetry, edge
    finally:
        await s.channel.close()
        await hosted.drain(0)


def _refusal(exc: grpc.aio.AioRpcError) -> tuple[str, list[str]]:
    """(ErrorInfo reason, BadRequest field paths) of an INVALID_ARGUMENT answer."""
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    assert status is not None
    info = error_info_of(status)
    assert info is not None
    bad = error_details_pb2.BadRequest()
    assert any(detail.Unpack(bad) for detail in status.details)
    assert info.metadata["field"] == bad.field_violations[0].field
    return info.reason, [v.field for v in bad.field_violations]


async def test_an_enum_number_outside_its_enum_is_refused_before_the_servicer(servers: Any) -> None:
    s, commands, _, _ = servers
    stub = command_pb2_grpc.CommandServiceStub(s.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListCommands(command_pb2.ListCommandsRequest(parent="p", state=999))  # type: ignore[arg-type]
    assert _refusal(caught.value) == ("FIELD_INVALID", ["state"])
    assert "999" in (caught.value.details() or "")
    assert commands.calls == []
    # A defined value passes.
    await stub.ListCommands(command_pb2.ListCommandsRequest(parent="p", state=command_pb2.COMMAND_STATE_EXECUTED))
    assert len(commands.calls) == 1


async def test_nul_bytes_are_refused_in_nested_repeated_and_map_fields(servers: Any) -> None:
    s, commands, telemetry, _ = servers
    history = telemetry_pb2_grpc.TelemetryServiceStub(s.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await history.QueryHistory(telemetry_pb2.QueryHistoryRequest(site="s", channels=["ok", "b\x00d"]))
    assert _refusal(caught.value) == ("FIELD_INVALID", ["channels[1]"])

    dispatch = command_pb2.FleetDispatch(site="s\x00", action=999)  # type: ignore[arg-type]
    dispatch.status.skipped_edges["e\x00"] = "fine"
    dispatch.status.skipped_edges["e"] = "bad\x00"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await command_pb2_grpc.CommandServiceStub(s.channel).CreateFleetDispatch(
            command_pb2.CreateFleetDispatchRequest(parent="o", fleet_dispatch=dispatch, request_id="r")
        )
    reason, fields = _refusal(caught.value)
    assert reason == "FIELD_INVALID"
    assert sorted(fields) == sorted(
        [
            "fleet_dispatch.site",
            "fleet_dispatch.action",
            'fleet_dispatch.status.skipped_edges["e\\u0000"]',
            'fleet_dispatch.status.skipped_edges["e"]',
        ]
    )
    assert commands.calls == [] and telemetry.calls == []


async def test_times_outside_the_well_known_types_range_are_refused(servers: Any) -> None:
    s, _, telemetry, _ = servers
    stub = telemetry_pb2_grpc.TelemetryServiceStub(s.channel)
    too_early = timestamp_pb2.Timestamp(seconds=TIMESTAMP_MIN_S - 1)
    huge = duration_pb2.Duration(seconds=10**12)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.QueryHistory(
            telemetry_pb2.QueryHistoryRequest(site="s", channels=["c"], start_time=too_early, interval=huge)
        )
    assert _refusal(caught.value) == ("FIELD_INVALID", ["start_time", "interval"])
    # The first representable instant is fine here (the history has its own rules about periods).
    await stub.QueryHistory(
        telemetry_pb2.QueryHistoryRequest(
            site="s", channels=["c"], start_time=timestamp_pb2.Timestamp(seconds=TIMESTAMP_MIN_S)
        )
    )
    assert len(telemetry.calls) == 1


async def test_a_server_stream_request_is_checked_before_its_first_message(servers: Any) -> None:
    s, _, telemetry, _ = servers
    stream = telemetry_pb2_grpc.TelemetryServiceStub(s.channel).StreamLiveValues(
        telemetry_pb2.StreamLiveValuesRequest(site="organizations/o/sites/\x00")
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stream:
            pass
    assert _refusal(caught.value) == ("FIELD_INVALID", ["site"])
    assert telemetry.calls == []


async def test_the_edge_stream_keeps_unknown_enum_values_for_its_servicer(servers: Any) -> None:
    s, _, _, edge = servers
    call = edge_link_pb2_grpc.EdgeLinkServiceStub(s.channel).Connect()
    ack = edge_link_pb2.ConnectRequest(command_ack=edge_link_pb2.CommandAck(command="c", status=77))  # type: ignore[arg-type]
    await call.write(ack)
    await asyncio.wait_for(call.read(), timeout=10)
    await call.done_writing()
    assert [r.command_ack.status for r in edge.received] == [77]


async def test_login_with_a_nul_byte_is_refused_without_credentials(host: Host) -> None:
    async with host(["identity"]) as (hosted, _), grpc.aio.insecure_channel(f"127.0.0.1:{hosted.port}") as channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Login(identity_pb2.LoginRequest(email="admin\x00@example.com", password="x"))
        assert _refusal(caught.value) == ("FIELD_INVALID", ["email"])
        # Without the NUL byte the same call reaches the service and fails as a login does.
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Login(identity_pb2.LoginRequest(email="admin@example.com", password="x"))
        assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_input_only_fields_never_leave_the_server(servers: Any) -> None:
    s, commands, _, _ = servers
    stub = command_pb2_grpc.CommandServiceStub(s.channel)
    command = await stub.GetCommand(command_pb2.GetCommandRequest(name="c"))
    assert command.value == 5.0 and command.name == "c"
    assert not command.HasField("ttl")
    dispatch = command_pb2.FleetDispatch(site="s", ttl=duration_pb2.Duration(seconds=30))
    created = await stub.CreateFleetDispatch(
        command_pb2.CreateFleetDispatchRequest(parent="o", fleet_dispatch=dispatch, request_id="r")
    )
    assert created.name == "organizations/o/fleetDispatches/f" and not created.HasField("ttl")
    assert commands.calls[-1].fleet_dispatch.ttl.seconds == 30  # the servicer got it; it only stays in
