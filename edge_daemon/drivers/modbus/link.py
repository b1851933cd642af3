"""One Modbus connection (TCP socket or serial line) with timeouts, retries and backoff.

pymodbus's own retry and reconnect machinery is switched off (retries=0, reconnect_delay=0): after a
timeout the connection is closed and opened again before the next attempt, so a late answer to the old
request can never be taken for the answer to a new one (on TCP it would fail the transaction-id check,
on an RS-485 line it would corrupt the next frame). An RS-485 line is one `ModbusLink` shared by every
device on it; a lock keeps their requests (and retries) from interleaving.

A Modbus exception response means the device is there and said no: it raises `ModbusDeviceError`
and is never retried. Silence, refused connections and broken frames raise `CommunicationError` once
the retries are spent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from pymodbus import ModbusException
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.pdu import ModbusPDU

from edge_daemon.drivers.base import CommunicationError
from edge_daemon.drivers.modbus.registers import Function
from edge_daemon.errors import EdgeError

log = logging.getLogger(__name__)

T = TypeVar("T")

EXCEPTION_NAMES = {
    1: "ILLEGAL FUNCTION",
    2: "ILLEGAL DATA ADDRESS",
    3: "ILLEGAL DATA VALUE",
    4: "SERVER DEVICE FAILURE",
    5: "ACKNOWLEDGE",
    6: "SERVER DEVICE BUSY",
    8: "MEMORY PARITY ERROR",
    10: "GATEWAY PATH UNAVAILABLE",
    11: "GATEWAY TARGET DEVICE FAILED TO RESPOND",
}


class ModbusDeviceError(EdgeError):
    """The device answered with a Modbus exception (e.g. 2 = ILLEGAL DATA ADDRESS)."""

    def __init__(self, what: str, code: int) -> None:
        self.code = code
        self.code_name = EXCEPTION_NAMES.get(code, "UNKNOWN")
        super().__init__(f"{what}: exception {code} ({self.code_name})")


@dataclass(frozen=True, slots=True)
class TcpEndpoint:
    host: str
    port: int = 502

    def __str__(self) -> str:
        return f"tcp://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SerialEndpoint:
    port: str
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8

    def __str__(self) -> str:
        return f"rtu://{self.port}@{self.baudrate}/{self.bytesize}{self.parity}{self.stopbits}"


Endpoint = TcpEndpoint | SerialEndpoint


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    timeout_s: float = 1.0
    retries: int = 2
    backoff_s: float = 0.1  # before the first retry; doubled before each further one

    def worst_case_s(self) -> float:
        """How long one request can take before it gives up (for poll budgets)."""
        backoff = sum(self.backoff_s * 2.0**i for i in range(self.retries))
        # connect and request each get the timeout
        return 2 * self.timeout_s * (self.retries + 1) + backoff


class ModbusLink:
    def __init__(self, endpoint: Endpoint, *, timeout_s: float) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.requests = 0
        self.failed_attempts = 0
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._lock: asyncio.Lock | None = None
        self._users = 0

    def __str__(self) -> str:
        return str(self.endpoint)

    # -- lifecycle: devices sharing a line open it once and close it with the last one ----------------

    def acquire(self) -> None:
        self._users += 1

    def release(self) -> None:
        self._users = max(0, self._users - 1)
        if self._users == 0:
            self.close()

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- requests ----------------------------------------------------------------------------------

    async def read(self, unit: int, function: Function, address: int, count: int, policy: RetryPolicy) -> list[int]:
        """Registers (or bits as 0/1) `address .. address+count-1`."""

        async def call(c: AsyncModbusTcpClient | AsyncModbusSerialClient) -> ModbusPDU:
            if function is Function.HOLDING:
                return await c.read_holding_registers(address, count=count, device_id=unit)
            if function is Function.INPUT:
                return await c.read_input_registers(address, count=count, device_id=unit)
            if function is Function.COIL:
                return await c.read_coils(address, count=count, device_id=unit)
            return await c.read_discrete_inputs(address, count=count, device_id=unit)

        what = f"unit {unit} read {function.value} {address}..{address + count - 1}"
        response = await self._execute(what, call, policy)
        if function.is_bit:
            # Bits come back padded to whole bytes.
            return [int(b) for b in response.bits[:count]]
        registers = list(response.registers)
        if len(registers) != count:
            raise CommunicationError(f"{self}: {what}: got {len(registers)} registers")
        return registers

    async def write_registers(
        self, unit: int, address: int, values: list[int], policy: RetryPolicy, *, multiple: bool
    ) -> None:
        async def call(c: AsyncModbusTcpClient | AsyncModbusSerialClient) -> ModbusPDU:
            if len(values) == 1 and not multiple:
                return await c.write_register(address, values[0], device_id=unit)
            return await c.write_registers(address, values, device_id=unit)

        await self._execute(f"unit {unit} write holding {address}", call, policy)

    async def write_coil(self, unit: int, address: int, value: bool, policy: RetryPolicy) -> None:
        async def call(c: AsyncModbusTcpClient | AsyncModbusSerialClient) -> ModbusPDU:
            return await c.write_coil(address, value, device_id=unit)

        await self._execute(f"unit {unit} write coil {address}", call, policy)

    async def _execute(
        self,
        what: str,
        call: Callable[[AsyncModbusTcpClient | AsyncModbusSerialClient], Awaitable[ModbusPDU]],
        policy: RetryPolicy,
    ) -> ModbusPDU:
        if self._lock is None:
            self._lock = asyncio.Lock()  # created lazily: it binds to the running loop
        async with self._lock:
            last: BaseException | None = None
            for attempt in range(policy.retries + 1):
                if attempt:
                    await asyncio.sleep(policy.backoff_s * 2 ** (attempt - 1))
                self.requests += 1
                try:
                    client = await self._connected(policy.timeout_s)
                    # pymodbus has its own timeout; this one also covers a stuck connect or transport.
                    async with asyncio.timeout(policy.timeout_s + 0.5):
                        response = await call(client)
                except (ModbusException, OSError, TimeoutError, CommunicationError) as exc:
                    last = exc
                    self.failed_attempts += 1
                    self.close()
                    continue
                if response.isError():
                    raise ModbusDeviceError(f"{self}: {what}", int(getattr(response, "exception_code", 0)))
                return response
            raise CommunicationError(f"{self}: {what}: no answer after {policy.retries + 1} attempts ({last!r})")

    async def _connected(self, timeout_s: float) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        if self._client is not None and self._client.connected:
            return self._client
        self.close()
        client = self._new_client(timeout_s)
        async with asyncio.timeout(timeout_s + 0.5):
            connected = await client.connect()
        if not connected:
            client.close()
            raise CommunicationError(f"{self}: cannot connect")
        self._client = client
        return client

    def _new_client(self, timeout_s: float) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        timeout = max(timeout_s, self.timeout_s)
        ep = self.endpoint
        if isinstance(ep, TcpEndpoint):
            return AsyncModbusTcpClient(ep.host, port=ep.port, timeout=timeout, retries=0, reconnect_delay=0)
        return AsyncModbusSerialClient(
            ep.port,
            baudrate=ep.baudrate,
            parity=ep.parity,
            stopbits=ep.stopbits,
            bytesize=ep.bytesize,
            timeout=timeout,
            retries=0,
            reconnect_delay=0,
        )
