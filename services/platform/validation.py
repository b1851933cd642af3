"""The checks every request message passes before any interceptor or servicer sees it.

Some values are wrong whatever the method, and letting one through costs more than a 400:

- a NUL byte in a string: PostgreSQL's text types cannot hold it, so the query fails and the caller
  got INTERNAL instead of being told which field is wrong;
- an enum number that its enum does not define: proto3 enums are open, so the parser keeps 999 and a
  servicer would either fail on it or quietly take it for the default;
- a Timestamp or Duration outside the range google/protobuf/timestamp.proto and duration.proto
  define (years 1 to 9999, about 10,000 years): converting one to a datetime or timedelta overflows.

`check_request` walks the message recursively (nested, repeated and map fields) and raises one
INVALID_ARGUMENT FIELD_INVALID naming every bad field path (`filter.actor`, `channels[2]`,
`labels["k"]`) in its BadRequest. The PlatformInterceptor runs it on every request message of a
unary or server-streaming call, before authentication, so methods without credentials (Login) are
covered too. The EdgeLink stream is not checked here: an edge's messages keep unknown enum values
(newer edges) and its servicer validates each message itself.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import grpc
from emma.common.v1 import errors_pb2
from google.protobuf import descriptor as d
from google.protobuf.message import Message

from services.errors import ApiError

_FD = d.FieldDescriptor

# google/protobuf/timestamp.proto: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
TIMESTAMP_MIN_S = -62_135_596_800
TIMESTAMP_MAX_S = 253_402_300_799
# google/protobuf/duration.proto: about +-10,000 years.
DURATION_MAX_S = 315_576_000_000
_NANOS = 1_000_000_000
# A request with thousands of bad values needs only the first few named.
MAX_VIOLATIONS = 20


@functools.cache
def _needs_walk(message: d.Descriptor) -> bool:
    """Whether a message can hold anything this module checks (strings, enums, times), so that the
    many messages of numbers only cost nothing."""
    seen: set[str] = set()

    def walk(m: d.Descriptor) -> bool:
        if m.full_name in seen:
            return False
        seen.add(m.full_name)
        if m.full_name in _WKT_CHECKS:
            return True
        for f in m.fields:
            if f.type in (_FD.TYPE_STRING, _FD.TYPE_ENUM):
                return True
            if f.message_type is not None and walk(f.message_type):
                return True
        return False

    return walk(message)


def _timestamp_problem(m: Message) -> str:
    seconds: int = getattr(m, "seconds")  # noqa: B009 - a generic Message has no typed fields
    nanos: int = getattr(m, "nanos")  # noqa: B009
    if not TIMESTAMP_MIN_S <= seconds <= TIMESTAMP_MAX_S:
        return "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z"
    if not 0 <= nanos < _NANOS:
        return "nanos must be between 0 and 999,999,999"
    return ""


def _duration_problem(m: Message) -> str:
    seconds: int = getattr(m, "seconds")  # noqa: B009
    nanos: int = getattr(m, "nanos")  # noqa: B009
    if not -DURATION_MAX_S <= seconds <= DURATION_MAX_S:
        return f"must be between -{DURATION_MAX_S}s and {DURATION_MAX_S}s"
    if not -_NANOS < nanos < _NANOS or (seconds > 0 > nanos) or (seconds < 0 < nanos):
        return "nanos must be below one second and have the sign of seconds"
    return ""


_WKT_CHECKS = {
    "google.protobuf.Timestamp": _timestamp_problem,
    "google.protobuf.Duration": _duration_problem,
}


def _scalar_problem(f: d.FieldDescriptor, value: Any) -> str:
    if f.type == _FD.TYPE_STRING:
        return "must not contain a NUL byte (\\u0000)" if "\x00" in value else ""
    if f.type == _FD.TYPE_ENUM:
        assert f.enum_type is not None
        if value not in f.enum_type.values_by_number:
            return f"{value} is not a value of {f.enum_type.full_name}"
    return ""


def _key_text(key: Any) -> str:
    text = key if isinstance(key, str) else str(key)
    # The path is shown back to the caller: a key with a NUL byte is not repeated in it.
    return '"' + text.replace("\x00", "\\u0000").replace('"', '\\"') + '"'


def violations(message: Message, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(field path, what is wrong) for every bad value in `message`, in field order."""
    descriptor = message.DESCRIPTOR
    wkt = _WKT_CHECKS.get(descriptor.full_name)
    if wkt is not None:
        problem = wkt(message)
        if problem:
            yield prefix.rstrip(".") or descriptor.name, problem
        return
    if not _needs_walk(descriptor):
        return
    for f, value in message.ListFields():
        path = prefix + f.name
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            key_field = f.message_type.fields_by_name["key"]
            value_field = f.message_type.fields_by_name["value"]
            for key, item in value.items():
                item_path = f"{path}[{_key_text(key)}]"
                if problem := _scalar_problem(key_field, key):
                    yield item_path, f"the key {problem}"
                if value_field.message_type is not None:
                    yield from violations(item, item_path + ".")
                elif problem := _scalar_problem(value_field, item):
                    yield item_path, problem
        elif f.is_repeated:
            for i, item in enumerate(value):
                if f.message_type is not None:
                    yield from violations(item, f"{path}[{i}].")
                elif problem := _scalar_problem(f, item):
                    yield f"{path}[{i}]", problem
        elif f.message_type is not None:
            yield from violations(value, path + ".")
        elif problem := _scalar_problem(f, value):
            yield path, problem


def check_request(message: Any) -> None:
    """Raise INVALID_ARGUMENT FIELD_INVALID naming every bad field of `message` (see the module doc)."""
    if not isinstance(message, Message):
        return
    found: list[tuple[str, str]] = []
    for violation in violations(message):
        found.append(violation)
        if len(found) == MAX_VIOLATIONS:
            break
    if not found:
        return
    field, description = found[0]
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    raise ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        errors_pb2.ERROR_REASON_FIELD_INVALID,
        f"{field}: {description}{more}",
        metadata={"field": field},
        field_violations=found,
    )
