"""proto3 JSON text of answers, printed straight from the message by a printer compiled per message type.

`json_encoder.message_to_dict` builds a document of dicts and lists that `json.dumps` then walks again;
for the gateway's most frequent answer (50 latest values) the two were about equal halves of 28 % of
the gateway's event-loop time. Here each field's text is made where its value is read, by a function
written and compiled once per message type (`_Compiler`). The output is
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
import keyword
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
# A message's printer taking the element texts of its repeated message fields (see given_json).
GivenPrinter = Callable[[Any, dict[int, str]], str]

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


def _double(value: float) -> str:
    if math.isfinite(value):
        return _float_repr(value)
    return '"NaN"' if math.isnan(value) else ('"-Infinity"' if value < 0 else '"Infinity"')


def _float(value: float) -> str:
    printed = float_value(value)
    return f'"{printed}"' if isinstance(printed, str) else _float_repr(printed)


def _bytes(value: bytes) -> str:
    return f'"{base64.b64encode(value).decode()}"'


# What the generated printers call, by the names they call them.
_HELPERS: dict[str, Any] = {
    "_escape": _escape,
    "_double": _double,
    "_float": _float,
    "_bytes": _bytes,
    "_repr": _float_repr,
    "_isfinite": math.isfinite,
    "_copysign": math.copysign,
    "_timestamp": _timestamp,
    "_duration": _duration,
    "_generic": _generic,
}


class _Compiler:
    """Writes one Python function per message type from its descriptor and compiles it.

    The function reads each field once and appends its `"key":value` text, the conversions written
    inline (a string's escape, a double's repr, an int64's quotes); unset fields without presence are
    appended last, in declaration order, from constants. Closures per field, which the printer was
    before, cost a call and a list per field of every value (a quarter of the gateway's loop printing
    50 latest values). All functions live in one namespace and call each other by name, so recursive
    types (a message containing itself) need nothing special.
    """

    def __init__(self) -> None:
        self._names: dict[str, str] = {}
        self._given_names: dict[str, str] = {}
        # The functions' globals: the helpers below, then each type's function and constants.
        self._namespace: dict[str, Any] = dict(_HELPERS)

    def message(self, descriptor: Any) -> Printer:
        printer: Printer = self._namespace[self._function(descriptor)]
        return printer

    def given(self, descriptor: Any) -> GivenPrinter:
        """The type's printer that takes its repeated message fields' element texts already printed."""
        full_name = descriptor.full_name
        name = self._given_names.get(full_name)
        if name is None:
            self._function(descriptor)  # the types it refers to, compiled and named first
            name = self._given_names[full_name] = f"_g{len(self._given_names)}"
            source = self._source(name, descriptor, given=True)
            exec(compile(source, f"<json_text given {full_name}>", "exec"), self._namespace)  # our own source
        printer: GivenPrinter = self._namespace[name]
        return printer

    def _constant(self, value: Any) -> str:
        """A global name holding `value`, for values with no literal (an enum's names, a map's printer)."""
        name = f"_c{len(self._namespace)}"
        self._namespace[name] = value
        return name

    def _function(self, descriptor: Any) -> str:
        """The global name of the message type's printer, compiled on first use."""
        full_name = descriptor.full_name
        found = self._names.get(full_name)
        if found is not None:
            return found
        if full_name == "google.protobuf.Timestamp":
            name = self._names[full_name] = "_timestamp"
        elif full_name == "google.protobuf.Duration":
            name = self._names[full_name] = "_duration"
        elif full_name.startswith("google.protobuf.") and full_name != "google.protobuf.Empty":
            name = self._names[full_name] = "_generic"
        else:
            # Named before its fields are compiled: a field of its own type calls it by this name.
            name = self._names[full_name] = f"_m{len(self._names)}"
            source = self._source(name, descriptor)
            exec(compile(source, f"<json_text {full_name}>", "exec"), self._namespace)  # our own source
        return name

    def _expression(self, field: d.FieldDescriptor, x: str) -> str:
        """A Python expression printing one value `x` of the field."""
        cpp = field.cpp_type
        if cpp == d.FieldDescriptor.CPPTYPE_MESSAGE:
            return f"{self._function(field.message_type)}({x})"
        if cpp == d.FieldDescriptor.CPPTYPE_ENUM:
            enum = field.enum_type
            assert enum is not None
            if enum.full_name == "google.protobuf.NullValue":
                return "'null'"
            names = self._constant({number: f'"{name}"' for number, name in enum_names(enum).items()})
            # An open enum prints a number it does not know as that number, as json_format does.
            return f"({names}.get({x}) or str({x}))"
        if cpp in _INT64:
            return f"'\"' + str({x}) + '\"'"
        if cpp == d.FieldDescriptor.CPPTYPE_FLOAT:
            return f"_float({x})"
        if cpp == d.FieldDescriptor.CPPTYPE_DOUBLE:
            return f"(_repr({x}) if _isfinite({x}) else _double({x}))"
        if cpp == d.FieldDescriptor.CPPTYPE_BOOL:
            return f"('true' if {x} else 'false')"
        if field.type == d.FieldDescriptor.TYPE_BYTES:
            return f"_bytes({x})"
        if cpp == d.FieldDescriptor.CPPTYPE_STRING:
            return f"_escape({x})"
        return f"str({x})"  # 32-bit integers: int.__repr__, as json prints them

    def _value_printer(self, field: d.FieldDescriptor) -> Printer:
        """A function printing one value of the field (a map's values)."""
        name = self._constant(None)
        exec(f"def {name}(x):\n    return {self._expression(field, 'x')}\n", self._namespace)
        printer: Printer = self._namespace[name]
        return printer

    def _map(self, field: d.FieldDescriptor) -> str:
        """A global function printing the map field's `{...}` text from the map, or None when empty."""
        entry = field.message_type
        assert entry is not None
        value_text = self._value_printer(entry.fields_by_name["value"])
        bool_keys = entry.fields_by_name["key"].type == d.FieldDescriptor.TYPE_BOOL

        def map_key(k: Any) -> str:
            return ("true" if k else "false") if bool_keys else str(k)

        def map_text(items: Any) -> str | None:
            if not items:
                return None
            return "{" + ",".join(_escape(map_key(k)) + ":" + value_text(items[k]) for k in items) + "}"

        return self._constant(map_text)

    def _source(self, name: str, descriptor: d.Descriptor, given: bool = False) -> str:
        """The printer's source; `given`: its repeated message fields' element texts, joined by commas,
        come in `_given` by field number (repeated_message_fields) instead of being printed."""
        printed = [f for f in descriptor.fields if not is_input_only(f)]
        # The helpers as parameters with defaults: locals, not a globals lookup for every value.
        helpers = ", ".join(f"{h}={h}" for h in _HELPERS)
        head = f"def {name}(m, _given, {helpers}):" if given else f"def {name}(m, {helpers}):"
        lines = [head, "    o = []"]
        unset: list[tuple[str, str]] = []  # (flag, text) of each field without presence, in declaration order
        flags: dict[int, str] = {}
        for f in sorted(printed, key=lambda f: f.number):
            prefix = _escape(f.json_name) + ":"
            attribute = f"m.{f.name}" if f.name.isidentifier() and not keyword.iskeyword(f.name) else None
            read = attribute or f"getattr(m, {f.name!r})"
            if f.message_type is not None and f.message_type.GetOptions().map_entry:
                flag = flags[f.number] = f"u{f.number}"
                lines += [
                    f"    t = {self._map(f)}({read})",
                    "    if t is not None:",
                    f"        o.append({prefix!r} + t)",
                    f"        {flag} = False",
                    "    else:",
                    f"        {flag} = True",
                ]
            elif f.is_repeated:
                flag = flags[f.number] = f"u{f.number}"
                elements = (
                    f"_given[{f.number}]"
                    if given and f.message_type is not None
                    else f"','.join([{self._expression(f, 'v')} for v in x])"
                )
                lines += [
                    f"    x = {read}",
                    "    if x:",
                    f"        o.append({prefix + '['!r} + {elements} + ']')",
                    f"        {flag} = False",
                    "    else:",
                    f"        {flag} = True",
                ]
            elif f.has_presence:
                lines += [
                    f"    if m.HasField({f.name!r}):",
                    f"        x = {read}",
                    f"        o.append({prefix!r} + {self._expression(f, 'x')})",
                ]
            else:
                flag = flags[f.number] = f"u{f.number}"
                if f.cpp_type in (d.FieldDescriptor.CPPTYPE_FLOAT, d.FieldDescriptor.CPPTYPE_DOUBLE):
                    # -0.0 == 0.0, but it is set (its bits differ), and json_format lists it among set fields.
                    is_set = "not (x == 0.0 and _copysign(1.0, x) > 0.0)"
                else:
                    default = f.default_value
                    literal = repr(default) if type(default) in (str, int, bool) else self._constant(default)
                    is_set = f"x != {literal}"
                lines += [
                    f"    x = {read}",
                    f"    if {is_set}:",
                    f"        o.append({prefix!r} + {self._expression(f, 'x')})",
                    f"        {flag} = False",
                    "    else:",
                    f"        {flag} = True",
                ]
        for f in printed:  # the unset ones, in declaration order
            if f.number in flags:
                if f.message_type is not None and f.message_type.GetOptions().map_entry:
                    text = "{}"
                elif f.is_repeated:
                    text = "[]"
                else:
                    text = self._value_printer(f)(f.default_value)
                unset.append((flags[f.number], _escape(f.json_name) + ":" + text))
        for flag, text in unset:
            lines += [f"    if {flag}:", f"        o.append({text!r})"]
        lines.append("    return '{' + ','.join(o) + '}'")
        return "\n".join(lines) + "\n"


_COMPILER = _Compiler()


def message_json(message: Any) -> str:
    """The message's proto3 JSON text (see the module's docstring); raises Unprintable for a value
    only json_format may print or refuse."""
    return _COMPILER.message(message.DESCRIPTOR)(message)


def element_printer(field: d.FieldDescriptor) -> Printer:
    """The printer of one element of a repeated message field (as the message's own printer prints it)."""
    return _COMPILER.message(field.message_type)


def repeated_message_fields(descriptor: d.Descriptor) -> list[d.FieldDescriptor]:
    """The printed repeated fields of message type, maps excepted: the fields given_json takes printed."""
    return [
        f
        for f in descriptor.fields
        if f.is_repeated
        and f.message_type is not None
        and not f.message_type.GetOptions().map_entry
        and not is_input_only(f)
    ]


def given_json(message: Any, elements: dict[int, str]) -> str:
    """message_json(message), with the elements of each of its repeated_message_fields already printed:
    `elements[number]` is their texts joined by commas, in order (read only while the field is set)."""
    return _COMPILER.given(message.DESCRIPTOR)(message, elements)
