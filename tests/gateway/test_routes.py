"""The route table: every annotated RPC is routed and reachable; templates per google/api/http.proto."""

from __future__ import annotations

import importlib
import pkgutil
import re
from typing import Any

import emma
import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor as d

from gateway.errors import HttpError, RouteError
from gateway.routes import RouteTable, Segment, Variable, build_route, build_route_table, parse_template
from tests.support.gateway import Client, Stack

HTTP: Any = annotations_pb2.http


def annotated_bindings() -> list[tuple[d.MethodDescriptor, str, str]]:
    """(method, HTTP verb, path template) of every binding in every emma.*_pb2 module, found
    independently of gateway.routes: a new RPC or binding appears here as soon as gen/ has it."""
    out = []
    for info in pkgutil.walk_packages(emma.__path__, "emma."):
        if not info.name.endswith("_pb2") or info.name.endswith("_grpc_pb2"):
            continue
        for service in importlib.import_module(info.name).DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                if not options.HasExtension(HTTP):
                    continue
                rule = options.Extensions[HTTP]
                for r in [rule, *rule.additional_bindings]:
                    kind = r.WhichOneof("pattern")
                    verb, path = (r.custom.kind, r.custom.path) if kind == "custom" else (kind, getattr(r, kind))
                    out.append((method, verb.upper(), path))
    return out


def concrete_path(template: str) -> str:
    """A URL that matches the template: every wildcard becomes an id."""
    path = re.sub(r"\{[a-z_.]+\}", "x1", template)  # {name} alone means {name=*}
    path = re.sub(r"\{[a-z_.]+=([^}]*)\}", r"\1", path)
    return path.replace("**", "a/b").replace("*", "x1")


def test_every_annotated_rpc_has_a_route_for_every_binding() -> None:
    table = build_route_table()
    routed = {(r.method.full_name, r.http_method, r.template.source) for r in table.routes}
    expected = {(m.full_name, verb, path) for m, verb, path in annotated_bindings() if not m.client_streaming}
    assert expected, "no annotated RPC found"
    assert expected - routed == set(), "annotated bindings without a route"
    assert routed - expected == set(), "routes no contract asked for"
    # Only the edge's bidi stream is left out, and it has no http rule.
    streamed = [m.full_name for m, _, _ in annotated_bindings() if m.client_streaming]
    assert streamed == []


def test_every_binding_resolves_to_its_own_rpc() -> None:
    table = build_route_table()
    for method, verb, path in annotated_bindings():
        match = table.match(verb, concrete_path(path))
        assert match.route.method.full_name == method.full_name, (verb, path)
        assert match.route.template.source == path


async def test_every_binding_is_reachable_through_the_gateway(stack: Stack, client: Client) -> None:
    """A request to each binding reaches the gateway's call of that RPC (its span says which), and
    its answer, whatever the service says, is JSON in the API's shape: never the gateway's 404/405."""
    # Anonymous, so that Logout and the like cannot end the module's session; a 401 from the service
    # still proves the call reached it.
    async with client(anonymous=True, write_rate_per_s=0.0) as c:
        for method, verb, path in annotated_bindings():
            stack.spans.clear()
            url = concrete_path(path)
            r = await c.request(verb, url, content=b"{}" if verb != "GET" and verb != "DELETE" else None)
            assert r.headers["content-type"].split(";")[0] in ("application/json", "application/x-ndjson"), url
            gateway_spans = [s for s in stack.spans.get_finished_spans() if s.name == f"{verb} {path}"]
            assert len(gateway_spans) == 1, (verb, url, r.status_code, r.text)
            attributes = gateway_spans[0].attributes or {}
            assert attributes["rpc.method"] == f"/{method.containing_service.full_name}/{method.name}"


@pytest.mark.parametrize(
    ("template", "parts", "verb"),
    [
        ("/v1/organizations", [Segment("v1"), Segment("organizations")], None),
        (
            "/v1/{name=organizations/*/sites/*}:erase",
            [Segment("v1"), Variable("name", (Segment("organizations"), Segment("*"), Segment("sites"), Segment("*")))],
            "erase",
        ),
        ("/v1/{site.name=sites/*}", [Segment("v1"), Variable("site.name", (Segment("sites"), Segment("*")))], None),
        ("/v1/{name}", [Segment("v1"), Variable("name", (Segment("*"),))], None),
        (
            "/v1/*/x/{path=files/**}",
            [Segment("v1"), Segment("*"), Segment("x"), Variable("path", (Segment("files"), Segment("**")))],
            None,
        ),
        ("/v1/auth:login", [Segment("v1"), Segment("auth")], "login"),
    ],
)
def test_templates_parse(template: str, parts: list[Any], verb: str | None) -> None:
    parsed = parse_template(template)
    assert list(parsed.parts) == parts
    assert parsed.verb == verb


@pytest.mark.parametrize(
    "template",
    ["v1/x", "/v1/{name=a/**/b}", "/v1/{name", "/v1/{na-me}", "/v1/a b", "/v1/x:bad verb", "/v1/**/x"],
)
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(RouteError):
        parse_template(template)


def _synthetic_service() -> d.ServiceDescriptor:
    """A service shaped like none of EMMA's yet: '**', a nested path field, response_body, custom verb."""
    from tests.support.synthetic import service

    return service()


def test_wildcards_nested_fields_and_response_body() -> None:
    table = build_route_table([_synthetic_service()])
    m = table.match("GET", "/v1/shelves/s1/files/a/b%2Fc/d.txt")
    assert m.route.method.name == "GetFile"
    assert m.path_values == {"name": "shelves/s1/files/a/b%2Fc/d.txt"}  # multi-segment keeps %2F
    m = table.match("GET", "/v1/shelves/s%201")
    assert m.route.method.name == "GetShelf" and m.path_values == {"name": "shelves/s 1"}
    m = table.match("PATCH", "/v1/shelves/s1/books/b%3A1")
    assert m.route.method.name == "UpdateBook" and m.path_values == {"book.name": "shelves/s1/books/b:1"}
    m = table.match("POST", "/v1/shelves/s1:archive")
    assert m.route.method.name == "ArchiveShelf"
    assert m.route.response_field is not None and m.route.response_field.name == "archived_books"
    m = table.match("SEARCH", "/v1/shelves/s1/books")
    assert m.route.method.name == "SearchBooks"
    # A raw ':' in the last segment is a verb; an id holding ':' must be sent as %3A.
    with pytest.raises(HttpError) as not_found:
        table.match("GET", "/v1/shelves/s:1")
    assert not_found.value.http_status == 404
    with pytest.raises(HttpError) as wrong_method:
        table.match("DELETE", "/v1/shelves/s1")
    assert wrong_method.value.http_status == 405 and wrong_method.value.headers["allow"] == "GET"


def test_clashing_bindings_are_refused_at_start() -> None:
    service = _synthetic_service()
    method = service.methods_by_name["GetShelf"]
    rule = http_pb2.HttpRule(get="/v1/{name=shelves/*}")
    routes = [build_route(service, method, rule, 0), build_route(service, method, rule, 1)]
    with pytest.raises(RouteError, match="clashes"):
        RouteTable(routes)


def test_rules_naming_missing_fields_are_refused() -> None:
    service = _synthetic_service()
    method = service.methods_by_name["GetShelf"]
    for rule in (
        http_pb2.HttpRule(get="/v1/{nope=shelves/*}"),
        http_pb2.HttpRule(post="/v1/{name=shelves/*}", body="nope"),
        http_pb2.HttpRule(get="/v1/{name=shelves/*}", response_body="nope"),
    ):
        with pytest.raises(RouteError):
            build_route(service, method, rule, 0)
