"""Modbus driver against pymodbus's own server: TCP on loopback, RTU over a pseudo-terminal pair.

The device under test is the worked example profile (tests/edge_daemon/drivers/data/acme_bi5.toml); the server holds
the registers an Acme BI-5 would, and nothing else, so reads of undefined registers get real Modbus
exceptions.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from edge_daemon.channels import Category, ChannelStore
from edge_daemon.config import load_config, parse_config
from edge_daemon.cycle import ControlCycle
from edge_daemon.device_types import build_devices
from edge_daemon.devices.base import DynamicLimit
from edge_daemon.devices.site import SiteDevices
from edge_daemon.drivers.modbus.codec import DataType, EncodeError, decode_raw, encode_raw, scaled, unscaled
from edge_daemon.drivers.modbus.device import ModbusDevice
from edge_daemon.drivers.modbus.planner import plan, split
from edge_daemon.drivers.modbus.registers import Function, Point, RegisterMap
from edge_daemon.errors import LimitError, SiteConfigError
from edge_daemon.uplink.wire import device_inventory
from tests.support.modbus_peer import ModbusPeer, PtyLine, Unit

DATA = Path(__file__).parent / "data"
PROFILE = DATA / "acme_bi5.toml"


def _s32(value: int) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">i", value))
    return [hi, lo]


def _f32(value: float) -> list[int]:
    return list(struct.unpack(">HH", struct.pack(">f", value)))


def _text(s: str, registers: int) -> list[int]:
    raw = s.encode().ljust(2 * registers, b"\0")
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def bi5(unit_id: int = 1, soc_tenths: int = 523) -> Unit:
    """The registers of an Acme BI-5 (see the profile) with plausible values."""
    energy = 123_456_789
    return Unit(
        unit_id=unit_id,
        input={
            30000: _text("BI5-0042", 8),
            # Soc, ActivePower (2), BatteryVoltage, BatteryCurrent, Current_SF, MaxCharge, MaxDischarge
            30100: [soc_tenths, *_s32(-2500), 4012, (-1234) & 0xFFFF, (-2) & 0xFFFF, 500, 450],
            30110: [0x8000],  # Temperature: sensor missing
            30120: [energy & 0xFFFF, energy >> 16],  # little word order
            30140: _f32(49.98),
            30150: [0b1001],  # over-temperature and isolation alarms
        },
        discrete={0: [False] * 5 + [True] + [False] * 10},
        holding={40100: [0, 0]},
        coils={0: [False] * 16},
    )


def site(tmp_path: Path, *devices: dict[str, Any]) -> dict[str, Any]:
    return {
        "site": {"id": "s", "timezone": "UTC", "latitude": 0, "longitude": 0},
        "outbox": {"path": str(tmp_path / "outbox.sqlite")},
        "devices": list(devices),
    }


def tcp_device(port: int, device_id: str = "bess_1", **overrides: Any) -> dict[str, Any]:
    return {
        "id": device_id,
        "type": "modbus",
        "profile": str(PROFILE),
        "host": "127.0.0.1",
        "port": port,
        "unit_id": 1,
        "poll_interval_s": 0.1,
        "timeout_s": 0.2,
        "retries": 1,
        "retry_backoff_s": 0.02,
        "reconnect_max_s": 0.4,
        **overrides,
    }


def build(tmp_path: Path, *devices: dict[str, Any]) -> list[ModbusDevice]:
    config = parse_config(site(tmp_path, *devices), tmp_path / "site.toml")
    built = build_devices([(d.device_id, d.params) for d in config.devices], config.site_context())
    assert all(isinstance(d, ModbusDevice) for d in built)
    return built  # type: ignore[return-value]


@pytest.fixture
async def peer() -> AsyncIterator[ModbusPeer]:
    p = ModbusPeer([bi5()])
    await p.start_tcp()
    try:
        yield p
    finally:
        await p.stop()


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def values(store: ChannelStore, device: str) -> dict[str, object]:
    prefix = device + "/"
    return {k[len(prefix) :]: cv.value for k, cv in store.snapshot().items() if k.startswith(prefix)}


async def poll_once(device: ModbusDevice, store: ChannelStore) -> dict[str, object]:
    await device.poll()
    device.read(store, time.time())
    return values(store, device.device_id)


async def test_reads_the_profile_with_types_scaling_and_word_order(tmp_path: Path, peer: ModbusPeer) -> None:
    (device,) = build(tmp_path, tcp_device(peer.port))
    store = ChannelStore()
    device.declare(store)
    try:
        got = await poll_once(device, store)
    finally:
        device.link.close()
    assert got["SerialNumber"] == "BI5-0042"
    assert got["Soc"] == pytest.approx(52.3)
    assert got["ActivePower"] == -2500
    assert got["BatteryVoltage"] == pytest.approx(401.2)
    assert got["BatteryCurrent"] == pytest.approx(-12.34)  # scale-factor register: 10^-2
    assert got["MaxChargePower"] == 5000 and got["MaxDischargePower"] == 4500
    assert got["EnergyCharged"] == 123_456_789
    assert got["GridFrequency"] == pytest.approx(49.98, abs=1e-4)
    assert got["AlarmOverTemperature"] == 1 and got["AlarmIsolation"] == 1
    assert got["FanRunning"] is True
    assert "Temperature" not in got  # 0x8000 is "not available"
    assert "Current_SF" not in got  # a scale factor, not a channel
    assert got["CommunicationLost"] == 0 and got["CommunicationOk"] is True
    meta = store.meta("bess_1/Soc")
    assert meta is not None and meta.unit == "%"


async def test_reads_are_grouped_and_static_points_read_once(tmp_path: Path, peer: ModbusPeer) -> None:
    (device,) = build(tmp_path, tcp_device(peer.port))
    store = ChannelStore()
    try:
        await poll_once(device, store)
        first = list(peer.requests)
        peer.requests.clear()
        await poll_once(device, store)
        second = list(peer.requests)
    finally:
        device.link.close()
    # max_gap = 0: the contiguous 30100..30107 in one request; 30110, 30120, 30140, 30150 apart.
    assert ("input", 30100, 8) in second
    assert ("input", 30000, 8) in first and ("input", 30000, 8) not in second  # static
    assert sorted(a for t, a, _ in second if t == "input") == [30100, 30110, 30120, 30140, 30150]
    assert [t for t, _, _ in second].count("discrete") == 1
    # A unit whose gaps are readable registers too: with gaps allowed, 30100..30150 is one request.
    unit = bi5()
    flat = [0] * 51
    for address, regs in unit.input.items():
        if address >= 30100:
            flat[address - 30100 : address - 30100 + len(regs)] = regs
    unit.input = {30000: unit.input[30000], 30100: flat}
    gapless = ModbusPeer([unit])
    await gapless.start_tcp()
    (wide,) = build(tmp_path, tcp_device(gapless.port, max_gap=20))
    try:
        got = await poll_once(wide, ChannelStore())
    finally:
        wide.link.close()
        await gapless.stop()
    assert [r for r in gapless.requests if r[0] == "input" and r[1] != 30000] == [("input", 30100, 51)]
    assert got["GridFrequency"] == pytest.approx(49.98, abs=1e-4)


async def test_writes_reach_the_device_and_refusals_are_final(tmp_path: Path) -> None:
    unit = bi5()
    unit.coils = {0: [False] * 16}
    peer = ModbusPeer([unit])
    await peer.start_tcp()
    (device,) = build(tmp_path, tcp_device(peer.port))
    store = ChannelStore()
    device.declare(store)
    try:
        store.set("bess_1/SetActivePower", -3200.0, category=Category.OUTPUT)
        store.set("bess_1/RemoteControl", 1.0, category=Category.OUTPUT)
        device.write(store)
        await device.apply(dict(device._pending))
        assert peer.get("holding", 40100, 2) == _s32(-3200)
        assert peer.get("coil", 0)[0] & (1 << 10)  # coil 10 in the first 16-bit word
        # Outside what s32 can hold: refused before the wire, counted, not retried.
        await device.apply({"SetActivePower": 1e12})
        assert device.write_errors == 1
    finally:
        device.link.close()
        await peer.stop()
    # A register the device refuses to write: exception 2, counted, no crash.
    unit = bi5()
    unit.readonly = {40100, 40101}
    peer = ModbusPeer([unit])
    await peer.start_tcp()
    (device,) = build(tmp_path, tcp_device(peer.port))
    try:
        await device.apply({"SetActivePower": 100.0})
        assert device.write_errors == 1
    finally:
        device.link.close()
        await peer.stop()


async def test_a_setpoint_the_device_forgot_is_written_again_with_setpoint_refresh(tmp_path: Path) -> None:
    # Two units on one server, one with setpoint_refresh_s. Both forget their setpoint (an inverter's
    # watchdog fell back, or it restarted: here the registers are reset by hand). Only the refreshed
    # one gets it again; the other is written only when the setpoint changes.
    peer = ModbusPeer([bi5(1), bi5(2)])
    await peer.start_tcp()
    refreshed, plain = build(
        tmp_path,
        tcp_device(peer.port, "bess_a", unit_id=1, setpoint_refresh_s=0.3),
        tcp_device(peer.port, "bess_b", unit_id=2),
    )
    store = ChannelStore()
    for device in (refreshed, plain):
        device.declare(store)
        store.set(f"{device.device_id}/SetActivePower", -3200.0, category=Category.OUTPUT)
        await device.start()

    async def cycle_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
        # As the control cycle does: every cycle hands the devices the current outputs.
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "condition not met in time"
            refreshed.write(store)
            plain.write(store)
            await asyncio.sleep(0.05)

    try:
        await cycle_until(lambda: all(peer.get("holding", 40100, 2, unit_id=u) == _s32(-3200) for u in (1, 2)))
        for unit in (1, 2):
            peer.set("holding", 40100, [0, 0], unit_id=unit)
        await cycle_until(lambda: peer.get("holding", 40100, 2, unit_id=1) == _s32(-3200))
        forgotten_at = time.monotonic()
        await cycle_until(lambda: time.monotonic() - forgotten_at > 1.0)  # three refresh periods more
        assert peer.get("holding", 40100, 2, unit_id=2) == [0, 0]
        # A change is written either way.
        store.set("bess_b/SetActivePower", -1000.0, category=Category.OUTPUT)
        await cycle_until(lambda: peer.get("holding", 40100, 2, unit_id=2) == _s32(-1000))
        assert refreshed.apply_failures == plain.apply_failures == 0
    finally:
        await refreshed.stop()
        await plain.stop()
        refreshed.link.close()
        plain.link.close()
        await peer.stop()


async def test_a_setpoint_is_limited_by_what_the_device_reports_it_allows_now(tmp_path: Path, peer: ModbusPeer) -> None:
    # The profile's SetActivePower: static -5000..5000 W, and min_from = "-MaxChargePower", max_from =
    # "MaxDischargePower". The BI-5 reports 5000 W of charge and 4500 W of discharge allowed.
    (device,) = build(tmp_path, tcp_device(peer.port))
    spec = {s.name: s for s in device.channels}["SetActivePower"]
    assert (spec.dynamic_min, spec.dynamic_max) == (
        DynamicLimit("MaxChargePower", -1.0),
        DynamicLimit("MaxDischargePower", 1.0),
    )
    # What the cloud is told, so that it checks commands against the same channels.
    (item,) = device_inventory([device])
    wired = {c.name: c for c in item.channels}["SetActivePower"]
    assert (wired.dynamic_min_channel, wired.dynamic_max_channel) == ("MaxChargePower", "MaxDischargePower")
    site_devices = SiteDevices([device], max_limit_age_s=30.0)
    store = ChannelStore()
    device.declare(store)
    try:
        with pytest.raises(LimitError, match="dynamic limit bess_1/MaxChargePower unavailable"):
            site_devices.limits("bess_1/SetActivePower", store.snapshot(), time.time())  # nothing read yet
        await poll_once(device, store)
        limits = site_devices.limits("bess_1/SetActivePower", store.snapshot(), time.time())
        assert (limits.low, limits.high) == (-5000.0, 4500.0)
        # The BMS allows less (a cold battery): the setpoint's range follows on the next poll.
        peer.set("input", 30106, [120, 80])
        await poll_once(device, store)
        limits = site_devices.limits("bess_1/SetActivePower", store.snapshot(), time.time())
        assert (limits.low, limits.high) == (-1200.0, 800.0)
        # A limit older than max_limit_age_s is no limit: the setpoint is refused, not guessed.
        with pytest.raises(LimitError, match="stale"):
            site_devices.limits("bess_1/SetActivePower", store.snapshot(), time.time() + 60)
    finally:
        device.link.close()


async def test_exception_responses_split_the_block_and_keep_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unit = bi5()
    del unit.input[30140]  # GridFrequency's registers do not exist on this unit
    peer = ModbusPeer([unit])
    await peer.start_tcp()
    (device,) = build(tmp_path, tcp_device(peer.port, max_gap=50))
    store = ChannelStore()
    try:
        with caplog.at_level(logging.ERROR, logger="edge_daemon.drivers.modbus.reader"):
            got = await poll_once(device, store)
            peer.requests.clear()
            await poll_once(device, store)
    finally:
        device.link.close()
        await peer.stop()
    assert "GridFrequency" not in got
    assert got["Soc"] == pytest.approx(52.3) and got["AlarmIsolation"] == 1
    assert got["ModbusExceptions"] >= 2  # type: ignore[operator]
    assert got["CommunicationLost"] == 0  # the device answered: not a communication loss
    refused = [r for r in caplog.records if r.getMessage() == "device refused a read"]
    assert refused and "ILLEGAL DATA ADDRESS" in refused[0].__dict__["error"]
    # The split is remembered: the next poll goes straight to the parts that work plus GridFrequency.
    assert ("input", 30140, 2) in peer.requests
    assert ("input", 30100, 52) not in peer.requests


async def test_a_device_that_stops_answering_never_delays_the_cycle(tmp_path: Path, peer: ModbusPeer) -> None:
    (device,) = build(tmp_path, tcp_device(peer.port))
    store = ChannelStore()
    cycle = ControlCycle(store, SiteDevices([device]), [], period_s=0.1)
    await device.start()
    task = asyncio.create_task(cycle.run())
    lost = "bess_1/CommunicationLost"
    try:
        await wait_for(lambda: (cv := store.get("bess_1/Soc")) is not None and cv.value == pytest.approx(52.3))
        peer.pause()  # requests are received and never answered
        paused_at = time.monotonic()
        await wait_for(lambda: (cv := store.get(lost)) is not None and cv.value == 1)
        detected_s = time.monotonic() - paused_at
        before = store.get("bess_1/Soc")
        await asyncio.sleep(1.0)  # keep it dead across several backoff rounds
        stale = store.get("bess_1/Soc")
        assert stale is not None and stale == before  # old value, old timestamp
        assert stale.timestamp < time.time() - 1.0
        errors = store.get("bess_1/CommunicationErrors")
        assert errors is not None and isinstance(errors.value, int) and errors.value >= 1
        peer.set("input", 30100, [611])
        peer.resume()
        await wait_for(lambda: (cv := store.get(lost)) is not None and cv.value == 0)
        await wait_for(lambda: (cv := store.get("bess_1/Soc")) is not None and cv.value == pytest.approx(61.1))
    finally:
        cycle.stop()
        await task
        await device.stop()
    # 2 attempts of 0.2 s plus backoff: the loss is seen in well under a second (2 s leaves room for
    # a loaded machine; a driver waiting for a default 3 s Modbus timeout would still fail this).
    assert detected_s < 2.0
    # The cycle never waited on the dead device: no cycle's own work took a period. (Not `overruns ==
    # 0`, which also counts a cycle a loaded machine woke a whole period late; lateness is a benchmark
    # figure, not a test assertion.)
    assert cycle.stats.max_cycle_time_s < cycle.period_s, cycle.stats


async def test_server_stopped_and_restarted_is_found_again(tmp_path: Path) -> None:
    peer = ModbusPeer([bi5()])
    port = await peer.start_tcp()
    (device,) = build(tmp_path, tcp_device(port))
    store = ChannelStore()
    await device.start()
    try:
        await wait_for(lambda: device._read_ok_at is not None)
        await peer.stop()  # connection closed, then refused
        await wait_for(lambda: device.communication_lost)
        device.read(store, time.time())
        assert values(store, "bess_1")["CommunicationLost"] == 1
        peer = ModbusPeer([bi5(soc_tenths=777)])
        await peer.start_tcp(port)
        await wait_for(lambda: not device.communication_lost)
        device.read(store, time.time())
        assert values(store, "bess_1")["Soc"] == pytest.approx(77.7)
    finally:
        await device.stop()
        await peer.stop()


async def test_rtu_over_a_pseudo_terminal_with_two_units_on_one_line(tmp_path: Path) -> None:
    line = PtyLine()
    line.start()
    peer = ModbusPeer([bi5(unit_id=3, soc_tenths=300), bi5(unit_id=4, soc_tenths=400)])
    await peer.start_serial(line.server_path)
    rtu = {
        "transport": "rtu",
        "serial_port": line.client_path,
        "baudrate": 115200,
        "poll_interval_s": 0.1,
        "timeout_s": 0.3,
        "retries": 1,
        "profile": str(PROFILE),
    }
    a, b = build(
        tmp_path,
        {"id": "bess_a", "type": "modbus", "unit_id": 3, **rtu},
        {"id": "bess_b", "type": "modbus", "unit_id": 4, **rtu},
    )
    assert a.link is b.link  # one serial port, one connection
    store = ChannelStore()
    await a.start()
    await b.start()
    try:
        await wait_for(lambda: a._read_ok_at is not None and b._read_ok_at is not None)
        a.read(store, time.time())
        b.read(store, time.time())
        assert values(store, "bess_a")["Soc"] == pytest.approx(30.0)
        assert values(store, "bess_b")["Soc"] == pytest.approx(40.0)
        assert values(store, "bess_a")["SerialNumber"] == "BI5-0042"
        # Pull the cable: both units go quiet on the shared line.
        line.connected = False
        await wait_for(lambda: a.communication_lost and b.communication_lost)
        line.connected = True
        await wait_for(lambda: not a.communication_lost and not b.communication_lost, timeout=8)
    finally:
        await a.stop()
        await b.stop()
        await peer.stop()
        line.close()


def inline(**register: Any) -> dict[str, Any]:
    return tcp_device(502, profile=None, registers=[{"name": "Soc", "address": 0, "type": "u16", **register}])


@pytest.mark.parametrize(
    ("device", "key", "reason"),
    [
        (inline(type="u17"), "devices[0].registers[0].type", "expected one of u16, s16"),
        (inline(function="input", access="write"), "devices[0].registers[0].access", "read-only in Modbus"),
        (inline(scale_register="Nope"), "devices[0].registers[0].scale_register", "no register named 'Nope'"),
        (inline(adress=5), "devices[0].registers[0].adress", "unknown key"),
        (inline(name="bad name"), "devices[0].registers[0].name", "not a channel name"),
        (inline(type="string"), "devices[0].registers[0].length", "required key is missing"),
        (inline(bit=16), "devices[0].registers[0].bit", "at most 15"),
        (inline(address=65535, type="u32"), "devices[0].registers[0].address", "runs past 65535"),
        (tcp_device(502, unit_id=0), "devices[0].unit_id", "at least 1"),
        (tcp_device(502, transport="rtu"), "devices[0].host", 'only for transport = "tcp"'),
        (tcp_device(502, max_registers_per_read=200), "devices[0].max_registers_per_read", "at most 125"),
        (tcp_device(502, profile="missing.toml"), "devices[0].profile", "cannot read"),
        (tcp_device(502, setpoint_refresh_s=0.05), "devices[0].setpoint_refresh_s", "at least poll_interval_s (0.1)"),
        (inline(min_from="Soc"), "devices[0].registers[0].min_from", 'only a setpoint (access = "write")'),
        (
            inline(access="write", max_from="Nope"),
            "devices[0].registers[0].max_from",
            "no register named 'Nope'",
        ),
        (
            inline(access="write", max_from="Soc"),
            "devices[0].registers[0].max_from",
            "'Soc' must be a readable numeric register",  # itself, a setpoint
        ),
        (inline(access="write", min_from="Soc"), "devices[0].registers[0].min_from", 'must be "-Name"'),
        (inline(access="write", max_from="-Soc"), "devices[0].registers[0].max_from", "must be \"Name\", got '-Soc'"),
    ],
)
def test_config_errors_name_device_and_key(tmp_path: Path, device: dict[str, Any], key: str, reason: str) -> None:
    if device.get("profile") is None:
        device.pop("profile", None)
    with pytest.raises(SiteConfigError) as info:
        build(tmp_path, device)
    assert info.value.key == key
    assert reason in info.value.reason and "device 'bess_1'" in info.value.reason


def test_an_error_inside_a_profile_names_the_profile_file(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text(PROFILE.read_text().replace('type = "s32"', 'type = "i32"', 1))
    with pytest.raises(SiteConfigError) as info:
        build(tmp_path, tcp_device(502, profile=str(profile)))
    assert info.value.path == str(profile)
    assert info.value.key == "registers[2].type" and "device 'bess_1'" in info.value.reason


def test_devices_sharing_a_serial_port_must_agree_on_its_settings(tmp_path: Path) -> None:
    rtu = {"type": "modbus", "transport": "rtu", "serial_port": "/dev/ttyUSB0", "profile": str(PROFILE)}
    with pytest.raises(SiteConfigError) as info:
        build(tmp_path, {"id": "a", **rtu}, {"id": "b", **rtu, "unit_id": 2, "baudrate": 19200})
    assert info.value.key == "devices[1].baudrate"
    assert "device 'b'" in info.value.reason and "shared with device 'a'" in info.value.reason


def test_codec_word_orders_types_and_strings() -> None:
    assert decode_raw(DataType.S32, [0xFFFF, 0xFFFE]) == -2
    assert decode_raw(DataType.U32, [0x0001, 0x0002], "little") == 0x0002_0001
    assert decode_raw(DataType.FLOAT32, _f32(1.5)) == 1.5
    assert decode_raw(DataType.S64, [0xFFFF] * 4) == -1
    assert decode_raw(DataType.STRING, _text("AB C", 4)) == "AB C"
    for dtype, value in [(DataType.S16, -7), (DataType.U32, 70000), (DataType.FLOAT64, 2.25)]:
        for order in ("big", "little"):
            assert decode_raw(dtype, encode_raw(dtype, value, order), order) == value
    with pytest.raises(EncodeError):
        encode_raw(DataType.U16, 70000)
    assert scaled(2305, 0.1, 0, 0) == 230.5
    assert scaled(5, 1, 0, 0) == 5 and isinstance(scaled(5, 1, 0, 0), int)
    assert unscaled(230.5, DataType.U16, 0.1, 0, 0) == 2305
    assert unscaled(300.0, DataType.U16, 1, 1, 0) == 30  # 10^1 per count


def test_planner_limits_gaps_and_splits() -> None:
    def p(name: str, address: int, length: int = 1) -> Point:
        return Point(name, address, Function.HOLDING, DataType.U16, length)

    points = [p("a", 0), p("b", 1, 2), p("c", 5), p("d", 200)]
    assert [(b.address, b.count) for b in plan(points, RegisterMap(tuple(points)))] == [(0, 3), (5, 1), (200, 1)]
    wide = RegisterMap(tuple(points), max_gap=2, max_registers_per_read=6)
    blocks = plan(points, wide)
    assert [(b.address, b.count) for b in blocks] == [(0, 6), (200, 1)]
    assert [(b.address, b.count) for b in split(blocks[0])] == [(0, 3), (5, 1)]  # at the hole first
    assert [(b.address, b.count) for b in split(split(blocks[0])[0])] == [(0, 1), (1, 2)]  # then per point


def test_the_documented_worked_example_is_the_tested_profile() -> None:
    doc = (Path(__file__).resolve().parents[3] / "docs" / "device-profiles.md").read_text()
    assert "```toml\n" + PROFILE.read_text() + "```" in doc


def test_a_site_file_finds_its_profile_relative_to_itself(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "acme_bi5.toml").write_text(PROFILE.read_text())
    (tmp_path / "site.toml").write_text(
        '[site]\nid = "s"\ntimezone = "UTC"\nlatitude = 0\nlongitude = 0\n\n'
        '[[devices]]\nid = "bess_1"\ntype = "modbus"\nprofile = "profiles/acme_bi5.toml"\n'
        'host = "192.0.2.10"\nunit_id = 3\n'
    )
    config = load_config(tmp_path / "site.toml")
    (device,) = build_devices([(d.device_id, d.params) for d in config.devices], config.site_context())
    assert isinstance(device, ModbusDevice)
    specs = {s.name: s for s in device.channels}
    assert specs["SetActivePower"].minimum == -5000 and specs["SetActivePower"].category is Category.OUTPUT
    assert {"CommunicationLost", "CommunicationErrors", "ModbusExceptions"} <= specs.keys()
