"""Small shapes every servicer shares: the servicer context type and datetime -> Timestamp."""

from __future__ import annotations

import datetime as dt
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

# What grpc.aio passes to every handler; the request and response types vary per method.
Context = grpc.aio.ServicerContext[Any, Any]


def timestamp(value: dt.datetime) -> timestamp_pb2.Timestamp:
    """A timezone-aware datetime (as asyncpg returns timestamptz) as a protobuf Timestamp."""
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def timestamp_or_none(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    """For optional fields: None stays None, so the field is left unset."""
    return None if value is None else timestamp(value)
