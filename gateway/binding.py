"""An HTTP request -> the gRPC request message, per http.proto's binding rules.

Path variables, the body (`*` or one field) and query parameters (every field the path and body leave
free) are assembled into one proto3 JSON document, which json_format parses with unknown fields
rejected. json_format then does all typing the way proto3 JSON defines it: int64 from strings, enums
by name, Timestamps in RFC 3339, Durations like "3600s", FieldMasks as "a,b.c".

Query parameter names are the fields' proto3 JSON names (`startTime`), with the proto names
(`start_time`) accepted too; nested fields are dotted (`filter.startTime`); a repeated field is given
by repeating the parameter (`channels=a&channels=b`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from google.protobuf import descriptor as d
from google.protobuf import json_format, message_factory
from google.protobuf.message import Message
from starlette.requests import Request

from gateway.errors import HttpError, bad_request, too_large, unsupported_media_type
from gateway.routes import Route

# Well-known types whose JSON form is a single string, number or bool: allowed as query parameters.
SCALAR_WKT = frozenset(
    {
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
        "google.protobuf.DoubleValue",
        "google.protobuf.FloatValue",
        "google.protobuf.Int64Value",
        "google.protobuf.UInt64Value",
        "google.protobuf.Int32Value",
        "google.protobuf.UInt32Value",
        "google.protobuf.BoolValue",
        "google.protobuf.StringValue",
        "google.protobuf.BytesValue",
    }
)
_PARSE_ERRORS = (json_format.ParseError, ValueError, TypeError, OverflowError, RecursionError, AttributeError)
_FD = d.FieldDescriptor
_NUMERIC = frozenset(
    {
        _FD.TYPE_DOUBLE,
        _FD.TYPE_FLOAT,
        _FD.TYPE_INT32,
        _FD.TYPE_INT64,
        _FD.TYPE_UINT32,
        _FD.TYPE_UINT64,
        _FD.TYPE_SINT32,
        _FD.TYPE_SINT64,
        _FD.TYPE_FIXED32,
        _FD.TYPE_FIXED64,
        _FD.TYPE_SFIXED32,
        _FD.TYPE_SFIXED64,
    }
)
# Well-known types whose JSON is any JSON: nothing below them is typed by a descriptor.
_FREE_JSON = frozenset({"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"})


@cache
def _fields_by_any_name(message: d.Descriptor) -> dict[str, d.FieldDescriptor]:
    """Both the proto3 JSON name and the proto name of every field."""
    out: dict[str, d.FieldDescriptor] = {}
    for f in message.fields:
        out[f.name] = f
        out[f.json_name] = f
    return out


@cache
def message_class(message: d.Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(message)


def is_repeated(f: d.FieldDescriptor) -> bool:
    return bool(f.is_repeated)


def is_map(f: d.FieldDescriptor) -> bool:
    return bool(is_repeated(f) and f.message_type is not None and f.message_type.GetOptions().map_entry)


def query_leaf(f: d.FieldDescriptor) -> bool:
    """Fields a query parameter may set: scalars, enums and single-valued well-known types."""
    if is_map(f):
        return False
    return f.message_type is None or f.message_type.full_name in SCALAR_WKT


def _is_bool(f: d.FieldDescriptor) -> bool:
    return bool(
        f.type == d.FieldDescriptor.TYPE_BOOL
        or (f.message_type is not None and f.message_type.full_name == "google.protobuf.BoolValue")
    )


@dataclass(frozen=True)
class QueryField:
    fields: tuple[d.FieldDescriptor, ...]

    @property
    def leaf(self) -> d.FieldDescriptor:
        return self.fields[-1]

    @property
    def proto_path(self) -> str:
        return ".".join(f.name for f in self.fields)


@cache
def resolve_query(route: Route, name: str) -> QueryField:
    """The field a query parameter names, or 400 when it names none or one the path or body sets."""
    fields: list[d.FieldDescriptor] = []
    current = route.method.input_type
    parts = name.split(".")
    for i, part in enumerate(parts):
        f = _fields_by_any_name(current).get(part)
        if f is None:
            raise bad_request(name, f"unknown query parameter (no field {part!r} in {current.full_name})")
        fields.append(f)
        if i < len(parts) - 1:
            if f.message_type is None or is_repeated(f) or f.message_type.full_name in SCALAR_WKT:
                raise bad_request(name, f"{part!r} has no fields to address with '.'")
            current = f.message_type
    found = QueryField(tuple(fields))
    if fields[0].name in route.bound_top_level_fields or any(v.field_path == found.proto_path for v in route.variables):
        where = "the request body" if route.body == "*" or fields[0].name == route.body else "the path"
        raise bad_request(name, f"not a query parameter of this method: {where} sets it")
    if not query_leaf(found.leaf):
        raise bad_request(name, "this field cannot be set from a query parameter; address its fields with '.'")
    return found


def _query_value(field: QueryField, name: str, raw: str) -> Any:
    if _is_bool(field.leaf):
        if raw not in ("true", "false"):
            raise bad_request(name, f"expected true or false, not {raw!r}")
        return raw == "true"
    return raw  # json_format converts numbers, enums, timestamps and durations from their string forms


def _put(doc: dict[str, Any], keys: Sequence[tuple[str, str]], value: Any, name: str, source: str) -> None:
    """Set doc[k1][k2]... = value; keys are (JSON name, proto name) pairs. A different value already
    there (from the body) is a conflict rather than silently overwritten."""
    node = doc
    for json_name, proto_name in keys[:-1]:
        existing = node.get(json_name, node.get(proto_name))
        if existing is None:
            existing = {}
            node.pop(proto_name, None)
            node[json_name] = existing
        elif not isinstance(existing, dict):
            raise bad_request(name, f"the body sets {json_name!r} to a non-object, and the {source} sets a field in it")
        node = existing
    json_name, proto_name = keys[-1]
    for key in (json_name, proto_name):
        # The path names the resource; a body that leaves its name empty (as a client that sends the
        # whole resource back with name "" does) names the same one.
        if key in node and node[key] != value and not (source == "path" and node[key] == ""):
            raise bad_request(name, f"the body says {node[key]!r} but the {source} says {value!r}")
    node.pop(proto_name, None)
    node[json_name] = value


def bind_request(route: Route, path_values: dict[str, str], query: Sequence[tuple[str, str]], body: bytes) -> Message:
    """The request message for `route` from the decoded path values, the query items and the body."""
    if not route.body and not body and not query and all(_plain_string(v.fields) for v in route.variables):
        # The most common call (GET of a resource or a list by name) needs no JSON document: the
        # path's strings go straight into their fields, as json_format would put them.
        request = message_class(route.method.input_type)()
        for v in route.variables:
            setattr(request, v.fields[0].name, path_values[v.field_path])
        return request
    doc = _body_document(route, body)
    _check_json_types(doc, route.method.input_type, "")
    for v in route.variables:
        keys = [(f.json_name, f.name) for f in v.fields]
        _put(doc, keys, path_values[v.field_path], v.field_path, "path")

    grouped: dict[QueryField, list[tuple[str, Any]]] = {}
    for name, raw in query:
        qf = resolve_query(route, name)
        grouped.setdefault(qf, []).append((name, _query_value(qf, name, raw)))
    for qf, items in grouped.items():
        name = items[0][0]
        if is_repeated(qf.leaf):
            value: Any = [v for _, v in items]
        elif len(items) > 1:
            raise bad_request(name, "given more than once, but the field holds one value")
        else:
            value = items[0][1]
        _check_query_value(route, qf, name, value)
        _put(doc, [(f.json_name, f.name) for f in qf.fields], value, name, "query")

    request = message_class(route.method.input_type)()
    try:
        json_format.ParseDict(doc, request, ignore_unknown_fields=False)
    except _PARSE_ERRORS as exc:
        raise bad_request("body" if route.body else "request", _parse_message(exc)) from None
    return request


def _plain_string(fields: Sequence[d.FieldDescriptor]) -> bool:
    """A path variable bound to a top-level singular string field."""
    return len(fields) == 1 and fields[0].type == d.FieldDescriptor.TYPE_STRING and not is_repeated(fields[0])


def _check_json_types(value: Any, message: d.Descriptor, path: str) -> None:
    """400 for JSON values json_format would quietly coerce: `true` for a number (it reads 1.0 for a
    double) and `true` or a fraction for an enum (it reads int(value), so `true` is value 1 and 2.5
    is 2). A setpoint of `true` watts is a client bug to report, not a command to send."""
    if not isinstance(value, dict) or message.full_name in _FREE_JSON or message.full_name == "google.protobuf.Any":
        return
    fields = _fields_by_any_name(message)
    for key, item in value.items():
        f = fields.get(key) if isinstance(key, str) else None
        if f is None or item is None:
            continue  # json_format reports unknown fields itself
        where = f"{path}.{f.json_name}" if path else f.json_name
        if is_map(f):
            assert f.message_type is not None
            value_field = f.message_type.fields_by_name["value"]
            if isinstance(item, dict):
                for k, v in item.items():
                    _check_json_value(v, value_field, f"{where}[{json.dumps(k)}]")
        elif is_repeated(f) and isinstance(item, list):
            for i, v in enumerate(item):
                _check_json_value(v, f, f"{where}[{i}]")
        else:
            _check_json_value(item, f, where)


def _check_json_value(value: Any, f: d.FieldDescriptor, where: str) -> None:
    target = f
    if f.message_type is not None:
        wrapped = f.message_type.fields_by_name.get("value")
        if f.message_type.full_name in SCALAR_WKT and wrapped is not None:
            target = wrapped  # a wrapper's JSON (DoubleValue...) is its value's JSON
        elif f.message_type.full_name in SCALAR_WKT:
            return  # Timestamp, Duration, FieldMask: strings json_format parses strictly
        else:
            _check_json_types(value, f.message_type, where)
            return
    if target.type in _NUMERIC and isinstance(value, bool):
        raise bad_request(where, f"expected a number, not {json.dumps(value)}")
    if target.type == _FD.TYPE_ENUM and isinstance(value, bool | float):
        raise bad_request(where, f"expected an enum value name (or its number), not {json.dumps(value)}")


def _check_query_value(route: Route, qf: QueryField, name: str, value: Any) -> None:
    """Parse one parameter alone first, so a bad value is reported against its parameter name."""
    doc: dict[str, Any] = {}
    _put(doc, [(f.json_name, f.name) for f in qf.fields], value, name, "query")
    try:
        json_format.ParseDict(doc, message_class(route.method.input_type)(), ignore_unknown_fields=False)
    except _PARSE_ERRORS as exc:
        raise bad_request(name, _parse_message(exc)) from None


def _parse_message(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _body_document(route: Route, body: bytes) -> dict[str, Any]:
    if not route.body:
        if body.strip():
            raise bad_request("body", f"{route.http_method} {route.template.source} takes no request body")
        return {}
    if not body.strip():
        # An empty body is an empty message: POST .../x:cancel with nothing to add is common.
        parsed: Any = {}
    else:
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise bad_request("body", f"not valid JSON: {_parse_message(exc)}") from None
    if route.body == "*":
        if not isinstance(parsed, dict):
            raise bad_request("body", f"expected a JSON object ({route.method.input_type.full_name})")
        return parsed
    assert route.body_field is not None
    return {route.body_field.json_name: parsed}


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, at most `limit` bytes (413 beyond, checked before and while reading)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    content_type = request.headers.get("content-type")
    # No Content-Type is taken as JSON (curl --data-binary without -H); anything else must say JSON,
    # which also keeps HTML forms on other sites from posting here without a CORS preflight.
    if body and content_type and not _is_json(content_type):
        raise unsupported_media_type(content_type)
    return body


__all__ = ["HttpError", "bind_request", "message_class", "read_body", "resolve_query"]
