"""proto3 JSON of answers, from an encoder compiled once per message type.

`json_format.MessageToDict` decides, for every field of every message it prints, what kind of field it
is, which name to print and how to convert the value; with 50 values in an answer that generic walk
was 42 % of the gateway's event-loop time. Here those decisions are made once per message type from
its descriptor, and each answer only runs the conversions. The output is the same document
`MessageToDict(message, always_print_fields_with_no_presence=True)` makes, in the same key order
(set fields by field number, then unset fields without presence in declaration order), minus the
INPUT_ONLY fields the gateway never prints; `tests/gateway/test_json_encoder.py` proves it byte for
byte on generated messages of every type in the contracts.

Timestamp and Duration, in nearly every answer, are printed here with the same rules as protobuf's
`ToJsonString` (RFC 3339 in UTC with 0, 3, 6 or 9 fractional digits; "1.5s"). The other well-known
types (Any, Struct, Value, ListValue, FieldMask, wrappers) are rare in answers and keep json_format's
own printer. A value the fast path cannot print (a Timestamp out of range) is handed to json_format,
so an answer fails exactly as it did before.
"""

from __future__ import annotations

import base64
import datetime
import math
from collections.abc import Callable
from functools import cache
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf import descriptor as d
from google.protobuf import json_format
from google.protobuf.internal import type_checkers
from google.protobuf.message import Message

Encoder = Callable[[Any], Any]

# types-protobuf types extensions as generic descriptors the googleapis stubs do not declare.
_FIELD_BEHAVIOR: Any = field_behavior_pb2.field_behavior

_EPOCH = datetime.datetime(1970, 1, 1)
# The range protobuf accepts for a Timestamp: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
_TIMESTAMP_MIN_SECONDS = -62135596800
_TIMESTAMP_MAX_SECONDS = 253402300799
_DURATION_MAX_SECONDS = 315576000000
_NANOS_PER_SECOND = 1_000_000_000

_FAST_WELL_KNOWN = {"google.protobuf.Timestamp", "google.protobuf.Duration"}
_INT64 = {d.FieldDescriptor.CPPTYPE_INT64, d.FieldDescriptor.CPPTYPE_UINT64}


class Unprintable(Exception):
    """A value the fast path does not print; json_format prints (or refuses) the whole answer."""


def is_input_only(field: d.FieldDescriptor) -> bool:
    return field_behavior_pb2.INPUT_ONLY in field.GetOptions().Extensions[_FIELD_BEHAVIOR]


def _fraction(nanos: int, unit: str) -> str:
    if nanos == 0:
        return unit
    if nanos % 1_000_000 == 0:
        return f".{nanos // 1_000_000:03d}{unit}"
    if nanos % 1_000 == 0:
        return f".{nanos // 1_000:06d}{unit}"
    return f".{nanos:09d}{unit}"


# The date-time text of recent whole seconds: an answer's timestamps are mostly the same few seconds
# (50 latest values sampled together), and a datetime's isoformat is most of the encoder's time.
_SECONDS_TEXT: dict[int, str] = {}
_SECONDS_TEXT_LIMIT = 4096


def timestamp_text(message: Any) -> str:
    seconds, nanos = message.seconds, message.nanos
    if not (_TIMESTAMP_MIN_SECONDS <= seconds <= _TIMESTAMP_MAX_SECONDS and 0 <= nanos < _NANOS_PER_SECOND):
        raise Unprintable
    text = _SECONDS_TEXT.get(seconds)
    if text is None:
        if len(_SECONDS_TEXT) >= _SECONDS_TEXT_LIMIT:
            _SECONDS_TEXT.clear()
        text = _SECONDS_TEXT[seconds] = (_EPOCH + datetime.timedelta(seconds=seconds)).isoformat()
    return text + _fraction(nanos, "Z")


def duration_text(message: Any) -> str:
    seconds, nanos = message.seconds, message.nanos
    if (
        not -_DURATION_MAX_SECONDS <= seconds <= _DURATION_MAX_SECONDS
        or not -_NANOS_PER_SECOND < nanos < _NANOS_PER_SECOND
        or (seconds > 0 and nanos < 0)
        or (seconds < 0 and nanos > 0)
    ):
        raise Unprintable
    sign = "-" if seconds < 0 or nanos < 0 else ""
    return f"{sign}{abs(seconds)}" + _fraction(abs(nanos), "s")


def generic_document(message: Any) -> Any:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def float_value(value: float) -> Any:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    return type_checkers.ToShortestFloat(value)


def _double(value: float) -> Any:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    return value


def _bytes(value: bytes) -> str:
    return base64.b64encode(value).decode("utf-8")


def enum_names(enum: Any) -> dict[int, str]:
    return {number: value.name for number, value in enum.values_by_number.items()}


def _enum(enum: Any) -> Encoder:
    names = enum_names(enum)
    if enum.full_name == "google.protobuf.NullValue":
        return lambda value: None
    # An open enum prints a number it does not know as that number, as json_format does.
    return lambda value: names.get(value, value)


class _Compiler:
    def __init__(self) -> None:
        self._encoders: dict[str, Encoder] = {}

    def message(self, descriptor: Any) -> Encoder:
        found = self._encoders.get(descriptor.full_name)
        if found is not None:
            return found
        name = descriptor.full_name
        if name == "google.protobuf.Timestamp":
            encoder: Encoder = timestamp_text
        elif name == "google.protobuf.Duration":
            encoder = duration_text
        elif name.startswith("google.protobuf.") and name not in ("google.protobuf.Empty",):
            encoder = generic_document
        else:
            # A late-bound cell lets recursive types (a message containing itself) compile.
            cell: list[Encoder] = []
            self._encoders[name] = lambda message: cell[0](message)
            cell.append(self._regular(descriptor))
            encoder = cell[0]
        self._encoders[name] = encoder
        return encoder

    def value(self, field: d.FieldDescriptor) -> Encoder | None:
        """The conversion of one value of the field; None where the value prints as it is."""
        cpp = field.cpp_type
        if cpp == d.FieldDescriptor.CPPTYPE_MESSAGE:
            return self.message(field.message_type)
        if cpp == d.FieldDescriptor.CPPTYPE_ENUM:
            return _enum(field.enum_type)
        if cpp in _INT64:
            return str
        if cpp == d.FieldDescriptor.CPPTYPE_FLOAT:
            return float_value
        if cpp == d.FieldDescriptor.CPPTYPE_DOUBLE:
            return _double
        if field.type == d.FieldDescriptor.TYPE_BYTES:
            return _bytes
        return None  # string, bool, 32-bit integers

    def _field(self, field: d.FieldDescriptor) -> tuple[Callable[[Any, dict[str, Any]], bool], Callable[[], Any]]:
        """(print the field into the document if it is set, returning whether it was; its default)."""
        name, key = field.name, field.json_name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            convert_value = self.value(value_field)
            bool_keys = field.message_type.fields_by_name["key"].type == d.FieldDescriptor.TYPE_BOOL

            def map_key(k: Any) -> str:
                return ("true" if k else "false") if bool_keys else str(k)

            def put_map(message: Any, doc: dict[str, Any]) -> bool:
                items = getattr(message, name)
                if not items:
                    return False
                if convert_value is None:
                    doc[key] = {map_key(k): items[k] for k in items}
                else:
                    doc[key] = {map_key(k): convert_value(items[k]) for k in items}
                return True

            return put_map, dict

        convert = self.value(field)
        if field.is_repeated:

            def put_list(message: Any, doc: dict[str, Any]) -> bool:
                items = getattr(message, name)
                if not items:
                    return False
                doc[key] = list(items) if convert is None else [convert(v) for v in items]
                return True

            return put_list, list

        if field.has_presence:

            def put_present(message: Any, doc: dict[str, Any]) -> bool:
                if not message.HasField(name):
                    return False
                value = getattr(message, name)
                doc[key] = value if convert is None else convert(value)
                return True

            return put_present, list  # never asked: fields with presence print no default

        default = field.default_value
        printed_default = default if convert is None else convert(default)
        if field.cpp_type in (d.FieldDescriptor.CPPTYPE_FLOAT, d.FieldDescriptor.CPPTYPE_DOUBLE):
            # -0.0 == 0.0, but it is set (its bits differ), and json_format lists it among set fields.
            def put_number(message: Any, doc: dict[str, Any]) -> bool:
                value = getattr(message, name)
                if value == 0.0 and math.copysign(1.0, value) > 0:
                    return False
                doc[key] = convert(value) if convert is not None else value
                return True

            return put_number, lambda: printed_default

        def put_scalar(message: Any, doc: dict[str, Any]) -> bool:
            value = getattr(message, name)
            if value == default:
                return False
            doc[key] = value if convert is None else convert(value)
            return True

        return put_scalar, lambda: printed_default

    def _regular(self, descriptor: d.Descriptor) -> Encoder:
        printed = [f for f in descriptor.fields if not is_input_only(f)]
        by_number = sorted(printed, key=lambda f: f.number)
        puts = {f.number: self._field(f) for f in printed}
        ordered = [puts[f.number][0] for f in by_number]
        # Unset fields without presence, printed after the set ones in declaration order.
        defaults = [(f.json_name, puts[f.number][1]) for f in printed if f.is_repeated or not f.has_presence]

        def encode(message: Any) -> dict[str, Any]:
            doc: dict[str, Any] = {}
            for put in ordered:
                put(message, doc)
            for key, default in defaults:
                if key not in doc:
                    doc[key] = default()
            return doc

        return encode


@cache
def _reaches_input_only(message: d.Descriptor) -> bool:
    seen: set[str] = set()

    def walk(m: d.Descriptor) -> bool:
        if m.full_name in seen:
            return False
        seen.add(m.full_name)
        return any(is_input_only(f) or (f.message_type is not None and walk(f.message_type)) for f in m.fields)

    return walk(message)


def _drop_input_only(message: Any, doc: Any) -> None:
    """Delete every INPUT_ONLY field from json_format's document of a message (the slow path)."""
    if not isinstance(doc, dict) or not _reaches_input_only(message):
        return
    for f in message.fields:
        if f.json_name not in doc:
            continue
        if is_input_only(f):
            del doc[f.json_name]
            continue
        if f.message_type is None:
            continue
        value = doc[f.json_name]
        if f.message_type.GetOptions().map_entry:
            value_type = f.message_type.fields_by_name["value"].message_type
            if value_type is not None and isinstance(value, dict):
                for item in value.values():
                    _drop_input_only(value_type, item)
        elif isinstance(value, list):
            for item in value:
                _drop_input_only(f.message_type, item)
        else:
            _drop_input_only(f.message_type, value)


def slow_message_to_dict(message: Message) -> Any:
    """json_format's document without INPUT_ONLY fields: the reference the compiled encoders match."""
    doc = generic_document(message)
    _drop_input_only(message.DESCRIPTOR, doc)
    return doc


_COMPILER = _Compiler()


def message_to_dict(message: Message) -> Any:
    """`MessageToDict(message, always_print_fields_with_no_presence=True)` without INPUT_ONLY fields
    (AIP-203: they are not output, and printing defaults would otherwise show `"password": ""`)."""
    encoder = _COMPILER.message(message.DESCRIPTOR)
    try:
        return encoder(message)
    except Unprintable:
        return slow_message_to_dict(message)
