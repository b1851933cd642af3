"""samples_copy_payload: PostgreSQL's binary COPY format, row by row as the protocol documents it."""

from __future__ import annotations

import struct

import numpy as np

from services.telemetry.copy_binary import PG_EPOCH_OFFSET_US, samples_copy_payload


def by_the_book(series: list[int], times: list[int], values: list[float]) -> bytes:
    """Signature, flags, header extension; per row the field count and each field's length and bytes;
    the trailer -1 (https://www.postgresql.org/docs/16/sql-copy.html, binary format)."""
    out = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
    for s, t, v in zip(series, times, values, strict=True):
        out += struct.pack("!h", 3) + struct.pack("!iq", 8, s) + struct.pack("!iq", 8, t - PG_EPOCH_OFFSET_US)
        out += struct.pack("!id", 8, v)
    return out + struct.pack("!h", -1)


def test_the_payload_is_the_binary_copy_format() -> None:
    series = [1, 2**40, 7]
    times = [1_700_000_000_123_456, PG_EPOCH_OFFSET_US, 0]
    values = [1.5, -0.0, 1e300]
    payload = samples_copy_payload(
        np.array(series, dtype=np.int64), np.array(times, dtype=np.int64), np.array(values, dtype=np.float64)
    )
    assert bytes(payload) == by_the_book(series, times, values)


def test_no_rows_is_the_header_and_the_trailer() -> None:
    empty = np.zeros(0, dtype=np.int64)
    assert bytes(samples_copy_payload(empty, empty, np.zeros(0))) == by_the_book([], [], [])
