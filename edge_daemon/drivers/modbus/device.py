"""The register-map Modbus device: channels from its profile, polled in its own task.

Reads: every poll reads the map's blocks (see `reader`); a device that does not answer makes the poll
fail after the link's retries, which the cycle sees as `CommunicationLost = 1` and stale values.
Writes: the cycle's setpoints for `access = "write"` registers reach `apply` via the `PollingDevice`
base (latest value wins, sent when the line is free). A Modbus exception to a write (value refused)
is final: logged, counted in `WriteErrors`, not retried; a write that got no answer (or whose scale
factor has not been read yet) is retried on the next pass.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from edge_daemon.channels import Number, Scalar
from edge_daemon.clock import Clock
from edge_daemon.devices.base import ChannelAccess, ChannelSpec
from edge_daemon.drivers.base import CommunicationError, DriverDevice, RetryDelay
from edge_daemon.drivers.modbus.codec import EncodeError
from edge_daemon.drivers.modbus.connection import ConnectionParams
from edge_daemon.drivers.modbus.link import ModbusDeviceError, ModbusLink
from edge_daemon.drivers.modbus.reader import RegisterReader, ScaleUnknownError
from edge_daemon.drivers.modbus.registers import RegisterMap

log = logging.getLogger(__name__)

MODBUS_EXCEPTIONS = ChannelSpec(
    "ModbusExceptions", "", ChannelAccess.READ, "Modbus exception responses to reads since start"
)
WRITE_ERRORS = ChannelSpec(
    "WriteErrors", "", ChannelAccess.READ, "Setpoints the device refused or that could not be encoded"
)


@dataclass(frozen=True, slots=True)
class ModbusParams:
    connection: ConnectionParams
    register_map: RegisterMap


def poll_budget_s(connection: ConnectionParams, requests: int) -> float:
    """The PollingDevice timeout for one poll: every request may use its retries, plus the wait
    between attempts at a dead device. It only guards against a driver bug; retries end polls first."""
    return connection.reconnect_max_s + max(1, requests) * connection.policy.worst_case_s() + 1.0


class ModbusLinkDevice(DriverDevice):
    """A driver on a Modbus link; devices sharing one serial line share the link and take turns."""

    link: ModbusLink

    async def start(self) -> None:
        self.link.acquire()
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        self.link.release()


class ModbusDevice(ModbusLinkDevice):
    type_name = "modbus"

    def __init__(
        self, device_id: str, params: ModbusParams, *, link: ModbusLink | None = None, clock: Clock | None = None
    ) -> None:
        conn = params.connection
        self.params = params
        self.link = link or ModbusLink(conn.endpoint, timeout_s=conn.policy.timeout_s)
        self.reader = RegisterReader(device_id, self.link, conn.unit_id, params.register_map, conn.policy)
        super().__init__(
            device_id,
            poll_interval_s=conn.poll_interval_s,
            poll_timeout_s=poll_budget_s(conn, len(self.reader.blocks) + len(params.register_map.write_points)),
            setpoint_refresh_s=conn.setpoint_refresh_s,
            clock=clock,
        )
        self.write_errors = 0
        self._retry = RetryDelay(conn.poll_interval_s, conn.reconnect_max_s)
        self._channels = params.register_map.channel_specs()

    @property
    def device_channels(self) -> tuple[ChannelSpec, ...]:
        return self._channels

    @property
    def extra_channels(self) -> tuple[ChannelSpec, ...]:
        return (MODBUS_EXCEPTIONS, WRITE_ERRORS)

    def status_values(self) -> dict[str, Number]:
        return self.changed_since_published(
            {"ModbusExceptions": self.reader.exceptions, "WriteErrors": self.write_errors}
        )

    async def read_device(self) -> Mapping[str, Scalar]:
        await self._retry.wait()
        try:
            values = await self.reader.read()
        except CommunicationError:
            if self._retry.failures == 0:
                self.reader.reset()  # what answers next may be a replaced device
            self._retry.failed()
            raise
        self._retry.succeeded()
        return values

    async def apply(self, outputs: Mapping[str, float]) -> None:
        points = self.params.register_map.write_points
        for name, value in outputs.items():
            point = points[name]
            try:
                await self.reader.write(point, value)
            except ScaleUnknownError:
                raise  # not read yet: the base keeps the setpoint and tries again after the next poll
            except (ModbusDeviceError, EncodeError) as exc:
                self.write_errors += 1
                log.error(
                    "setpoint not applied",
                    extra={"device": self.device_id, "channel": name, "value": value, "error": str(exc)},
                )
