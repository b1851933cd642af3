"""OpenAPI 3.1 from the route table and the message descriptors: the same source the gateway serves.

Paths spell resource names out (`/v1/organizations/{organization}/sites/{site}/latestValues`), which
is exactly the URL a client sends for `{parent=organizations/*/sites/*}`; the parameter names come from
the contracts' google.api.resource patterns. Schemas follow the proto3 JSON mapping: lowerCamelCase
names, int64 as strings, enums by name, Timestamps as RFC 3339 date-times, Durations as "3600s".
Unknown fields are rejected by the gateway, so every object says additionalProperties: false.
The limits the contracts state in their comments (`[limits: 0..1000]`, gateway/constraints.py) become
minimum/maximum, minLength/maxLength, minItems/maxItems and oneOf, and a sentence in the description.

The generated document is committed as gateway/openapi.snapshot.json so contract changes show up in
review as API changes; refresh it with `python -m gateway.openapi --write`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from google.api import field_behavior_pb2, resource_pb2
from google.protobuf import descriptor as d
from google.rpc import code_pb2

from gateway import constraints
from gateway.binding import SCALAR_WKT, is_map, is_repeated, query_leaf
from gateway.comments import comment
from gateway.routes import Route, RouteTable, Segment, Variable, build_route_table

SNAPSHOT = Path(__file__).with_name("openapi.snapshot.json")
TITLE = "EMMA REST API"
# The query-parameter depth for nested messages; the contracts need one level, cycles are cut here.
_MAX_QUERY_DEPTH = 3

_FD = d.FieldDescriptor
_INT32 = {_FD.TYPE_INT32, _FD.TYPE_SINT32, _FD.TYPE_SFIXED32}
_UINT32 = {_FD.TYPE_UINT32, _FD.TYPE_FIXED32}
_INT64 = {_FD.TYPE_INT64, _FD.TYPE_SINT64, _FD.TYPE_SFIXED64}
_UINT64 = {_FD.TYPE_UINT64, _FD.TYPE_FIXED64}

_WKT_SCHEMAS: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$", "examples": ["3600s"]},
    "google.protobuf.FieldMask": {"type": "string", "description": "Comma-separated lowerCamelCase field paths."},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Any": {"type": "object", "required": ["@type"], "properties": {"@type": {"type": "string"}}},
}


# types-protobuf types extensions as generic descriptors the googleapis stubs do not declare.
_FIELD_BEHAVIOR: Any = field_behavior_pb2.field_behavior
_RESOURCE: Any = resource_pb2.resource


def _behaviors(f: d.FieldDescriptor) -> set[int]:
    return set(f.GetOptions().Extensions[_FIELD_BEHAVIOR])


def _required(f: d.FieldDescriptor) -> bool:
    return field_behavior_pb2.REQUIRED in _behaviors(f)


class _Schemas:
    """Component schemas, registered as fields refer to them."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def ref(self, full_name: str) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{full_name}"}

    def message(self, m: d.Descriptor) -> dict[str, Any]:
        if m.full_name in _WKT_SCHEMAS:
            return dict(_WKT_SCHEMAS[m.full_name])
        if m.full_name in SCALAR_WKT:  # wrappers: the JSON of the wrapped value
            return self.field(m.fields_by_name["value"])
        if m.full_name not in self.components:
            self.components[m.full_name] = {}  # placeholder first: messages may refer to themselves
            schema = self.object(m.fields)
            one_of = _required_oneofs(m)
            if one_of:
                schema["oneOf"] = one_of
            if text := constraints.without_tags(comment(m.full_name)):
                schema = {"description": text, **schema}
            self.components[m.full_name] = schema
        return self.ref(m.full_name)

    def object(self, fields: Iterable[d.FieldDescriptor], required: Sequence[str] = ()) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "object",
            "properties": {f.json_name: self._described(f) for f in fields},
            "additionalProperties": False,
        }
        if required:
            out["required"] = list(required)
        return out

    def _described(self, f: d.FieldDescriptor) -> dict[str, Any]:
        schema = self.field(f)
        text = field_description(f)
        return {**schema, "description": text} if text else schema

    def enum(self, e: d.EnumDescriptor) -> dict[str, Any]:
        if e.full_name not in self.components:
            values = [v.name for v in e.values]
            schema: dict[str, Any] = {"type": "string", "enum": values}
            listed = [
                f"{v.name}: {comment(f'{e.full_name}.{v.name}')}"
                for v in e.values
                if comment(f"{e.full_name}.{v.name}")
            ]
            text = " ".join(filter(None, [comment(e.full_name), *listed]))
            if text:
                schema = {"description": text, **schema}
            self.components[e.full_name] = schema
        return self.ref(e.full_name)

    def field(self, f: d.FieldDescriptor) -> dict[str, Any]:
        if is_map(f):
            assert f.message_type is not None
            value = f.message_type.fields_by_name["value"]
            schema: dict[str, Any] = {"type": "object", "additionalProperties": self.single(value)}
        elif is_repeated(f):
            schema = {"type": "array", "items": self.single(f)}
        else:
            schema = self.single(f)
        schema = _apply_limits(f, schema)
        behaviors = _behaviors(f)
        if field_behavior_pb2.OUTPUT_ONLY in behaviors:
            schema = {**schema, "readOnly": True} if "$ref" not in schema else {"allOf": [schema], "readOnly": True}
        elif field_behavior_pb2.INPUT_ONLY in behaviors:
            schema = {**schema, "writeOnly": True} if "$ref" not in schema else {"allOf": [schema], "writeOnly": True}
        return schema

    def single(self, f: d.FieldDescriptor) -> dict[str, Any]:
        t = f.type
        if f.message_type is not None:
            return self.message(f.message_type)
        if f.enum_type is not None:
            return self.enum(f.enum_type)
        if t in _INT32:
            return {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
        if t in _UINT32:
            return {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1}
        if t in _INT64:
            return {"type": "string", "format": "int64", "pattern": "^-?[0-9]{1,19}$"}
        if t in _UINT64:
            return {"type": "string", "format": "uint64", "pattern": "^[0-9]{1,20}$"}
        if t == _FD.TYPE_DOUBLE:
            return {"type": "number", "format": "double"}
        if t == _FD.TYPE_FLOAT:
            return {"type": "number", "format": "float"}
        if t == _FD.TYPE_BOOL:
            return {"type": "boolean"}
        if t == _FD.TYPE_BYTES:
            return {"type": "string", "format": "byte", "contentEncoding": "base64"}
        return {"type": "string"}


def field_description(f: d.FieldDescriptor) -> str:
    """The field's comment without its limits tag, and the limits in words (Durations and int64 are
    JSON strings, so for them the words are all a client gets)."""
    text = constraints.without_tags(comment(f.full_name))
    limits = _limits(f)
    if not limits.empty:
        text = f"{text} Limits: {_limits_text(limits)}.".strip()
    return text


def _limits(f: d.FieldDescriptor) -> constraints.Limits:
    return constraints.parse(comment(f.full_name), f.full_name)


def _limits_text(limits: constraints.Limits) -> str:
    parts = []
    if limits.value is not None:
        parts.append(limits.value.text())
    if limits.length is not None:
        parts.append(f"length {limits.length.text()} characters")
    if limits.items is not None:
        parts.append(f"{limits.items.text()} items")
    return "; ".join(parts)


def _apply_limits(f: d.FieldDescriptor, schema: dict[str, Any]) -> dict[str, Any]:
    """The field's schema with the keywords its `[limits: ...]` tag states (see gateway/constraints.py)."""
    limits = _limits(f)
    if limits.empty:
        return schema
    if limits.required:
        raise constraints.LimitsSyntaxError(f"{f.full_name}: 'required' belongs on a oneof, not a field")
    if is_map(f):
        raise constraints.LimitsSyntaxError(f"{f.full_name}: a map field takes no limits")
    if is_repeated(f):
        out = dict(schema)
        if limits.items is not None:
            if limits.items.minimum is not None:
                out["minItems"] = int(limits.items.minimum)
            if limits.items.maximum is not None:
                out["maxItems"] = int(limits.items.maximum)
        item_limits = constraints.Limits(value=limits.value, length=limits.length)
        if not item_limits.empty:
            out["items"] = _single_limits(f, out["items"], item_limits)
        return out
    if limits.items is not None:
        raise constraints.LimitsSyntaxError(f"{f.full_name}: 'items' needs a repeated field")
    return _single_limits(f, schema, limits)


def _single_limits(f: d.FieldDescriptor, schema: dict[str, Any], limits: constraints.Limits) -> dict[str, Any]:
    out = dict(schema)
    duration = f.message_type is not None and f.message_type.full_name == "google.protobuf.Duration"
    if limits.value is not None:
        numeric = out.get("type") in ("integer", "number")
        int64 = out.get("format") in ("int64", "uint64") and out.get("type") == "string"
        if limits.value.seconds != duration or not (numeric or int64 or duration):
            what = "Duration bounds written with 's'" if duration else "a number field"
            raise constraints.LimitsSyntaxError(f"{f.full_name}: a MIN..MAX limit here needs {what}")
        if numeric:  # int64 and Durations are JSON strings: their bounds are in the description
            if limits.value.minimum is not None:
                out["minimum"] = _whole(limits.value.minimum, out)
            if limits.value.maximum is not None:
                out["maximum"] = _whole(limits.value.maximum, out)
    if limits.length is not None:
        if f.type != d.FieldDescriptor.TYPE_STRING:
            raise constraints.LimitsSyntaxError(f"{f.full_name}: 'length' needs a string field")
        if limits.length.minimum is not None:
            out["minLength"] = int(limits.length.minimum)
        if limits.length.maximum is not None:
            out["maxLength"] = int(limits.length.maximum)
    return out


def _whole(bound: float, schema: dict[str, Any]) -> int | float:
    return int(bound) if schema.get("type") == "integer" or bound == int(bound) else bound


def _required_oneofs(m: d.Descriptor) -> list[dict[str, Any]]:
    """JSON Schema for the oneofs marked `[limits: required]`: exactly one of their fields present."""
    alternatives: list[dict[str, Any]] = []
    for oneof in m.oneofs:
        limits = constraints.parse(comment(f"{m.full_name}.{oneof.name}"), f"{m.full_name}.{oneof.name}")
        if not limits.required:
            continue
        if alternatives or not limits == constraints.Limits(required=True):
            raise constraints.LimitsSyntaxError(
                f"{m.full_name}.{oneof.name}: one required oneof per message, only 'required'"
            )
        alternatives = [{"required": [f.json_name]} for f in oneof.fields]
    return alternatives


def _resource_segment_names(services: Iterable[d.ServiceDescriptor]) -> dict[str, str]:
    """Collection segment -> id name, from google.api.resource patterns ("fleetDispatches" -> "fleet_dispatch")."""
    names: dict[str, str] = {}
    seen: set[str] = set()

    def files(f: d.FileDescriptor) -> Iterator[d.FileDescriptor]:
        if f.name in seen:
            return
        seen.add(f.name)
        yield f
        for dep in f.dependencies:
            yield from files(dep)

    def messages(ms: Iterable[d.Descriptor]) -> Iterator[d.Descriptor]:
        for m in ms:
            yield m
            yield from messages(m.nested_types)

    for service in services:
        for f in files(service.file):
            for m in messages(f.message_types_by_name.values()):
                options = m.GetOptions()
                if not options.HasExtension(_RESOURCE):
                    continue
                patterns: list[str] = list(options.Extensions[_RESOURCE].pattern)
                for pattern in patterns:
                    parts = pattern.split("/")
                    for literal, var in itertools.pairwise(parts):
                        if var.startswith("{") and var.endswith("}") and not literal.startswith("{"):
                            names.setdefault(literal, var[1:-1])
    return names


def _singular(collection: str, names: dict[str, str]) -> str:
    if collection in names:
        return names[collection]
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", collection).lower()
    if snake.endswith("ies"):
        return snake[:-3] + "y"
    return snake[:-1] if snake.endswith("s") else snake


def _path_and_parameters(route: Route, names: dict[str, str]) -> tuple[str, list[dict[str, Any]]]:
    """The OpenAPI path of a route, one {parameter} per wildcard segment."""
    segments: list[str] = []
    params: list[dict[str, Any]] = []
    used: set[str] = set()

    def add_param(base: str, segment: Segment, variable: Variable | None) -> str:
        name, n = base, 2
        while name in used:
            name, n = f"{base}_{n}", n + 1
        used.add(name)
        what = f"part of `{variable.field_path}`" if variable is not None else "a path segment"
        schema: dict[str, Any] = {"type": "string"}
        description = f"{what}."
        if segment.text == "**":
            description = f"{what}; may span several segments (slashes kept)."
        params.append({"name": name, "in": "path", "required": True, "description": description, "schema": schema})
        return "{" + name + "}"

    for part in route.template.parts:
        if isinstance(part, Variable):
            previous: str | None = None
            for seg in part.segments:
                if not seg.is_wildcard:
                    segments.append(seg.text)
                    previous = seg.text
                    continue
                base = _singular(previous, names) if previous else part.field_path.split(".")[-1]
                segments.append(add_param(base, seg, part))
                previous = None
        elif part.is_wildcard:
            segments.append(add_param("segment", part, None))
        else:
            segments.append(part.text)
    path = "/" + "/".join(segments)
    if route.template.verb is not None:
        path += ":" + route.template.verb
    return path, params


def _query_parameters(route: Route, schemas: _Schemas) -> list[dict[str, Any]]:
    if route.body == "*":
        return []
    bound_paths = {v.field_path for v in route.variables}
    bound_top = route.bound_top_level_fields
    params: list[dict[str, Any]] = []

    def walk(message: d.Descriptor, prefix: str, proto_prefix: str, depth: int, stack: tuple[str, ...]) -> None:
        for f in message.fields:
            proto_path = proto_prefix + f.name
            if (depth == 0 and f.name in bound_top) or proto_path in bound_paths:
                continue
            name = prefix + f.json_name
            if query_leaf(f):
                param: dict[str, Any] = {"name": name, "in": "query", "schema": schemas.field(f)}
                if text := field_description(f):
                    param["description"] = text
                if depth == 0 and _required(f):
                    param["required"] = True
                if is_repeated(f):
                    param["style"], param["explode"] = "form", True
                params.append(param)
            elif (
                f.message_type is not None
                and not is_repeated(f)
                and depth + 1 < _MAX_QUERY_DEPTH
                and f.message_type.full_name not in stack
            ):
                walk(f.message_type, name + ".", proto_path + ".", depth + 1, (*stack, f.message_type.full_name))

    walk(route.method.input_type, "", "", 0, (route.method.input_type.full_name,))
    return params


def _request_body(route: Route, schemas: _Schemas) -> dict[str, Any] | None:
    if not route.body:
        return None
    if route.body == "*":
        path_bound = {v.field_path for v in route.variables}
        fields = [f for f in route.method.input_type.fields if f.name not in path_bound]
        schema = schemas.object(fields, [f.json_name for f in fields if _required(f)])
        required = True
    else:
        assert route.body_field is not None
        schema = schemas.field(route.body_field)
        required = _required(route.body_field)
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _response_schema(route: Route, schemas: _Schemas) -> dict[str, Any]:
    if route.response_field is not None:
        return schemas.field(route.response_field)
    return schemas.message(route.method.output_type)


def _responses(route: Route, schemas: _Schemas) -> dict[str, Any]:
    item = _response_schema(route, schemas)
    error = {"$ref": "#/components/schemas/Error"}
    if route.server_streaming:
        ok = {
            "description": (
                f"A stream of {route.method.output_type.name}: Server-Sent Events (one `data:` line of JSON per "
                'message) when Accept includes text/event-stream, NDJSON (`{"result": ...}` per line) '
                "otherwise. An error after the first message arrives as a last `event: error` (SSE) or "
                '`{"error": ...}` line (NDJSON).'
            ),
            "content": {
                # OpenAPI 3.1 reads an event stream's schema as the schema of one event.
                "text/event-stream": {"schema": {"anyOf": [item, error]}},
                "application/x-ndjson": {
                    "schema": {
                        "anyOf": [
                            {"type": "object", "properties": {"result": item}, "required": ["result"]},
                            error,
                        ]
                    }
                },
            },
        }
    else:
        ok = {"description": route.method.output_type.name, "content": {"application/json": {"schema": item}}}
    return {"200": ok, "default": {"$ref": "#/components/responses/Error"}}


def _error_schemas() -> dict[str, Any]:
    codes = [v.name for v in code_pb2.Code.DESCRIPTOR.values]
    return {
        "Error": {
            "type": "object",
            "description": "AIP-193: every error, from a service or from the gateway, has this shape.",
            "required": ["error"],
            "additionalProperties": False,
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "status", "message", "details"],
                    "additionalProperties": False,
                    "properties": {
                        "code": {"type": "integer", "description": "The HTTP status code."},
                        "status": {"type": "string", "enum": codes, "description": "The google.rpc.Code name."},
                        "message": {"type": "string"},
                        "details": {
                            "type": "array",
                            "description": "google.rpc.Status details as proto3 JSON; ErrorInfo carries the reason.",
                            "items": {
                                "type": "object",
                                "required": ["@type"],
                                "properties": {"@type": {"type": "string"}},
                            },
                        },
                    },
                }
            },
        }
    }


def build_openapi(table: RouteTable) -> dict[str, Any]:
    schemas = _Schemas()
    services = {r.service.full_name: r.service for r in table.routes}
    names = _resource_segment_names(services.values())
    paths: dict[str, dict[str, Any]] = {}
    # Contract order (service, method, binding) rather than match order, so the document reads like the protos.
    ordered = sorted(
        table.routes,
        key=lambda r: (r.service.full_name, r.method.index, r.binding),
    )
    for route in ordered:
        path, path_params = _path_and_parameters(route, names)
        operation: dict[str, Any] = {
            "operationId": route.operation_id,
            "summary": f"{route.service.name}.{route.method.name}",
            "description": (comment(route.method.full_name) + "\n\n" if comment(route.method.full_name) else "")
            + f"gRPC `{route.grpc_path}`"
            + (" (server stream)" if route.server_streaming else "")
            + f"; http rule `{route.http_method} {route.template.source}`.",
            "tags": [route.service.full_name],
            "parameters": path_params + _query_parameters(route, schemas),
        }
        body = _request_body(route, schemas)
        if body is not None:
            operation["requestBody"] = body
        operation["responses"] = _responses(route, schemas)
        paths.setdefault(path, {})[route.http_method.lower()] = operation

    components_schemas = dict(sorted(schemas.components.items()))
    components_schemas.update(_error_schemas())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": TITLE,
            "version": "v1",
            "description": (
                "REST/JSON for every annotated RPC of EMMA's gRPC contracts, generated by the gateway from "
                "their google.api.http rules. Bodies are proto3 JSON; query parameters take proto3 JSON "
                "names (snake_case works too); repeat a parameter for a repeated field."
            ),
        },
        "tags": [{"name": name} for name in sorted(services)],
        "security": [{"bearer": []}, {}],
        "paths": paths,
        "components": {
            "schemas": components_schemas,
            "responses": {
                "Error": {
                    "description": "An error (AIP-193).",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "From Login."}
            },
        },
    }


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.openapi", description="Print, write or check the gateway's OpenAPI document."
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"write {SNAPSHOT.name} next to this module")
    mode.add_argument("--check", action="store_true", help=f"exit 1 when {SNAPSHOT.name} is out of date")
    args = parser.parse_args(argv)
    text = render(build_openapi(build_route_table()))
    if args.write:
        SNAPSHOT.write_text(text)
        print(f"wrote {SNAPSHOT}")
    elif args.check:
        if not SNAPSHOT.exists() or SNAPSHOT.read_text() != text:
            print(f"{SNAPSHOT} is out of date: run `python -m gateway.openapi --write`", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
