"""A SunSpec device: discovery on the first poll (and again after every loss of communication, since
what answers afterwards may be a replaced or re-flashed unit), then the register-map machinery of the
Modbus driver on the map that discovery produced.

Channels must be known before the first poll (the cycle, the cloud's channel table and config checks
need them), so the configuration lists the models expected (`models`) and, for MPPT, how many modules
to expose (`mppt_modules`). A listed model the device lacks is reported once and its channels stay
empty; models the device has but the configuration does not list are ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from edge_daemon.channels import Number, Scalar
from edge_daemon.clock import Clock
from edge_daemon.devices.base import ChannelAccess, ChannelSpec
from edge_daemon.drivers.base import CommunicationError, RetryDelay
from edge_daemon.drivers.modbus.codec import EncodeError
from edge_daemon.drivers.modbus.connection import ConnectionParams
from edge_daemon.drivers.modbus.device import MODBUS_EXCEPTIONS, WRITE_ERRORS, ModbusLinkDevice, poll_budget_s
from edge_daemon.drivers.modbus.link import ModbusDeviceError, ModbusLink
from edge_daemon.drivers.modbus.reader import RegisterReader
from edge_daemon.drivers.modbus.registers import MAX_REGISTERS_PER_READ, Point, RegisterMap
from edge_daemon.drivers.params import DeviceReader
from edge_daemon.drivers.sunspec.discovery import BASE_ADDRESSES, SunSpecMap, discover
from edge_daemon.drivers.sunspec.models import SUPPORTED_MODELS, channel_specs, points_at, writable_points

log = logging.getLogger(__name__)

DISCOVERIES = ChannelSpec("Discoveries", "", ChannelAccess.READ, "Successful SunSpec discoveries since start")


@dataclass(frozen=True, slots=True)
class SunSpecParams:
    connection: ConnectionParams
    models: tuple[int, ...]
    mppt_modules: int = 2
    base_addresses: tuple[int, ...] = BASE_ADDRESSES
    writable: frozenset[str] = frozenset()
    max_registers_per_read: int = MAX_REGISTERS_PER_READ
    # The SunSpec map is one contiguous range, so reading across model headers and padding is allowed
    # by the specification; a device that objects gets its blocks split (see modbus.planner).
    max_gap: int = 8


def parse_sunspec(r: DeviceReader, connection: ConnectionParams) -> SunSpecParams:
    models = r.get_int_list("models")
    if not models:
        raise r.error("models", f"list the SunSpec models to map (supported: {', '.join(map(str, SUPPORTED_MODELS))})")
    for i, m in enumerate(models):
        if m not in SUPPORTED_MODELS:
            raise r.at(
                f"{r.key('models')}[{i}]",
                f"model {m} is not mapped (supported: {', '.join(map(str, SUPPORTED_MODELS))})",
            )
    modules = r.get_int("mppt_modules", 2, minimum=1, maximum=64)
    bases = (r.get_int("base_address", minimum=0, maximum=65533),) if r.has("base_address") else BASE_ADDRESSES
    r.mark_used("base_address")
    allowed = writable_points(models, modules)
    writable = r.get_str_list("writable")
    for i, name in enumerate(writable):
        if name not in allowed:
            raise r.at(f"{r.key('writable')}[{i}]", f"{name!r} is not a writable (RW) point of models {list(models)}")
    return SunSpecParams(
        connection=connection,
        models=models,
        mppt_modules=modules,
        base_addresses=bases,
        writable=frozenset(writable),
        max_registers_per_read=r.get_int("max_registers_per_read", MAX_REGISTERS_PER_READ, minimum=2, maximum=125),
        max_gap=r.get_int("max_gap", 8, minimum=0, maximum=125),
    )


class SunSpecDevice(ModbusLinkDevice):
    type_name = "sunspec"

    def __init__(
        self, device_id: str, params: SunSpecParams, *, link: ModbusLink | None = None, clock: Clock | None = None
    ) -> None:
        conn = params.connection
        self.params = params
        self.link = link or ModbusLink(conn.endpoint, timeout_s=conn.policy.timeout_s)
        # Discovery reads two registers per base tried and per model; a map rarely needs > 20 requests.
        super().__init__(
            device_id,
            poll_interval_s=conn.poll_interval_s,
            poll_timeout_s=poll_budget_s(conn, 40),
            setpoint_refresh_s=conn.setpoint_refresh_s,
            clock=clock,
        )
        self._channels = channel_specs(params.models, params.mppt_modules, params.writable)
        self.map: SunSpecMap | None = None
        self.reader: RegisterReader | None = None
        self.discoveries = 0
        self.write_errors = 0
        self._exceptions_before = 0
        self._retry = RetryDelay(conn.poll_interval_s, conn.reconnect_max_s)

    @property
    def device_channels(self) -> tuple[ChannelSpec, ...]:
        return self._channels

    @property
    def extra_channels(self) -> tuple[ChannelSpec, ...]:
        return (MODBUS_EXCEPTIONS, WRITE_ERRORS, DISCOVERIES)

    def status_values(self) -> dict[str, Number]:
        exceptions = self._exceptions_before + (self.reader.exceptions if self.reader else 0)
        return self.changed_since_published(
            {"ModbusExceptions": exceptions, "WriteErrors": self.write_errors, "Discoveries": self.discoveries}
        )

    async def read_device(self) -> Mapping[str, Scalar]:
        await self._retry.wait()
        try:
            if self.reader is None:
                self.reader = await self._discover()
            values = await self.reader.read()
        except CommunicationError:
            self._forget()
            self._retry.failed()
            raise
        except Exception:
            self._retry.failed()  # not SunSpec (yet?): try again later, less and less often
            raise
        self._retry.succeeded()
        return values

    def _forget(self) -> None:
        if self.reader is not None:
            self._exceptions_before += self.reader.exceptions
        self.reader = None

    async def _discover(self) -> RegisterReader:
        conn = self.params.connection
        found = await discover(self.link, conn.unit_id, conn.policy, self.params.base_addresses)
        self.map = found
        self.discoveries += 1
        points: list[Point] = []
        missing: list[int] = []
        for model_id in self.params.models:
            model = found.first(model_id)
            if model is None:
                missing.append(model_id)
                continue
            points += points_at(model_id, model.address, model.length, self.params.mppt_modules, self.params.writable)
        declared = {spec.name for spec in self._channels}
        # Inverter models 101..103 share channel names; keep the first model's point per name.
        unique: dict[str, Point] = {}
        for p in points:
            if p.name in declared or not p.channel:
                unique.setdefault(p.name, p)
        log.info(
            "SunSpec device discovered",
            extra={
                "device": self.device_id,
                "base": found.base,
                "models": ", ".join(f"{m.id}@{m.address}/{m.length}" for m in found.models),
                "missing": ", ".join(map(str, missing)),
            },
        )
        register_map = RegisterMap(
            tuple(unique.values()),
            max_registers_per_read=self.params.max_registers_per_read,
            max_gap=self.params.max_gap,
            write_multiple=True,  # SunSpec requires function 16 for writes
        )
        return RegisterReader(self.device_id, self.link, conn.unit_id, register_map, conn.policy)

    async def apply(self, outputs: Mapping[str, float]) -> None:
        reader = self.reader
        if reader is None:
            raise CommunicationError("not discovered yet")  # the base keeps the setpoints for later
        points = reader.map.write_points
        for name, value in outputs.items():
            point = points.get(name)
            if point is None:
                self.write_errors += 1
                log.error(
                    "setpoint not applied",
                    extra={"device": self.device_id, "channel": name, "error": "point not present on the device"},
                )
                continue
            try:
                await reader.write(point, value)
            except (ModbusDeviceError, EncodeError) as exc:
                self.write_errors += 1
                log.error(
                    "setpoint not applied",
                    extra={"device": self.device_id, "channel": name, "value": value, "error": str(exc)},
                )
