"""PostgreSQL binary COPY payloads for market values, built a series at a time.

Every row of a price, flow or capacity series has the same fields but two: its delivery start and
its value. So a series' rows are one `struct` format of fixed bytes, a start, fixed bytes, a value,
fixed bytes, packed by `map` in C from the series' columns (SlotColumns: starts in microseconds, no
datetime per row), instead of asyncpg encoding a 13-field tuple per row from Python objects. The
bytes PostgreSQL receives are those `copy_records_to_table` would send for the same rows.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from datetime import datetime
from itertools import repeat
from typing import Final

from services.market.model import epoch_us

# COPY BINARY: signature, flags, header extension length; the file trailer is a field count of -1.
_HEADER: Final = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_TRAILER: Final = struct.pack("!h", -1)
# timestamptz travels as microseconds since 2000-01-01 UTC; SlotColumns count from 1970-01-01.
_PG_EPOCH_US: Final = 946_684_800_000_000
_TIME_LENGTH: Final = struct.pack("!i", 8)
_VALUE_LENGTH: Final = struct.pack("!i", 8)


def text(value: str) -> bytes:
    data = value.encode()
    return struct.pack("!i", len(data)) + data


# A NULL field: its length is -1 and no bytes follow.
NULL: Final = struct.pack("!i", -1)
_TEXT_OID: Final = 25


def timestamptz(value: datetime | None) -> bytes:
    """A timezone-aware time (or NULL) as PostgreSQL's binary timestamptz."""
    if value is None:
        return NULL
    return struct.pack("!iq", 8, epoch_us(value) - _PG_EPOCH_US)


def text_array(values: Sequence[str]) -> bytes:
    """A one-dimensional text[] (lower bound 1, no NULLs) in PostgreSQL's binary array format."""
    if not values:
        body = struct.pack("!iii", 0, 0, _TEXT_OID)
    else:
        body = struct.pack("!iiiii", 1, 0, _TEXT_OID, len(values), 1) + b"".join(map(text, values))
    return struct.pack("!i", len(body)) + body


def int2(value: int) -> bytes:
    return struct.pack("!ih", 2, value)


def int4(value: int) -> bytes:
    return struct.pack("!ii", 4, value)


def int8(value: int) -> bytes:
    return struct.pack("!iq", 8, value)


@functools.lru_cache(maxsize=256)
def _row(before: int, middle: int, after: int) -> struct.Struct:
    return struct.Struct(f"!{before}sq{middle}sd{after}s")


class CopyRows:
    """The rows of one COPY, as (fields before the start, start, fields between, value, fields after)
    per series; `payload()` is the whole binary COPY stream."""

    __slots__ = ("_count", "_parts", "rows")

    def __init__(self, columns: int) -> None:
        self._count = struct.pack("!h", columns)
        self._parts: list[bytes] = [_HEADER]
        self.rows = 0

    def series(
        self, before: bytes, starts_us: Sequence[int], middle: bytes, values: Sequence[float], after: bytes
    ) -> None:
        """Add a series' rows. `before`, `middle` and `after` are encoded fields (text(), int4(), ...);
        starts in microseconds since the Unix epoch, values finite floats (the caller checked)."""
        n = len(values)
        if not n:
            return
        head = self._count + before + _TIME_LENGTH
        mid = middle + _VALUE_LENGTH
        if isinstance(starts_us, range):
            starts: Sequence[int] = range(starts_us.start - _PG_EPOCH_US, starts_us.stop - _PG_EPOCH_US, starts_us.step)
        else:
            starts = [t - _PG_EPOCH_US for t in starts_us]
        pack = _row(len(head), len(mid), len(after)).pack
        self._parts.append(b"".join(map(pack, repeat(head, n), starts, repeat(mid, n), values, repeat(after, n))))
        self.rows += n

    def row(self, fields: bytes) -> None:
        """Add one row of already encoded fields (as many as the COPY's columns)."""
        self._parts.append(self._count + fields)
        self.rows += 1

    def payload(self) -> memoryview:
        # A memoryview: asyncpg takes bytes for a file path.
        return memoryview(b"".join([*self._parts, _TRAILER]))
