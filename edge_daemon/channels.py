"""The device abstraction layer's data plane: a thread-safe store of timestamped channel values.

Channel names are hierarchical, `device/Channel` (e.g. `battery_1/Soc`), optionally deeper
(`battery_1/SetActivePower/Request`). Every value carries a timestamp in epoch seconds (UTC, see
`edge_daemon.clock`) and a category:

- INPUT: measured by devices (telemetry).
- OUTPUT: setpoints written by controllers and applied by devices.
- REQUEST: a command from the cloud waiting for a controller (`<output>/Request`, value `Request`).
- ACK: the final status of a command (`<output>/Ack`, value `Ack`).

One `threading.Lock` guards everything. Critical sections are a few dict operations, so the store is
safe to call directly from asyncio code (it never blocks on I/O) as well as from driver threads.
"""

from __future__ import annotations

import enum
import re
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, TypeAlias

from edge_daemon.clock import Clock, SystemClock
from edge_daemon.errors import ChannelError

Scalar: TypeAlias = float | int | bool | str | None
Number: TypeAlias = float | int | bool


class Category(enum.Enum):
    INPUT = "input"
    OUTPUT = "output"
    REQUEST = "request"
    ACK = "ack"


class AckStatus(enum.Enum):
    EXECUTED = "executed"
    REJECTED = "rejected"
    FAILED = "failed"


class AckReason(enum.StrEnum):
    """Why a command was refused or failed, decided where the verdict is made (never parsed from text).

    The value is the reason string of the contract (CommandAck.reason, stored by the edge's journal and
    by the cloud); the name is the CommandAckReason value without its prefix (see `uplink.wire`).
    """

    EXPIRED = "expired"
    CHANNEL_NOT_FOUND = "CHANNEL_NOT_FOUND"
    CHANNEL_NOT_WRITABLE = "CHANNEL_NOT_WRITABLE"
    FIELD_INVALID = "FIELD_INVALID"
    VALUE_OUT_OF_RANGE = "VALUE_OUT_OF_RANGE"
    VALUE_EXCEEDS_DYNAMIC_LIMIT = "VALUE_EXCEEDS_DYNAMIC_LIMIT"
    SUPERSEDED = "SUPERSEDED"
    EDGE_REJECTED = "EDGE_REJECTED"
    EDGE_FAILED = "EDGE_FAILED"
    EDGE_RESTARTED = "EDGE_RESTARTED"


@dataclass(frozen=True, slots=True)
class Request:
    """A command waiting on a request channel. `value=None` releases a manual override."""

    command_id: str
    value: float | None
    hold_s: float | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    """The final status of a command, written once to the ack channel of the output it targeted.

    `reason` is text for people; `code` says why a REJECTED or FAILED command was refused.
    """

    command_id: str
    status: AckStatus
    reason: str = ""
    applied_value: float | None = None
    code: AckReason | None = None


Value: TypeAlias = Scalar | Request | Ack


@dataclass(frozen=True, slots=True)
class ChannelValue:
    value: Value
    timestamp: float
    category: Category


@dataclass(frozen=True, slots=True)
class ChannelMeta:
    category: Category
    unit: str


@dataclass(frozen=True, slots=True)
class Sample:
    """One telemetry point: the latest value of a channel since the previous drain."""

    name: str
    value: Number
    timestamp: float


@dataclass(frozen=True, slots=True)
class AckEvent:
    channel: str
    ack: Ack
    timestamp: float


REQUEST_SUFFIX: Final = "/Request"
ACK_SUFFIX: Final = "/Ack"

_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9_-]*"
_NAME_RE: Final = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})+")
_MAX_NAME: Final = 255
# Only measured values and setpoints are telemetry; strings have no column on the wire and requests and
# acks travel as commands, not samples.
_TELEMETRY: Final = frozenset({Category.INPUT, Category.OUTPUT})


def validate_name(name: str) -> str:
    if len(name) > _MAX_NAME or _NAME_RE.fullmatch(name) is None:
        raise ChannelError(f"invalid channel name {name!r}: expected 'device/Channel' (letters, digits, _ and -)")
    return name


def request_channel(output: str) -> str:
    return output + REQUEST_SUFFIX


def ack_channel(output: str) -> str:
    return output + ACK_SUFFIX


def _check_value(name: str, category: Category, value: Value) -> None:
    if category is Category.REQUEST:
        ok = isinstance(value, Request)
    elif category is Category.ACK:
        ok = isinstance(value, Ack)
    else:
        ok = not isinstance(value, Request | Ack)
    if not ok:
        raise ChannelError(f"{name}: a {category.value} channel cannot hold {type(value).__name__}")


class _Missing:
    pass


MISSING: Final = _Missing()


class ChannelStore:
    def __init__(self, clock: Clock | None = None, *, max_pending_acks: int = 10_000) -> None:
        self._clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._values: dict[str, ChannelValue] = {}
        self._meta: dict[str, ChannelMeta] = {}
        self._snapshot: Mapping[str, ChannelValue] | None = None
        self._dirty: dict[str, ChannelValue] = {}
        # Acks are events, not state: two commands on one channel within a cycle must both be reported.
        self._acks: deque[AckEvent] = deque(maxlen=max_pending_acks)
        self.dropped_acks = 0

    # -- declaration -----------------------------------------------------------------------------

    def declare(self, name: str, category: Category, unit: str = "") -> None:
        """Fix a channel's category and unit. Redeclaring identically is a no-op."""
        with self._lock:
            self._declare_locked(name, category, unit)

    def _declare_locked(self, name: str, category: Category, unit: str | None) -> ChannelMeta:
        meta = self._meta.get(name)
        if meta is None:
            validate_name(name)
            meta = ChannelMeta(category, unit or "")
            self._meta[name] = meta
            return meta
        if meta.category is not category:
            raise ChannelError(f"{name} is a {meta.category.value} channel, not {category.value}")
        if unit is not None and unit != meta.unit:
            raise ChannelError(f"{name} has unit {meta.unit!r}, not {unit!r}")
        return meta

    def _meta_for_write(self, name: str, category: Category | None) -> ChannelMeta:
        meta = self._meta.get(name)
        if meta is not None and (category is None or category is meta.category):
            return meta
        return self._declare_locked(name, category or Category.INPUT, None)

    def meta(self, name: str) -> ChannelMeta | None:
        with self._lock:
            return self._meta.get(name)

    def catalog(self) -> Mapping[str, ChannelMeta]:
        with self._lock:
            return MappingProxyType(dict(self._meta))

    # -- writes ----------------------------------------------------------------------------------

    def set(self, name: str, value: Value, ts: float | None = None, category: Category | None = None) -> None:
        """Store a value. `category=None` keeps the declared category (INPUT for a new channel)."""
        self.swap(name, value, ts, category)

    def swap(
        self, name: str, value: Value, ts: float | None = None, category: Category | None = None
    ) -> ChannelValue | None:
        """Store a value and return the one it replaced, atomically."""
        when = self._clock.time() if ts is None else ts
        with self._lock:
            meta = self._meta_for_write(name, category)
            _check_value(name, meta.category, value)
            return self._put_locked(name, ChannelValue(value, when, meta.category))

    def set_many(
        self,
        values: Mapping[str, Value] | Iterable[tuple[str, Value]],
        ts: float | None = None,
        category: Category | None = None,
    ) -> None:
        """Store several values atomically: a snapshot sees all of them or none."""
        when = self._clock.time() if ts is None else ts
        items = values.items() if isinstance(values, Mapping) else values
        with self._lock:
            staged = []
            for name, value in items:
                meta = self._meta_for_write(name, category)
                _check_value(name, meta.category, value)
                staged.append((name, ChannelValue(value, when, meta.category)))
            for name, cv in staged:
                self._put_locked(name, cv)

    def _put_locked(self, name: str, cv: ChannelValue) -> ChannelValue | None:
        previous = self._values.get(name)
        self._values[name] = cv
        self._snapshot = None
        value = cv.value
        if cv.category in _TELEMETRY:
            if isinstance(value, int | float):  # bool is an int
                self._dirty[name] = cv
        elif cv.category is Category.ACK:
            assert isinstance(value, Ack)
            if len(self._acks) == self._acks.maxlen:
                self.dropped_acks += 1
            self._acks.append(AckEvent(name, value, cv.timestamp))
        return previous

    def clear(self, name: str, expected: Value | _Missing = MISSING) -> bool:
        """Remove a value. With `expected`, only if the current value still equals it (compare-and-clear),
        so a controller never erases a request that arrived after it took its snapshot."""
        with self._lock:
            current = self._values.get(name)
            if current is None:
                return False
            if not isinstance(expected, _Missing) and current.value != expected:
                return False
            del self._values[name]
            self._dirty.pop(name, None)
            self._snapshot = None
            return True

    # -- reads -----------------------------------------------------------------------------------

    def get(self, name: str) -> ChannelValue | None:
        with self._lock:
            return self._values.get(name)

    def snapshot(self) -> Mapping[str, ChannelValue]:
        """An immutable, consistent view of every channel. Cached until the next write, so repeated
        snapshots of an idle store cost nothing."""
        with self._lock:
            if self._snapshot is None:
                self._snapshot = MappingProxyType(dict(self._values))
            return self._snapshot

    def drain_samples(self) -> list[Sample]:
        """Numeric INPUT and OUTPUT values set since the previous call, at most one (the latest) per
        channel, in first-change order. Called once per cycle, this is per-cycle sampling."""
        with self._lock:
            dirty, self._dirty = self._dirty, {}
        out: list[Sample] = []
        for name, cv in dirty.items():
            value = cv.value
            assert isinstance(value, int | float)
            out.append(Sample(name, value, cv.timestamp))
        return out

    def drain_acks(self) -> list[AckEvent]:
        """Every ack written since the previous call, in write order."""
        with self._lock:
            acks = list(self._acks)
            self._acks.clear()
        return acks
