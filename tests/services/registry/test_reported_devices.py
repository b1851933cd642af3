"""The devices an edge reports in its Hello show in ListDevices and GetDevice next to registered ones.

`GET .../edges/gw-1/devices` used to answer [] for a running edge: it read only devices registered
through the API, while what the edge reported sat in the inventory the command service reads.
"""

from __future__ import annotations

import asyncpg
import grpc
import pytest
from emma.common.v1 import types_pb2
from emma.edge.v1 import edge_link_pb2
from emma.registry.v1 import registry_pb2, registry_pb2_grpc
from google.protobuf import field_mask_pb2

from tests.support.cloud import Host, new_edge
from tests.support.edge_client import EdgeStream, battery_inventory, hello
from tests.support.identity import authed_channel, grant


def _pv(device_id: str) -> edge_link_pb2.DeviceInventoryItem:
    return edge_link_pb2.DeviceInventoryItem(
        device_id=device_id,
        kind=types_pb2.DEVICE_KIND_PV_INVERTER,
        driver="modbus.sunspec",
        model="Acme HX-10",
        channels=[types_pb2.ChannelSpec(name="ActivePower", unit="W", access=types_pb2.CHANNEL_ACCESS_READ_ONLY)],
    )


async def test_devices_the_edge_reports_are_listed_and_registering_one_gives_it_a_profile(
    host: Host, db: asyncpg.Connection
) -> None:
    admin = await grant(db, "acme", "admin")
    edge, _, key = await new_edge(db, "reported")
    async with host(["edge", "registry"]) as (server, _):
        stream = EdgeStream(server.port)
        try:
            await stream.send(hello(str(edge), key, devices=[battery_inventory("battery_1"), _pv("pv_1")]))
            await stream.recv_kind("welcome")
        finally:
            await stream.close()
        async with authed_channel(server.port, admin.token) as ch:
            reg = registry_pb2_grpc.RegistryServiceStub(ch)
            listed = await reg.ListDevices(registry_pb2.ListDevicesRequest(parent=str(edge)))
            assert [(d.name, d.kind, d.device_profile, d.display_name) for d in listed.devices] == [
                (f"{edge}/devices/battery_1", types_pb2.DEVICE_KIND_BATTERY, "", "battery_1"),
                (f"{edge}/devices/pv_1", types_pb2.DEVICE_KIND_PV_INVERTER, "", "Acme HX-10"),
            ]
            assert all(d.HasField("update_time") for d in listed.devices)
            got = await reg.GetDevice(registry_pb2.GetDeviceRequest(name=f"{edge}/devices/pv_1"))
            assert got == listed.devices[1]

            # Registered with a profile, the battery is listed once, as registered.
            profile = await reg.CreateDeviceProfile(
                registry_pb2.CreateDeviceProfileRequest(
                    parent="organizations/acme",
                    device_profile_id="battery-10",
                    device_profile=registry_pb2.DeviceProfile(
                        display_name="Battery 10 kWh",
                        kind=types_pb2.DEVICE_KIND_BATTERY,
                        channels=list(battery_inventory().channels),
                    ),
                )
            )
            await reg.CreateDevice(
                registry_pb2.CreateDeviceRequest(
                    parent=str(edge),
                    device_id="battery_1",
                    device=registry_pb2.Device(display_name="Basement battery", device_profile=profile.name),
                )
            )
            pages: list[list[tuple[str, str]]] = []
            token = ""
            while True:
                page = await reg.ListDevices(
                    registry_pb2.ListDevicesRequest(parent=str(edge), page_size=1, page_token=token)
                )
                pages.append([(d.display_name, d.device_profile) for d in page.devices])
                if not (token := page.next_page_token):
                    break
            assert pages == [[("Basement battery", profile.name)], [("Acme HX-10", "")]]

            # A reported device is changed by registering it, not by updating it; the error says so.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await reg.UpdateDevice(
                    registry_pb2.UpdateDeviceRequest(
                        device=registry_pb2.Device(name=f"{edge}/devices/pv_1", display_name="Roof"),
                        update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
                    )
                )
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert "reported by its edge but not registered; CreateDevice" in (caught.value.details() or "")

            # Another organization's admin sees none of them, not even that they exist.
            stranger = await grant(db, "other-org", "admin")
            async with authed_channel(server.port, stranger.token) as other_ch:
                other = registry_pb2_grpc.RegistryServiceStub(other_ch)
                for call in (
                    other.ListDevices(registry_pb2.ListDevicesRequest(parent=str(edge))),
                    other.GetDevice(registry_pb2.GetDeviceRequest(name=f"{edge}/devices/pv_1")),
                ):
                    with pytest.raises(grpc.aio.AioRpcError) as denied:
                        await call
                    assert denied.value.code() == grpc.StatusCode.NOT_FOUND  # not even its existence

            # Neither registered nor reported: still not found.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await reg.GetDevice(registry_pb2.GetDeviceRequest(name=f"{edge}/devices/ev_1"))
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
