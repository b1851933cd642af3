"""proto3 JSON text of answers, printed straight from the message by a printer compiled per message type.

`json_encoder.message_to_dict` builds a document of dicts and lists that `json.dumps` then walks again;
for the gateway's most frequent answer (50 latest values) the two were about equal halves of 28 % of
the gateway's event-loop time. Here each field's text is made where its value is read. The output is
byte for byte `json.dumps(message_to_dict(message), separators=(",", ":"), ensure_ascii=False)`, so
the same as json_format's (`tests/gateway/test_json_encoder.py` proves it on generated messages of
every contract type): keys and strings escaped by json's own `encode_basestring`, floats by
`float.__repr__` as json does, the same key order (set fields by number, then the unset fields without
presence in declaration order). The rare well-known types (Any, Struct, wrappers, ...) are the dict
encoder's document through `json.dumps`. A value the fast path cannot print raises `Unprintable`: the
caller prints that answer the slow way, which fails exactly as before.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from json.encoder import encode_basestring
from typing import Any

from google.protobuf import descriptor as d

from gateway.json_encoder import (
    duration_text,
    enum_names,
    float_value,
    generic_document,
    is_input_only,
    timestamp_text,
)

Printer = Callable[[Any], str]

_INT64 = {d.FieldDescriptor.CPPTYPE_INT64, d.FieldDescriptor.CPPTYPE_UINT64}
_float_repr = float.__repr__
_escape: Callable[[str], str] = encode_basestring


def _dumps(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def _timestamp(message: Any) -> str:
    return f'"{timestamp_text(message)}"'


def _duration(message: Any) -> str:
    return f'"{duration_text(message)}"'


def _generic(message: Any) -> str:
    return _dumps(generic_document(message))


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _int64(value: int) -> str:
    return f'"{value}"'


def _double(value: float) -> str:
    if math.isfinite(value):
        return _float_repr(value)
    return '"NaN"' if math.isnan(value) else ('"-Infinity"' if value < 0 else '"Infinity"')


def _float(value: float) -> str:
    printed = float_value(value)
    return f'"{printed}"' if isinstance(printed, str) else _float_repr(printed)


def _bytes(value: bytes) -> str:
    return f'"{base64.b64encode(value).decode()}"'


def _enum(enum: Any) -> Printer:
    if enum.full_name == "google.protobuf.NullValue":
        return lambda value: "null"
    names = {number: f'"{name}"' for number, name in enum_names(enum).items()}
    # An open enum prints a number it does not know as that number, as json_format does.
    return lambda value: names.get(value) or str(value)


class _Compiler:
    def __init__(self) -> None:
        self._printers: dict[str, Printer] = {}

    def message(self, descriptor: Any) -> Printer:
        found = self._printers.get(descriptor.full_name)
        if found is not None:
            return found
        name = descriptor.full_name
        if name == "google.protobuf.Timestamp":
            printer: Printer = _timestamp
        elif name == "google.protobuf.Duration":
            printer = _duration
        elif name.startswith("google.protobuf.") and name != "google.protobuf.Empty":
            printer = _generic
        else:
            # A late-bound cell lets recursive types (a message containing itself) compile.
            cell: list[Printer] = []
            self._printers[name] = lambda message: cell[0](message)
            cell.append(self._regular(descriptor))
            printer = cell[0]
        self._printers[name] = printer
        return printer

    def value(self, field: d.FieldDescriptor) -> Printer:
        """The text of one value of the field."""
        cpp = field.cpp_type
        if cpp == d.FieldDescriptor.CPPTYPE_MESSAGE:
            return self.message(field.message_type)
        if cpp == d.FieldDescriptor.CPPTYPE_ENUM:
            return _enum(field.enum_type)
        if cpp in _INT64:
            return _int64
        if cpp == d.FieldDescriptor.CPPTYPE_FLOAT:
            return _float
        if cpp == d.FieldDescriptor.CPPTYPE_DOUBLE:
            return _double
        if cpp == d.FieldDescriptor.CPPTYPE_BOOL:
            return _bool
        if field.type == d.FieldDescriptor.TYPE_BYTES:
            return _bytes
        if cpp == d.FieldDescriptor.CPPTYPE_STRING:
            return _escape
        return str  # 32-bit integers: int.__repr__, as json prints them

    def _field(self, field: d.FieldDescriptor) -> tuple[Callable[[Any], str | None], str | None]:
        """(the field's `"key":value` text when it is set, else None; the text printed when it is not,
        None for a field with presence, which is then left out)."""
        name = field.name
        prefix = _escape(field.json_name) + ":"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_text = self.value(field.message_type.fields_by_name["value"])
            bool_keys = field.message_type.fields_by_name["key"].type == d.FieldDescriptor.TYPE_BOOL

            def map_key(k: Any) -> str:
                return ("true" if k else "false") if bool_keys else str(k)

            def put_map(message: Any) -> str | None:
                items = getattr(message, name)
                if not items:
                    return None
                body = ",".join(_escape(map_key(k)) + ":" + value_text(items[k]) for k in items)
                return prefix + "{" + body + "}"

            return put_map, prefix + "{}"

        text = self.value(field)
        if field.is_repeated:

            def put_list(message: Any) -> str | None:
                items = getattr(message, name)
                if not items:
                    return None
                return prefix + "[" + ",".join([text(v) for v in items]) + "]"

            return put_list, prefix + "[]"

        if field.has_presence:

            def put_present(message: Any) -> str | None:
                if not message.HasField(name):
                    return None
                return prefix + text(getattr(message, name))

            return put_present, None

        default = field.default_value
        printed_default = prefix + text(default)
        if field.cpp_type in (d.FieldDescriptor.CPPTYPE_FLOAT, d.FieldDescriptor.CPPTYPE_DOUBLE):
            # -0.0 == 0.0, but it is set (its bits differ), and json_format lists it among set fields.
            def put_number(message: Any) -> str | None:
                value = getattr(message, name)
                if value == 0.0 and math.copysign(1.0, value) > 0:
                    return None
                return prefix + text(value)

            return put_number, printed_default

        def put_scalar(message: Any) -> str | None:
            value = getattr(message, name)
            if value == default:
                return None
            return prefix + text(value)

        return put_scalar, printed_default

    def _regular(self, descriptor: d.Descriptor) -> Printer:
        printed = [f for f in descriptor.fields if not is_input_only(f)]
        puts = {f.number: self._field(f) for f in printed}
        ordered = [puts[f.number][0] for f in sorted(printed, key=lambda f: f.number)]
        # Unset fields without presence follow the set ones in declaration order; each is paired with
        # its slot among `ordered`, to tell whether it was set.
        slot = {f.number: i for i, f in enumerate(sorted(printed, key=lambda f: f.number))}
        defaults: list[tuple[int, str]] = []
        for f in printed:
            unset_text = puts[f.number][1]
            if unset_text is not None:
                defaults.append((slot[f.number], unset_text))

        if not defaults:

            def print_sparse(message: Any) -> str:
                parts = [p for p in (put(message) for put in ordered) if p is not None]
                return "{" + ",".join(parts) + "}"

            return print_sparse

        def print_message(message: Any) -> str:
            found = [put(message) for put in ordered]
            parts = [p for p in found if p is not None]
            parts += [text for i, text in defaults if found[i] is None]
            return "{" + ",".join(parts) + "}"

        return print_message


_COMPILER = _Compiler()


def message_json(message: Any) -> str:
    """The message's proto3 JSON text (see the module's docstring); raises Unprintable for a value
    only json_format may print or refuse."""
    return _COMPILER.message(message.DESCRIPTOR)(message)
