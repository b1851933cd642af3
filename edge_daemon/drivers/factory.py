"""Driver type names (as written in the site config) -> parsers and constructors.

`edge_daemon.device_types` merges these with the simulators. Devices on one serial line share one
`ModbusLink` (one port can only be opened once, and RS-485 carries one request at a time); the line's
settings must then agree, which `check_shared_lines` verifies at config time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from edge_daemon.devices.base import Device
from edge_daemon.drivers.canbus.device import CanBmsDevice, CanBmsParams, parse_can_bms
from edge_daemon.drivers.modbus.connection import ConnectionParams, parse_connection
from edge_daemon.drivers.modbus.device import ModbusDevice, ModbusParams
from edge_daemon.drivers.modbus.link import ModbusLink, SerialEndpoint
from edge_daemon.drivers.modbus.profile import parse_register_map
from edge_daemon.drivers.params import DeviceReader
from edge_daemon.drivers.sunspec.device import SunSpecDevice, SunSpecParams, parse_sunspec
from edge_daemon.errors import SiteConfigError
from edge_daemon.params import ParamReader

DriverParams = ModbusParams | SunSpecParams | CanBmsParams


def parse_modbus(r: ParamReader) -> ModbusParams:
    device = DeviceReader.of(r)
    params = ModbusParams(parse_connection(device), parse_register_map(device))
    device.finish()
    return params


def _parse_sunspec(r: ParamReader) -> SunSpecParams:
    device = DeviceReader.of(r)
    params = parse_sunspec(device, parse_connection(device))
    device.finish()
    return params


def _parse_can_bms(r: ParamReader) -> CanBmsParams:
    device = DeviceReader.of(r)
    params = parse_can_bms(device)
    device.finish()
    return params


PARSERS: dict[str, Callable[[ParamReader], DriverParams]] = {
    ModbusDevice.type_name: parse_modbus,
    SunSpecDevice.type_name: _parse_sunspec,
    CanBmsDevice.type_name: _parse_can_bms,
}


def _connection(params: DriverParams) -> ConnectionParams | None:
    return params.connection if isinstance(params, ModbusParams | SunSpecParams) else None


def build_drivers(specs: Sequence[tuple[str, DriverParams]]) -> list[Device]:
    """Driver devices in config order; Modbus devices on one serial port get one shared link."""
    lines: dict[str, ModbusLink] = {}
    for _, params in specs:
        conn = _connection(params)
        if conn is not None and isinstance(conn.endpoint, SerialEndpoint):
            link = lines.get(conn.endpoint.port)
            timeout = conn.policy.timeout_s
            if link is None:
                lines[conn.endpoint.port] = ModbusLink(conn.endpoint, timeout_s=timeout)
            else:
                link.timeout_s = max(link.timeout_s, timeout)
    devices: list[Device] = []
    for device_id, params in specs:
        conn = _connection(params)
        shared = lines.get(conn.endpoint.port) if conn and isinstance(conn.endpoint, SerialEndpoint) else None
        if isinstance(params, ModbusParams):
            devices.append(ModbusDevice(device_id, params, link=shared))
        elif isinstance(params, SunSpecParams):
            devices.append(SunSpecDevice(device_id, params, link=shared))
        else:
            devices.append(CanBmsDevice(device_id, params))
    return devices


def check_shared_lines(path: str, devices: Sequence[tuple[int, str, DriverParams]]) -> None:
    """Devices on one serial port must use the same line settings. Raises SiteConfigError naming the
    later device and the key that differs. `devices` holds (index in [[devices]], id, params)."""
    first: dict[str, tuple[str, SerialEndpoint]] = {}
    for index, device_id, params in devices:
        conn = _connection(params)
        if conn is None or not isinstance(conn.endpoint, SerialEndpoint):
            continue
        ep = conn.endpoint
        seen = first.get(ep.port)
        if seen is None:
            first[ep.port] = (device_id, ep)
            continue
        other_id, other = seen
        for key in ("baudrate", "parity", "stopbits", "bytesize"):
            if getattr(ep, key) != getattr(other, key):
                raise SiteConfigError(
                    path,
                    f"devices[{index}].{key}",
                    f"device {device_id!r}: {ep.port} is shared with device {other_id!r}, which uses "
                    f"{key} = {getattr(other, key)!r}; one serial line has one setting",
                )
