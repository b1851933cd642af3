"""A battery management system on a CAN bus: frames decoded with a DBC file into channels.

A BMS talks unasked: it broadcasts its frames cyclically. A receive thread (python-can's `recv` blocks)
decodes every frame of the DBC's messages and keeps the latest value per signal; each poll hands over
what arrived since the previous one, so a message that stops arriving while others go on keeps its old
timestamp. When no frame at all arrives for `silence_timeout_s`, the poll fails: the bus is silent
(BMS off, cable, termination) and `CommunicationLost` becomes 1. A bus that cannot be opened or that
fails is closed and opened again on the next poll.

Channels are the DBC's signal names, with its units; the configuration may restrict them to some
messages. The edge daemon never writes to the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_daemon.channels import Number, Scalar
from edge_daemon.clock import Clock
from edge_daemon.devices.base import ChannelAccess, ChannelSpec
from edge_daemon.drivers.base import CommunicationError, DriverDevice
from edge_daemon.drivers.params import CHANNEL_NAME_RE, DeviceReader

if TYPE_CHECKING:
    import can
    from cantools.database.can import Database, Message

# python-can and cantools are imported where a CAN device is configured or opened, not with this
# module: every daemon imports the driver table, and the two cost about 19 MiB of resident memory that
# a site without a CAN bus (most of them, on small boards) should not pay.

log = logging.getLogger(__name__)

DECODE_ERRORS = ChannelSpec("DecodeErrors", "", ChannelAccess.READ, "Frames of known ids that did not decode")
_RECV_POLL_S = 0.2  # how quickly the receive thread notices a stop request


@dataclass(frozen=True, slots=True)
class CanBmsParams:
    interface: str
    channel: str
    dbc: Path
    messages: tuple[str, ...] = ()  # empty: every message of the DBC
    bus_options: tuple[tuple[str, str | int | float | bool], ...] = ()
    silence_timeout_s: float = 5.0
    poll_interval_s: float = 1.0


def load_dbc(path: Path) -> Database:
    import cantools
    from cantools.database.can import Database

    db = cantools.database.load_file(str(path), database_format="dbc", strict=True)
    if not isinstance(db, Database):
        raise TypeError(f"{path} is not a CAN database")
    return db


def selected_messages(db: Database, names: tuple[str, ...]) -> list[Message]:
    return [m for m in db.messages if not names or m.name in names]


def signal_specs(messages: list[Message]) -> tuple[ChannelSpec, ...]:
    specs: list[ChannelSpec] = []
    for m in messages:
        for s in m.signals:
            description = s.comment if isinstance(s.comment, str) and s.comment else f"{m.name}.{s.name}"
            minimum = float(s.minimum) if s.minimum is not None else None
            maximum = float(s.maximum) if s.maximum is not None else None
            specs.append(ChannelSpec(s.name, s.unit or "", ChannelAccess.READ, description, minimum, maximum))
    return tuple(specs)


def parse_can_bms(r: DeviceReader) -> CanBmsParams:
    import can

    interface = r.get_str("interface")
    if interface not in can.VALID_INTERFACES:
        raise r.error("interface", f"unknown python-can interface {interface!r}")
    dbc = r.path_value("dbc")
    try:
        db = load_dbc(dbc)
    except OSError as exc:
        raise r.error("dbc", f"cannot read {dbc}: {exc.strerror or exc}") from None
    except Exception as exc:  # cantools raises several unrelated types for malformed files
        raise r.error("dbc", f"{dbc}: not a valid DBC file: {exc}") from None
    messages = r.get_str_list("messages")
    known = {m.name for m in db.messages}
    for i, name in enumerate(messages):
        if name not in known:
            raise r.at(f"{r.key('messages')}[{i}]", f"no message {name!r} in {dbc.name}")
    seen: dict[str, str] = {}
    for m in selected_messages(db, messages):
        for s in m.signals:
            if CHANNEL_NAME_RE.fullmatch(s.name) is None:
                raise r.error("dbc", f"signal {m.name}.{s.name} is not usable as a channel name")
            if s.name in seen:
                raise r.error(
                    "dbc", f"signal {s.name} is in both {seen[s.name]} and {m.name}; channels need unique names"
                )
            seen[s.name] = m.name
    poll_interval_s = r.get_float("poll_interval_s", 1.0, minimum=0.05, maximum=60)
    return CanBmsParams(
        interface=interface,
        channel=r.get_str("channel"),
        dbc=dbc,
        messages=messages,
        bus_options=tuple(sorted(r.get_scalar_table("bus_options").items())),
        silence_timeout_s=r.get_float("silence_timeout_s", 5.0, minimum=poll_interval_s, maximum=3600),
        poll_interval_s=poll_interval_s,
    )


class CanBmsDevice(DriverDevice):
    type_name = "can_bms"

    def __init__(self, device_id: str, params: CanBmsParams, *, clock: Clock | None = None) -> None:
        super().__init__(
            device_id,
            poll_interval_s=params.poll_interval_s,
            # A poll waits for the first frame up to the silence timeout; the rest is slack.
            poll_timeout_s=params.silence_timeout_s + 5.0,
            stale_after_s=params.silence_timeout_s + params.poll_interval_s,
            clock=clock,
        )
        self.params = params
        self._db = load_dbc(params.dbc)
        self._messages = {m.frame_id: m for m in selected_messages(self._db, params.messages)}
        self._channels = signal_specs(list(self._messages.values()))
        self._lock = threading.Lock()
        self._latest: dict[str, Scalar] = {}
        self._last_frame: float | None = None  # monotonic
        self._started_at = time.monotonic()
        self._bus: can.BusABC | None = None
        self._thread: threading.Thread | None = None
        self._stop_rx = threading.Event()
        self._rx_error: BaseException | None = None
        self._arrived: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.frames = 0
        self.decode_errors = 0
        self._published_errors = -1

    @property
    def device_channels(self) -> tuple[ChannelSpec, ...]:
        return self._channels

    @property
    def extra_channels(self) -> tuple[ChannelSpec, ...]:
        return (DECODE_ERRORS,)

    def status_values(self) -> dict[str, Number]:
        if self.decode_errors == self._published_errors:
            return {}
        self._published_errors = self.decode_errors
        return {"DecodeErrors": self.decode_errors}

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._arrived = asyncio.Event()
        self._started_at = time.monotonic()
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        await asyncio.to_thread(self._close_bus)

    # -- the receive thread ------------------------------------------------------------------------

    def _open_bus(self) -> None:
        import can

        filters: list[can.typechecking.CanFilter] = [
            {
                "can_id": m.frame_id,
                "can_mask": 0x1FFFFFFF if m.is_extended_frame else 0x7FF,
                "extended": m.is_extended_frame,
            }
            for m in self._messages.values()
        ]
        options: dict[str, Any] = dict(self.params.bus_options)
        bus = can.Bus(interface=self.params.interface, channel=self.params.channel, can_filters=filters, **options)
        self._bus = bus
        self._rx_error = None
        self._stop_rx.clear()
        self._thread = threading.Thread(target=self._receive, args=(bus,), name=f"can:{self.device_id}", daemon=True)
        self._thread.start()

    def _close_bus(self) -> None:
        self._stop_rx.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=2 * _RECV_POLL_S + 1)
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.shutdown()

    def _receive(self, bus: can.BusABC) -> None:
        while not self._stop_rx.is_set():
            try:
                msg = bus.recv(timeout=_RECV_POLL_S)
            except Exception as exc:  # interface went down: the poll reopens the bus
                self._rx_error = exc
                self._wake()
                return
            if msg is None or msg.is_error_frame or msg.is_remote_frame:
                continue
            message = self._messages.get(msg.arbitration_id)
            if message is None:
                continue  # the interface may not filter in hardware (udp_multicast does it in Python)
            try:
                decoded = message.decode(bytes(msg.data), decode_choices=False)
                if not isinstance(decoded, dict):
                    raise TypeError("container message")  # not used by BMS frames
            except Exception:  # wrong length, bad multiplexer: count it, keep the bus
                with self._lock:
                    self.decode_errors += 1
                continue
            values: dict[str, Scalar] = {k: v for k, v in decoded.items() if isinstance(v, int | float)}
            with self._lock:
                self._latest.update(values)
                self._last_frame = time.monotonic()
                self.frames += 1
            self._wake()

    def _wake(self) -> None:
        loop, event = self._loop, self._arrived
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    # -- polls (event loop) ----------------------------------------------------------------------

    async def read_device(self) -> Mapping[str, Scalar]:
        if self._bus is None:
            try:
                await asyncio.to_thread(self._open_bus)
            except Exception as exc:
                raise CommunicationError(
                    f"cannot open CAN bus {self.params.interface}:{self.params.channel}: {exc}"
                ) from exc
        assert self._arrived is not None
        while True:
            # Cleared before looking, so a frame arriving in between still wakes the wait below.
            self._arrived.clear()
            if self._rx_error is not None:
                error = self._rx_error
                await asyncio.to_thread(self._close_bus)
                raise CommunicationError(f"CAN bus failed: {error!r}")
            with self._lock:
                fresh, self._latest = self._latest, {}
                last = self._last_frame
            if fresh:
                return fresh
            silent_since = last if last is not None else self._started_at
            remaining = self.params.silence_timeout_s - (time.monotonic() - silent_since)
            if remaining <= 0:
                raise CommunicationError(f"CAN bus silent for {time.monotonic() - silent_since:.1f} s")
            # Wait for the next frame rather than failing at once: a 1 s poll and a 1 s BMS cycle may
            # simply be out of phase. asyncio.timeout, not wait_for: on Python 3.11 wait_for returns when the
            # frame was signalled just as the device was stopped and drops the cancellation; the poll then
            # returned and stop() waited for the next one.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()

    async def apply(self, outputs: Mapping[str, float]) -> None:
        """Nothing to write: the BMS channels are all inputs."""
