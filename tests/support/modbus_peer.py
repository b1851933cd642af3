"""pymodbus's own server as the device under test: on loopback TCP (port 0) or on a pseudo-terminal.

Runs in the test's event loop. Registers exist only where blocks are defined, so reading anything else
gets a real ILLEGAL DATA ADDRESS exception from pymodbus. `pause()` makes the server stop answering
(requests are received and never answered, like a device that hung); a unit's `silent` holding
addresses are never answered at all, like a device that ignores reads at addresses it does not
implement instead of refusing them with an exception. `requests` records what the
client asked for, so tests can count how reads were grouped.
"""

from __future__ import annotations

import asyncio
import os
import tty
from collections.abc import Sequence
from dataclasses import dataclass, field

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simdevice import SimAction

_KINDS = {"coil": "c", "discrete": "d", "holding": "h", "input": "i"}
_READ_CODES = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}


@dataclass
class Unit:
    """One unit id's registers: {start address: values} per table."""

    unit_id: int = 1
    holding: dict[int, list[int]] = field(default_factory=dict)
    input: dict[int, list[int]] = field(default_factory=dict)
    coils: dict[int, list[bool]] = field(default_factory=dict)
    discrete: dict[int, list[bool]] = field(default_factory=dict)
    readonly: set[int] = field(default_factory=set)  # holding addresses that refuse writes
    silent: set[int] = field(default_factory=set)  # holding addresses whose reads are never answered


class ModbusPeer:
    def __init__(self, units: Sequence[Unit]) -> None:
        self.units = list(units)
        self.requests: list[tuple[str, int, int]] = []  # (table, address, count) of every read
        self.writes: list[tuple[int, int, list[int] | list[bool]]] = []
        self._running = asyncio.Event()
        self._running.set()
        self._stopping = asyncio.Event()
        self.server: ModbusTcpServer | ModbusSerialServer | None = None
        self.port = 0

    def _devices(self) -> list[SimDevice]:
        devices = []
        for u in self.units:
            blocks: tuple[list[SimData], list[SimData], list[SimData], list[SimData]] = (
                [SimData(a, values=v, datatype=DataType.BITS) for a, v in u.coils.items()]
                or [SimData(60000, values=[False] * 16, datatype=DataType.BITS)],
                [SimData(a, values=v, datatype=DataType.BITS) for a, v in u.discrete.items()]
                or [SimData(60000, values=[False] * 16, datatype=DataType.BITS)],
                _register_blocks(_with_silent(u.holding, u.silent), u.readonly)
                or [SimData(65000, values=0, datatype=DataType.REGISTERS)],
                _register_blocks(u.input, set()) or [SimData(65000, values=0, datatype=DataType.REGISTERS)],
            )
            devices.append(SimDevice(u.unit_id, simdata=blocks, action=self._unit_action(u)))
        return devices

    def _unit_action(self, unit: Unit) -> SimAction:
        # pymodbus calls the action only for defined addresses, so silent ones get a (never read) block.
        async def action(
            function_code: int,
            start_address: int,
            address: int,
            count: int,
            registers: list[int],
            set_values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            if function_code == 3 and unit.silent.intersection(range(address, address + count)):
                await self._stopping.wait()
            return await self._action(function_code, start_address, address, count, registers, set_values)

        return action

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        await self._running.wait()  # paused: the request is never answered
        if set_values is not None:
            self.writes.append((function_code, address, list(set_values)))
        return None

    def _trace(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        # Every request as received, also those the server then refuses with an exception.
        if not sending and pdu.function_code in _READ_CODES:
            self.requests.append((_READ_CODES[pdu.function_code], pdu.address, pdu.count))
        return pdu

    async def start_tcp(self, port: int = 0) -> int:
        self.server = ModbusTcpServer(self._devices(), address=("127.0.0.1", port), trace_pdu=self._trace)
        await self.server.serve_forever(background=True)
        transport = self.server.transport
        assert isinstance(transport, asyncio.Server)
        self.port = transport.sockets[0].getsockname()[1]
        return self.port

    async def start_serial(self, path: str, baudrate: int = 115200) -> None:
        self.server = ModbusSerialServer(self._devices(), port=path, baudrate=baudrate, trace_pdu=self._trace)
        await self.server.serve_forever(background=True)

    async def stop(self) -> None:
        self._running.set()
        self._stopping.set()
        if self.server is not None:
            await self.server.shutdown()  # type: ignore[no-untyped-call]
            self.server = None

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def registers(self, table: str, unit_id: int = 1) -> tuple[int, list[int]]:
        """(first address, live register list) of a table, to change values while serving."""
        assert self.server is not None
        core = self.server.context
        start, _, registers, _ = core.devices[unit_id].block[_KINDS[table]]  # type: ignore[union-attr]
        return start, registers

    def set(self, table: str, address: int, values: Sequence[int], unit_id: int = 1) -> None:
        start, registers = self.registers(table, unit_id)
        registers[address - start : address - start + len(values)] = list(values)

    def get(self, table: str, address: int, count: int = 1, unit_id: int = 1) -> list[int]:
        start, registers = self.registers(table, unit_id)
        return registers[address - start : address - start + count]


def _with_silent(table: dict[int, list[int]], silent: set[int]) -> dict[int, list[int]]:
    # A silent address and the one after it exist, so a two-register read there reaches the action.
    covered = {a + i for a, values in table.items() for i in range(len(values))}
    wanted = {a + i for a in silent for i in range(2)} - covered
    return table | {a: [0] for a in sorted(wanted)}


def _register_blocks(table: dict[int, list[int]], readonly: set[int]) -> list[SimData]:
    blocks = []
    for address, values in sorted(table.items()):
        if not readonly.intersection(range(address, address + len(values))):
            blocks.append(SimData(address, values=list(values), datatype=DataType.REGISTERS))
            continue
        for i, v in enumerate(values):
            blocks.append(SimData(address + i, values=v, datatype=DataType.REGISTERS, readonly=address + i in readonly))
    return blocks


class PtyLine:
    """A serial line between two pseudo-terminals: what one end writes, the other reads.

    A pty pair has a path only on its slave side, and both the server and the client open a path, so
    two pairs are joined by copying between their master sides (like `socat pty pty`). `cut()` stops
    the copying: an RS-485 cable pulled out.
    """

    def __init__(self) -> None:
        self._fds: list[int] = []
        m1, self.server_path = self._pair()
        m2, self.client_path = self._pair()
        self._masters = (m1, m2)
        self.connected = True

    def _pair(self) -> tuple[int, str]:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._fds += [master, slave]  # the slave stays open so the pty lives while ends reopen it
        return master, os.ttyname(slave)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        m1, m2 = self._masters
        loop.add_reader(m1, self._pump, m1, m2)
        loop.add_reader(m2, self._pump, m2, m1)

    def _pump(self, src: int, dst: int) -> None:
        try:
            data = os.read(src, 4096)
        except (BlockingIOError, OSError):
            return
        if self.connected:
            os.write(dst, data)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for m in self._masters:
            loop.remove_reader(m)
        for fd in self._fds:
            os.close(fd)
        self._fds = []
