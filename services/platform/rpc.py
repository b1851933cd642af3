"""Small shapes every servicer shares: the servicer context type and datetime -> Timestamp."""

from __future__ import annotations

import datetime as dt
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

# What grpc.aio passes to every handler; the request and response types vary per method.
Context = grpc.aio.ServicerContext[Any, Any]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# google/protobuf/timestamp.proto's range (0001-01-01 to 9999-12-31), which FromDatetime enforces.
_MIN_S = -62_135_596_800
_MAX_S = 253_402_300_799


def set_timestamp(out: timestamp_pb2.Timestamp, value: dt.datetime) -> None:
    """`value` into `out` (a message's Timestamp field, set in place, so that nothing is copied).

    A timezone-aware datetime (asyncpg's timestamptz, datetime.now(UTC)) takes one subtraction:
    Timestamp.FromDatetime goes through a UTC time tuple and calendar.timegm in Python, 3-4 times the
    cost, which a market summary's ~60 timestamps paid per zone. Anything else (a naive datetime, read
    as UTC; a value outside the Timestamp range, refused with ValueError) is FromDatetime's.
    """
    if value.tzinfo is not None:
        try:
            delta = value - _EPOCH
        except TypeError:  # a tzinfo whose utcoffset() is None: naive after all
            pass
        else:
            seconds = delta.days * 86_400 + delta.seconds
            if _MIN_S <= seconds <= _MAX_S:
                out.seconds = seconds
                out.nanos = delta.microseconds * 1000
                return
    out.FromDatetime(value)


def timestamp(value: dt.datetime) -> timestamp_pb2.Timestamp:
    """A datetime (timezone-aware, as asyncpg returns timestamptz; naive is read as UTC) as a protobuf
    Timestamp."""
    out = timestamp_pb2.Timestamp()
    set_timestamp(out, value)
    return out


def timestamp_or_none(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    """For optional fields: None stays None, so the field is left unset."""
    return None if value is None else timestamp(value)
