"""google.api.http rules -> the gateway's route table.

At start-up the gateway imports every generated `emma.<domain>.v<N>.*_pb2` module, walks its service
descriptors and turns each method's HttpRule (and its additional_bindings) into a Route. Nothing here
names an RPC: a new method in a contract is served as soon as gen/ is regenerated.

Templates follow google/api/http.proto:

    Template = "/" Segments [ Verb ] ;      Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;   Verb = ":" LITERAL ;

Matching runs on the raw, still percent-encoded path, so a ':' or '/' inside a resource id must come
encoded and can never be mistaken for a verb or a segment boundary; values are decoded afterwards.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor as d

from gateway.errors import RouteError, bad_request, method_not_allowed, no_route

_CONTRACT_MODULE = re.compile(r"^emma\.[a-z0-9_]+\.v[0-9]+[a-z0-9]*\.[a-z0-9_]+_pb2$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LITERAL = re.compile(r"^[A-Za-z0-9_.~\-]+$")
_HTTP_METHODS = ("get", "put", "post", "delete", "patch")
# types-protobuf types extensions as generic descriptors the googleapis stubs do not declare.
_HTTP: Any = annotations_pb2.http


def contract_services() -> list[d.ServiceDescriptor]:
    """Every service of every generated emma.*.vN module, in a stable order."""
    import emma

    found: dict[str, d.ServiceDescriptor] = {}
    for info in pkgutil.walk_packages(emma.__path__, "emma."):
        if _CONTRACT_MODULE.match(info.name):
            module = importlib.import_module(info.name)
            for service in module.DESCRIPTOR.services_by_name.values():
                found[service.full_name] = service
    return [found[name] for name in sorted(found)]


def http_rules(method: d.MethodDescriptor) -> list[http_pb2.HttpRule]:
    """The method's HttpRule followed by its additional_bindings; [] when it has none."""
    options = method.GetOptions()
    if not options.HasExtension(_HTTP):
        return []
    rule: http_pb2.HttpRule = options.Extensions[_HTTP]
    return [rule, *rule.additional_bindings]


# --- templates -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """A literal path segment, or "*" (one segment) or "**" (the rest of the path)."""

    text: str

    @property
    def is_wildcard(self) -> bool:
        return self.text in ("*", "**")


@dataclass(frozen=True)
class Variable:
    """{field.path=segments}: the matched segments, decoded, become the value of the field."""

    field_path: str
    segments: tuple[Segment, ...]

    @property
    def multi_segment(self) -> bool:
        return len(self.segments) > 1 or self.segments[0].text == "**"


@dataclass(frozen=True)
class PathTemplate:
    source: str
    parts: tuple[Segment | Variable, ...]
    verb: str | None


def _split_top_level(text: str, sep: str) -> list[tuple[int, str]]:
    """Split on `sep` outside braces; returns (offset, piece) pairs."""
    pieces, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise RouteError(f"unbalanced '}}' in {text!r}")
        elif ch == sep and depth == 0:
            pieces.append((start, text[start:i]))
            start = i + 1
    if depth != 0:
        raise RouteError(f"unbalanced '{{' in {text!r}")
    pieces.append((start, text[start:]))
    return pieces


def _segment(text: str, source: str) -> Segment:
    if text in ("*", "**") or _LITERAL.match(text):
        return Segment(text)
    raise RouteError(f"bad path segment {text!r} in {source!r}")


def parse_template(source: str) -> PathTemplate:
    if not source.startswith("/"):
        raise RouteError(f"path template {source!r} must start with '/'")
    body, verb = source[1:], None
    # The verb is the text after the last top-level ':' of the last segment.
    last_piece_offset, last_piece = _split_top_level(body, "/")[-1]
    colon = [o for o, _ in _split_top_level(last_piece, ":")][1:]
    if colon:
        cut = last_piece_offset + colon[-1]
        body, verb = body[: cut - 1], body[cut:]
        if not _LITERAL.match(verb):
            raise RouteError(f"bad verb {verb!r} in {source!r}")
    parts: list[Segment | Variable] = []
    for _, piece in _split_top_level(body, "/"):
        if piece.startswith("{") and piece.endswith("}"):
            field_path, _, pattern = piece[1:-1].partition("=")
            if not all(_IDENT.match(p) for p in field_path.split(".")):
                raise RouteError(f"bad field path {field_path!r} in {source!r}")
            segments = tuple(_segment(s, source) for s in (pattern or "*").split("/"))
            parts.append(Variable(field_path, segments))
        else:
            parts.append(_segment(piece, source))
    flat = [s for p in parts for s in (p.segments if isinstance(p, Variable) else (p,))]
    if any(s.text == "**" for s in flat[:-1]):
        raise RouteError(f"'**' must be the last segment in {source!r}")
    return PathTemplate(source, tuple(parts), verb)


def _segments_regex(segments: Sequence[Segment], leading_slash: bool) -> str:
    out = []
    for i, seg in enumerate(segments):
        slash = "/" if (leading_slash or i > 0) else ""
        if seg.text == "**":
            # Zero or more segments; the slash before them goes with them.
            out.append(f"(?:{slash}.*)?" if slash else ".*")
        elif seg.text == "*":
            out.append(f"{slash}[^/]+")
        else:
            out.append(slash + re.escape(seg.text))
    return "".join(out)


def _template_regex(template: PathTemplate) -> re.Pattern[str]:
    out = []
    for i, part in enumerate(template.parts):
        if isinstance(part, Variable):
            out.append(f"/(?P<v{i}>{_segments_regex(part.segments, leading_slash=False)})")
        else:
            out.append(_segments_regex([part], leading_slash=True))
    if template.verb is not None:
        out.append(":" + re.escape(template.verb))
    return re.compile("".join(out))


# --- routes --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoundVariable:
    """A path variable resolved against the request message."""

    group: str
    field_path: str
    fields: tuple[d.FieldDescriptor, ...]
    multi_segment: bool


@dataclass(frozen=True, eq=False)  # identity hash: routes are unique objects, used as cache keys
class Route:
    """One HTTP binding of one RPC."""

    service: d.ServiceDescriptor
    method: d.MethodDescriptor
    http_method: str
    template: PathTemplate
    binding: int  # 0 for the rule itself, n for additional_bindings[n - 1]
    body: str  # "", "*" or a top-level request field name
    response_body: str  # "" or a top-level response field name
    regex: re.Pattern[str] = field(repr=False)
    variables: tuple[BoundVariable, ...] = field(repr=False)
    body_field: d.FieldDescriptor | None = field(repr=False)
    response_field: d.FieldDescriptor | None = field(repr=False)

    @property
    def grpc_path(self) -> str:
        return f"/{self.service.full_name}/{self.method.name}"

    @property
    def server_streaming(self) -> bool:
        return bool(self.method.server_streaming)

    @property
    def operation_id(self) -> str:
        suffix = f"_{self.binding + 1}" if self.binding else ""
        return f"{self.service.name}_{self.method.name}{suffix}"

    @property
    def bound_top_level_fields(self) -> set[str]:
        """Top-level request fields the path or the body fill; the rest are query parameters."""
        if self.body == "*":
            return {f.name for f in self.method.input_type.fields}
        bound = {v.fields[0].name for v in self.variables}
        if self.body:
            bound.add(self.body)
        return bound

    def specificity(self) -> tuple[int, int]:
        """Higher first: more literal segments, then fewer '**'."""
        flat = [s for p in self.template.parts for s in (p.segments if isinstance(p, Variable) else (p,))]
        return (sum(not s.is_wildcard for s in flat), -sum(s.text == "**" for s in flat))


def resolve_field_path(message: d.Descriptor, path: str, what: str) -> tuple[d.FieldDescriptor, ...]:
    """ "user.name" -> (user field, name field); every step but the last a singular message field."""
    fields: list[d.FieldDescriptor] = []
    current = message
    names = path.split(".")
    for i, name in enumerate(names):
        f = current.fields_by_name.get(name)
        if f is None:
            raise RouteError(f"{what}: {current.full_name} has no field {name!r}")
        fields.append(f)
        if i < len(names) - 1:
            if f.message_type is None or _is_repeated(f):
                raise RouteError(f"{what}: {name!r} in {path!r} is not a singular message field")
            current = f.message_type
    return tuple(fields)


def _is_repeated(f: d.FieldDescriptor) -> bool:
    return bool(f.is_repeated)


def _rule_pattern(rule: http_pb2.HttpRule, where: str) -> tuple[str, str]:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise RouteError(f"{where}: http rule without a method and path")
    if kind == "custom":
        return rule.custom.kind.upper(), rule.custom.path
    assert kind in _HTTP_METHODS
    return kind.upper(), str(getattr(rule, kind))


def build_route(
    service: d.ServiceDescriptor, method: d.MethodDescriptor, rule: http_pb2.HttpRule, binding: int
) -> Route:
    where = f"{service.full_name}.{method.name}" + (f" binding {binding}" if binding else "")
    http_method, path = _rule_pattern(rule, where)
    template = parse_template(path)
    variables = []
    for i, part in enumerate(template.parts):
        if isinstance(part, Variable):
            fields = resolve_field_path(method.input_type, part.field_path, where)
            leaf = fields[-1]
            if leaf.message_type is not None or _is_repeated(leaf):
                raise RouteError(f"{where}: path field {part.field_path!r} must be a singular scalar")
            variables.append(BoundVariable(f"v{i}", part.field_path, fields, part.multi_segment))
    body_field = None
    if rule.body and rule.body != "*":
        body_field = method.input_type.fields_by_name.get(rule.body)
        if body_field is None:
            raise RouteError(f"{where}: body {rule.body!r} is not a field of {method.input_type.full_name}")
        if any(v.fields[0].name == rule.body and len(v.fields) == 1 for v in variables):
            raise RouteError(f"{where}: body field {rule.body!r} is also a path variable")
    response_field = None
    if rule.response_body:
        response_field = method.output_type.fields_by_name.get(rule.response_body)
        if response_field is None:
            raise RouteError(
                f"{where}: response_body {rule.response_body!r} is not a field of {method.output_type.full_name}"
            )
    return Route(
        service=service,
        method=method,
        http_method=http_method,
        template=template,
        binding=binding,
        body=rule.body,
        response_body=rule.response_body,
        regex=_template_regex(template),
        variables=tuple(variables),
        body_field=body_field,
        response_field=response_field,
    )


def routable(method: d.MethodDescriptor) -> bool:
    """Client and bidi streams have no REST form (the edge's Connect); everything else is served."""
    return not method.client_streaming


# --- the table -----------------------------------------------------------------------------------


def _decode(raw: str, multi_segment: bool, name: str) -> str:
    """Percent-decoding per http.proto: multi-segment variables keep %2F so a segment stays one."""
    try:
        if not multi_segment:
            return unquote(raw, errors="strict")
        return "/".join(unquote(p, errors="strict").replace("/", "%2F") for p in raw.split("/"))
    except UnicodeDecodeError:
        raise bad_request(name, "the path segment is not UTF-8") from None


@dataclass(frozen=True)
class RouteMatch:
    route: Route
    path_values: dict[str, str]  # field path ("user.name") -> decoded value


class RouteTable:
    """Every Route, indexed by verb, with the lookup that answers 404 and 405 like the rest of the API."""

    def __init__(self, routes: Iterable[Route]) -> None:
        ordered = sorted(routes, key=lambda r: r.specificity(), reverse=True)  # stable: contract order
        seen: dict[tuple[str, str], Route] = {}
        for r in ordered:
            key = (r.http_method, r.regex.pattern)
            if key in seen:
                other = seen[key]
                raise RouteError(
                    f"{r.http_method} {r.template.source} of {r.grpc_path} clashes with "
                    f"{other.template.source} of {other.grpc_path}"
                )
            seen[key] = r
        self.routes: tuple[Route, ...] = tuple(ordered)
        self._by_verb: dict[str | None, list[Route]] = {}
        for r in ordered:
            self._by_verb.setdefault(r.template.verb, []).append(r)

    def _candidates(self, raw_path: str) -> list[Route]:
        last = raw_path.rsplit("/", 1)[-1]
        if ":" not in last:
            return self._by_verb.get(None, [])
        return self._by_verb.get(last.rsplit(":", 1)[1], [])

    def match(self, http_method: str, raw_path: str) -> RouteMatch:
        """The route and path values for a request, or HttpError 404 / 405 (with Allow)."""
        allowed: list[str] = []
        for route in self._candidates(raw_path):
            m = route.regex.fullmatch(raw_path)
            if m is None:
                continue
            if route.http_method != http_method:
                allowed.append(route.http_method)
                continue
            values = {v.field_path: _decode(m.group(v.group), v.multi_segment, v.field_path) for v in route.variables}
            return RouteMatch(route, values)
        shown = unquote(raw_path)
        if allowed:
            raise method_not_allowed(http_method, shown, sorted(set(allowed)))
        raise no_route(http_method, shown)


def build_route_table(services: Iterable[d.ServiceDescriptor] | None = None) -> RouteTable:
    """Routes for every HTTP binding of every routable method of `services` (default: the contracts)."""
    routes = []
    for service in contract_services() if services is None else services:
        for method in service.methods:
            if not routable(method):
                continue
            for binding, rule in enumerate(http_rules(method)):
                routes.append(build_route(service, method, rule, binding))
    return RouteTable(routes)
