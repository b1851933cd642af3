"""SunSpec discovery and model mapping against a pymodbus server laid out as a SunSpec device.

The register image is built here from pysunspec2's model definitions and its own value encoders
(`sunspec2.mb`), independently of the driver's decoding: points given a value are encoded with the
model's type, every other point gets SunSpec's "not implemented" pattern for its type.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from sunspec2 import mb  # type: ignore[import-untyped]

from edge_daemon.channels import Category, ChannelStore
from edge_daemon.config import parse_config
from edge_daemon.device_types import build_devices
from edge_daemon.drivers.base import CommunicationError
from edge_daemon.drivers.modbus.link import ModbusLink, RetryPolicy, TcpEndpoint
from edge_daemon.drivers.sunspec.device import SunSpecDevice
from edge_daemon.drivers.sunspec.discovery import DiscoveryError, discover
from edge_daemon.errors import SiteConfigError
from tests.support.modbus_peer import ModbusPeer, Unit

SUNS = [0x5375, 0x6E53]


def _definition(model_id: int) -> dict[str, Any]:
    path = resources.files("sunspec2").joinpath("models", "json", f"model_{model_id}.json")
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return doc


def _encode(points: Sequence[Mapping[str, Any]], values: Mapping[str, Any]) -> bytes:
    out = b""
    for p in points:
        size = int(p.get("size") or mb.point_type_info[p["type"]].len)
        if p["name"] in values:
            arg = 2 * size if p["type"] == "string" else None
            data = mb.point_type_info[p["type"]].to_data(values[p["name"]], arg)
        else:
            data = mb.create_unimpl_value(p["type"], 2 * size)
        out += bytes(data).ljust(2 * size, b"\0")
    return out


def model_image(model_id: int, values: Mapping[str, Any], modules: Sequence[Mapping[str, Any]] = ()) -> list[int]:
    """One model's registers (ID, L, body) from its official definition."""
    group = _definition(model_id)["group"]
    body = _encode(group["points"], values)[4:]  # ID and L are set below
    for module in modules:
        body += _encode(group["groups"][0]["points"], module)
    registers = [int.from_bytes(body[i : i + 2], "big") for i in range(0, len(body), 2)]
    return [model_id, len(registers), *registers]


def sunspec_image(models: Sequence[list[int]]) -> list[int]:
    image = list(SUNS)
    for m in models:
        image += m
    return [*image, 0xFFFF, 0]


COMMON = model_image(1, {"Mn": "Acme", "Md": "HX-10", "SN": "SN-0042", "Vr": "1.2.3"})
INVERTER = model_image(
    103,
    {
        "A": 153, "A_SF": -1, "AphA": 51, "AphB": 51, "AphC": 51,
        "PhVphA": 2301, "PhVphB": 2299, "PhVphC": 2305, "V_SF": -1,
        "W": 12345, "W_SF": -1, "Hz": 5001, "Hz_SF": -2, "WH": 987654, "WH_SF": 0,
        "TmpCab": 355, "Tmp_SF": -1, "St": 4, "Evt1": 0b101, "Evt2": 0,
    },
)  # fmt: skip
MPPT = model_image(
    160,
    {"DCA_SF": -2, "DCV_SF": -1, "DCW_SF": 0, "N": 2},
    [
        {"ID": 1, "IDStr": "PV1", "DCA": 812, "DCV": 3805, "DCW": 3090, "DCSt": 4},
        {"ID": 2, "IDStr": "PV2", "DCA": 530, "DCV": 3780, "DCW": 2003, "DCSt": 4},
    ],
)
STORAGE = model_image(
    124,
    {"WChaMax": 5000, "WChaMax_SF": 0, "WChaGra": 100, "WDisChaGra": 100, "WChaDisChaGra_SF": 0,
     "StorCtl_Mod": 0, "ChaState": 655, "ChaState_SF": -1, "ChaSt": 4},
)  # fmt: skip
BATTERY = model_image(
    802,
    {"SoC": 655, "SoC_SF": -1, "V": 5120, "V_SF": -1, "A": -123, "A_SF": -1, "W": -6300, "W_SF": 0,
     "AHRtg": 200, "AHRtg_SF": 0, "WHRtg": 10240, "WHRtg_SF": 0, "WChaRteMax": 5000, "WDisChaRteMax": 5000,
     "WChaDisChaMax_SF": 0, "CellV_SF": -3, "CellVMax": 3350, "CellVMin": 3301, "AMax_SF": 0,
     "Typ": 4, "State": 3, "Evt1": 0b10, "Evt2": 0, "EvtVnd1": 0, "EvtVnd2": 0, "LocRemCtl": 1},
)  # fmt: skip


def sunspec_unit(base: int, models: Sequence[list[int]]) -> Unit:
    return Unit(holding={base: sunspec_image(models)})


def sunspec_device(port: int, **overrides: Any) -> dict[str, Any]:
    return {
        "id": "inv_1",
        "type": "sunspec",
        "host": "127.0.0.1",
        "port": port,
        "models": [1, 103, 160, 124, 802],
        "mppt_modules": 2,
        "poll_interval_s": 0.1,
        "timeout_s": 0.3,
        "retries": 1,
        **overrides,
    }


def build(tmp_path: Path, device: dict[str, Any]) -> SunSpecDevice:
    doc = {
        "site": {"id": "s", "timezone": "UTC", "latitude": 0, "longitude": 0},
        "outbox": {"path": str(tmp_path / "outbox.sqlite")},
        "devices": [device],
    }
    config = parse_config(doc, tmp_path / "site.toml")
    (built,) = build_devices([(d.device_id, d.params) for d in config.devices], config.site_context())
    assert isinstance(built, SunSpecDevice)
    return built


async def read_all(device: SunSpecDevice, store: ChannelStore) -> dict[str, object]:
    await device.poll()
    device.read(store, time.time())
    return {k.split("/", 1)[1]: cv.value for k, cv in store.snapshot().items() if k.startswith("inv_1/")}


@pytest.mark.parametrize("base", [40000, 40001, 50000, 0, 1])
async def test_discovery_finds_the_marker_and_walks_the_chain(base: int) -> None:
    peer = ModbusPeer([sunspec_unit(base, [COMMON, INVERTER, MPPT, BATTERY])])
    port = await peer.start_tcp()
    link = ModbusLink(TcpEndpoint("127.0.0.1", port), timeout_s=0.5)
    try:
        found = await discover(link, 1, RetryPolicy(timeout_s=0.5, retries=0))
    finally:
        link.close()
        await peer.stop()
    assert found.base == base
    assert [(m.id, m.length) for m in found.models] == [(1, 66), (103, 50), (160, 8 + 2 * 20), (802, 62)]
    assert found.models[0].address == base + 2
    assert found.models[1].address == base + 2 + 68


@pytest.mark.parametrize(("base", "silent"), [(50000, {40000, 40001}), (0, {40000, 40001, 50000, 50001})])
async def test_a_base_that_does_not_answer_counts_as_not_here(base: int, silent: set[int]) -> None:
    # The device ignores reads at the standard bases it does not implement instead of refusing them.
    peer = ModbusPeer([Unit(holding={base: sunspec_image([COMMON, INVERTER])}, silent=silent)])
    port = await peer.start_tcp()
    link = ModbusLink(TcpEndpoint("127.0.0.1", port), timeout_s=0.5)
    try:
        found = await discover(link, 1, RetryPolicy(timeout_s=0.5, retries=2))
    finally:
        link.close()
        await peer.stop()
    assert found.base == base
    assert [m.id for m in found.models] == [1, 103]
    # Each silent base was asked once: the probe does not spend the configured retries on it.
    asked = [address for table, address, count in peer.requests if address in silent]
    assert sorted(asked) == sorted(silent)


async def test_a_device_silent_at_every_base_is_a_communication_error() -> None:
    bases = (40000, 50000)
    peer = ModbusPeer([Unit(holding={60000: [1, 2]}, silent=set(bases))])
    port = await peer.start_tcp()
    link = ModbusLink(TcpEndpoint("127.0.0.1", port), timeout_s=0.5)
    try:
        with pytest.raises(CommunicationError, match="no answer at any SunSpec base"):
            await discover(link, 1, RetryPolicy(timeout_s=0.5, retries=1), bases)
    finally:
        link.close()
        await peer.stop()


async def test_the_device_discovers_behind_a_silent_base(tmp_path: Path) -> None:
    peer = ModbusPeer([Unit(holding={50000: sunspec_image([COMMON, INVERTER])}, silent={40000, 40001})])
    port = await peer.start_tcp()
    device = build(tmp_path, sunspec_device(port, models=[1, 103]))
    try:
        got = await read_all(device, ChannelStore())
    finally:
        device.link.close()
        await peer.stop()
    assert device.map is not None and device.map.base == 50000
    assert got["Inverter_W"] == pytest.approx(1234.5)


async def test_not_a_sunspec_device_is_a_clear_error() -> None:
    peer = ModbusPeer([Unit(holding={40000: [1, 2, 3]})])
    port = await peer.start_tcp()
    link = ModbusLink(TcpEndpoint("127.0.0.1", port), timeout_s=0.5)
    try:
        with pytest.raises(DiscoveryError, match="no SunS marker"):
            await discover(link, 1, RetryPolicy(timeout_s=0.5, retries=0))
    finally:
        link.close()
        await peer.stop()


async def test_models_are_mapped_with_scale_factors_and_not_implemented_values(tmp_path: Path) -> None:
    peer = ModbusPeer([sunspec_unit(40000, [COMMON, INVERTER, MPPT, STORAGE, BATTERY])])
    port = await peer.start_tcp()
    device = build(tmp_path, sunspec_device(port))
    store = ChannelStore()
    device.declare(store)
    try:
        got = await read_all(device, store)
        requests = len(peer.requests)
        peer.requests.clear()
        await read_all(device, store)
    finally:
        device.link.close()
        await peer.stop()
    # common model: identity strings
    assert (got["Common_Mn"], got["Common_Md"], got["Common_SN"], got["Common_Vr"]) == (
        "Acme",
        "HX-10",
        "SN-0042",
        "1.2.3",
    )
    assert "Common_Opt" not in got  # all NUL: not implemented
    # inverter 103: values * 10^SF
    assert got["Inverter_W"] == pytest.approx(1234.5)
    assert got["Inverter_A"] == pytest.approx(15.3)
    assert got["Inverter_Hz"] == pytest.approx(50.01)
    assert got["Inverter_PhVphA"] == pytest.approx(230.1)
    assert got["Inverter_WH"] == 987654
    assert got["Inverter_TmpCab"] == pytest.approx(35.5)
    assert got["Inverter_St"] == 4 and got["Inverter_Evt1"] == 0b101
    assert "Inverter_VA" not in got  # value and its scale factor not implemented
    assert "Inverter_DCA" not in got
    assert not any(name.endswith("_SF") for name in got)
    # MPPT 160: two modules, module values scaled by the model's scale factors
    assert got["Mppt1_DCA"] == pytest.approx(8.12) and got["Mppt1_DCV"] == pytest.approx(380.5)
    assert got["Mppt1_DCW"] == 3090 and got["Mppt2_DCW"] == 2003 and got["Mppt2_IDStr"] == "PV2"
    assert got["Mppt_N"] == 2
    # storage 124 and battery 802
    assert got["Storage_WChaMax"] == 5000 and got["Storage_ChaState"] == pytest.approx(65.5)
    assert got["Battery_SoC"] == pytest.approx(65.5)
    assert got["Battery_V"] == pytest.approx(512.0)
    assert got["Battery_A"] == pytest.approx(-12.3)
    assert got["Battery_W"] == -6300
    assert got["Battery_CellVMax"] == pytest.approx(3.35)
    assert "Battery_SoH" not in got
    assert got["CommunicationLost"] == 0 and got["Discoveries"] == 1
    meta = store.meta("inv_1/Inverter_W")
    assert meta is not None and meta.unit == "W"
    # Discovery (6 headers + marker) plus the model blocks; later polls skip discovery and the common model.
    assert requests <= 7 + 8
    assert len(peer.requests) <= 6
    assert not any(address < 40070 for _, address, _ in peer.requests)  # common model: read once


async def test_a_missing_model_leaves_its_channels_empty(tmp_path: Path) -> None:
    peer = ModbusPeer([sunspec_unit(40000, [COMMON, INVERTER])])
    port = await peer.start_tcp()
    device = build(tmp_path, sunspec_device(port))
    try:
        got = await read_all(device, ChannelStore())
    finally:
        device.link.close()
        await peer.stop()
    assert got["Inverter_W"] == pytest.approx(1234.5)
    assert not any(name.startswith(("Battery_", "Mppt")) for name in got)


async def test_writable_points_are_written_with_their_scale_factor(tmp_path: Path) -> None:
    storage = list(STORAGE)
    definition = [p["name"] for p in _definition(124)["group"]["points"]]
    storage[definition.index("WChaMax_SF")] = 1  # 10^1 W per count
    peer = ModbusPeer([sunspec_unit(40000, [COMMON, storage])])
    port = await peer.start_tcp()
    device = build(tmp_path, sunspec_device(port, models=[1, 124], writable=["Storage_WChaMax"]))
    store = ChannelStore()
    device.declare(store)
    try:
        got = await read_all(device, store)
        assert "Storage_WChaMax" not in got  # an output now, no longer read as an input
        store.set("inv_1/Storage_WChaMax", 3000.0, category=Category.OUTPUT)
        device.write(store)
        await device.apply({"Storage_WChaMax": 3000.0})
        address = 40000 + 2 + 68 + definition.index("WChaMax")
        assert peer.get("holding", address) == [300]
    finally:
        device.link.close()
        await peer.stop()


@pytest.mark.parametrize(
    ("change", "key", "reason"),
    [
        ({"models": [1, 999]}, "devices[0].models[1]", "model 999 is not mapped"),
        ({"models": []}, "devices[0].models", "list the SunSpec models"),
        ({"writable": ["Inverter_W"]}, "devices[0].writable[0]", "not a writable (RW) point"),
        ({"mppt_modules": 0}, "devices[0].mppt_modules", "at least 1"),
        ({"base_adress": 40000}, "devices[0].base_adress", "unknown key"),
    ],
)
def test_config_errors_name_device_and_key(tmp_path: Path, change: dict[str, Any], key: str, reason: str) -> None:
    with pytest.raises(SiteConfigError) as info:
        build(tmp_path, sunspec_device(502, **change))
    assert info.value.key == key
    assert reason in info.value.reason and "device 'inv_1'" in info.value.reason
